"""Every table (CSV + Markdown) and figure (PNG) of the study, from the files the stages wrote.

Nothing here computes a result: it reads ``results/`` and lays the numbers out, each with its
uncertainty (:mod:`gs.intervals`; the tables with intervals are built in :mod:`gs.report.tables`,
the figures in :mod:`gs.report.figures`). Tables:

* ``main``: accuracy per system (rows: base, multitask LoRA, every clustering method with
  single-expert routing and with the ensembles) and task (the primary metric of each target's lm-eval
  tasks, in the config's order), plus the mean over tasks; each value with lm-eval's stderr and a
  bootstrap 95% interval;
* ``likelihood``: the same rows, on the tasks scored in bits per byte (held-out reference answers under
  each system's routing), likewise; its figure plots each system's paired difference to the base model
  (``likelihood_paired``) with 95% intervals;
* ``paired``: the papers' comparisons as paired differences with bootstrap 95% intervals;
* ``latency``: the latency measurements; ``clusterucb``: selection accuracy (with intervals), paired
  differences of ClusterUCB to full LESS and random, and compute; its budget curve and ablation;
* ``compute``: wall time, memory and CPU time of every job (Snakemake ``benchmark:`` files).

The router, cluster-quality and projection-ablation tables are built by their own rules.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd

from gs.intervals import RESAMPLES, Interval, bootstrap_interval
from gs.io import InputError, atomic_path, read_json, run_cli
from gs.report.figures import plot_budget, plot_differences
from gs.report.scores import LIKELIHOOD_METRIC, report_targets, task_columns, task_scores
from gs.report.tables import (
    NO_DIFFERENCE,
    SMALL_SAMPLE,
    TOO_FEW,
    Reports,
    clusterucb_paired_table,
    comparisons,
    interval_markdown,
    interval_note,
    load_reports,
    main_table,
    not_run_note,
    paired_table,
)

# The ClusterUCB tables' titles (tables/<stem>.md), with their numbers or, without selection targets, empty.
SELECTION_TITLES = {
    "clusterucb": "ClusterUCB vs. full gradient selection (LESS) and random",
    "clusterucb_paired": "ClusterUCB minus full LESS and random, paired over each target's examples",
    "clusterucb_budget": "Budget curve: overlap with LESS's top set and mean-influence ratio at equal total compute",
    "clusterucb_ablation": "ClusterUCB ablation: arm rules (reference names), arm sets, one-shot vs. dynamic",
}


def _markdown(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    return df.to_markdown(index=False, floatfmt=floatfmt) if len(df) else "(no rows)"


def write_table(
    df: pd.DataFrame,
    stem: Path,
    *,
    title: str,
    note: str = "",
    md: pd.DataFrame | None = None,
    sections: dict[str, pd.DataFrame] | None = None,
    floatfmt: str = ".3f",
) -> None:
    """``stem.csv`` (``df``) and ``stem.md``: a titled Markdown table (``md`` if given, a display form of
    ``df``), a note on where the numbers come from, then any further ``sections`` (heading: table); numbers
    in Markdown with ``floatfmt``."""
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        df.to_csv(tmp, index=False)
    text = f"# {title}\n\n{_markdown(df if md is None else md, floatfmt)}\n"
    if note:
        text += f"\n{note}\n"
    for heading, table in (sections or {}).items():
        text += f"\n## {heading}\n\n{_markdown(table, floatfmt)}\n"
    with atomic_path(stem.with_suffix(".md")) as tmp:
        Path(tmp).write_text(text)


def clusterucb_table(
    selection_dir: Path, targets: list[str], reports: Reports, *, resamples: int = RESAMPLES, seed: int = 0
) -> pd.DataFrame:
    """One row per target, selection method and target task: the task's primary metric where the selection
    was fine-tuned (with its bootstrap 95% interval over the task's examples, ``ci_low`` / ``ci_high``), and
    the selection's compute (the same on every task row of a method).

    Compute in per-sample gradient computations (:mod:`gs.selection.accounting`): ``clustering_pass`` (the arms'
    clustering pass, counted), ``influence_computations`` (cold start, draws and any computed ahead, each at
    the influence checkpoints it needed), ``total_computations`` and its ratio to full LESS's total.
    """
    rows = []
    for t in targets:
        sel = read_json(selection_dir / t / "selection.json")
        for method, m in sel["methods"].items():
            system = f"select-{t}-{method}"
            scored: list[tuple[str | None, Any]] = [(None, None)]
            if system in reports:  # fine-tuned on this selection and evaluated on its target's tasks
                path, report = reports[system]
                tasks = report_targets(report).get(t, [])
                scored = [(task, task_scores(report, path, task)) for task in tasks] or scored
            charge = m.get("charge") or {}
            for task, ts in scored:
                ci = (
                    bootstrap_interval([ts.scores], resamples=resamples, seed=seed)
                    if ts is not None
                    else Interval(float("nan"), float("nan"), float("nan"), 0)
                )
                rows.append(
                    {
                        "target": t,
                        "method": method,
                        "task": task,
                        "metric": None if ts is None else ts.metric,
                        "value": None if ts is None else ts.value,
                        "ci_low": ci.low,
                        "ci_high": ci.high,
                        "selected": len(m["selected_ids"]),
                        "clustering_pass": charge.get("clustering", 0),
                        "influence_computations": charge.get("cold_start", 0)
                        + charge.get("draws", 0)
                        + charge.get("ahead", 0)
                        if charge
                        else m["computations"],
                        "total_computations": m["computations"],
                        "computations_vs_full": m["computation_ratio_vs_full"],
                        "overlap_with_full_top": m["overlap_with_full"],
                        "mean_influence_vs_full": m["mean_influence_ratio"],
                    }
                )
    return pd.DataFrame(rows)


def clusterucb_budget_table(selection_dir: Path, targets: list[str]) -> pd.DataFrame:
    """The budget curve (:mod:`gs.selection.budget_curve`) of every target: mean and std over seeds per method,
    k and total compute (fraction of full LESS); infeasible points have ``seeds == 0`` and no numbers."""
    frames = []
    for t in targets:
        curve = read_json(selection_dir / t / "selection.json").get("budget_curve", [])
        if curve:
            frames.append(pd.DataFrame(curve).assign(target=t))
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    return df[["target", *[c for c in df.columns if c != "target"]]]


def clusterucb_ablation_table(selection_dir: Path, targets: list[str]) -> pd.DataFrame:
    """Arm rule x arm set x schedule (one-shot, Dynamic-ClusterUCB), mean and std over seeds, per target."""
    frames = []
    for t in targets:
        rows = read_json(selection_dir / t / "selection.json").get("ablation", [])
        if rows:
            frames.append(pd.DataFrame(rows).assign(target=t))
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    return df[["target", *[c for c in df.columns if c != "target"]]]


def compute_table(benchmark_dir: Path) -> pd.DataFrame:
    """Per job: wall seconds, max RSS, CPU time, from Snakemake's benchmark TSVs."""
    rows = []
    for tsv in sorted(benchmark_dir.glob("*/*.tsv")):
        frame = pd.read_csv(tsv, sep="\t")
        rows.append(
            {
                "rule": tsv.parent.name,
                "job": tsv.stem,
                "wall_s": float(frame["s"].mean()),
                "max_rss_mb": float(pd.to_numeric(frame["max_rss"], errors="coerce").max()),
                "cpu_time_s": float(pd.to_numeric(frame["cpu_time"], errors="coerce").mean()),
            }
        )
    return pd.DataFrame(rows, columns=["rule", "job", "wall_s", "max_rss_mb", "cpu_time_s"])


def machine_note(cpu_dtype_json: Path | None) -> str:
    """Where the times were measured: the CPU model and capability, its core count, and the dtype the plan
    chose for ``dtype: auto`` with both timings (``results/plan/cpu_dtype.json``, :mod:`gs.models.dtype`)."""
    import os

    record = read_json(cpu_dtype_json) if cpu_dtype_json is not None and cpu_dtype_json.is_file() else {}
    cpu, capability = record.get("cpu", "an unrecorded CPU"), record.get("capability", "capability not recorded")
    line = record.get("line", "cpu dtype: not recorded")
    return (
        f"Measured on {cpu} ({capability}), {os.cpu_count()} cores; {line} (dtype: auto runs in the first). "
        "wall_s: the job's wall time; cpu_time_s: user + system time of its processes; max_rss_mb: Snakemake's "
        "sampled peak resident memory."
    )


def _pairs(items: list[str]) -> dict[str, Path]:
    out = {}
    for item in items:
        name, _, path = item.partition("=")
        if not path:
            raise InputError(f"expected SYSTEM=path, got {item!r}")
        out[name] = Path(path)
    return out


def _paired_note(resamples: int) -> str:
    return (
        "difference = system - reference on the examples both scored (matched by task, doc_id and id): "
        "accuracy higher is better, bits per byte lower is better; average = the mean over tasks (over those "
        "both ran where one was not run), "
        "stratified bootstrap (resampled within each task). "
        + interval_note(resamples)
        + f' "{NO_DIFFERENCE}": the interval includes 0; "{TOO_FEW}": it excludes 0 but a task has under '
        f"{SMALL_SAMPLE} paired examples, where the percentile bootstrap is too narrow to name a winner."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Tables and figures of the study.")
    parser.add_argument("--results", default="results")
    parser.add_argument("--eval", nargs="*", default=[], help="SYSTEM=path.json for the main table")
    parser.add_argument("--selection-eval", nargs="*", default=[], help="SYSTEM=path.json of ClusterUCB runs")
    parser.add_argument("--targets", nargs="*", default=[])
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples per interval")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap draws")
    parser.add_argument("--benchmarks", default="benchmarks")
    parser.add_argument("--cpu-dtype", default=None, help="the plan's cpu_dtype.json (the CPU and its dtype choice)")
    parser.add_argument(
        "--latency", default=None, help="the latency stage's CSV; 'none': the gradientspace study did not run"
    )
    parser.add_argument("--tables", default="results/tables")
    parser.add_argument("--figures", default="results/figures")
    args = parser.parse_args(argv)
    res, tables, figures = Path(args.results), Path(args.tables), Path(args.figures)
    boot = {"resamples": args.resamples, "seed": args.seed}
    reports = load_reports(_pairs(args.eval))
    columns = task_columns(reports)
    accuracy, likelihood = list(columns["accuracy"]), list(columns[LIKELIHOOD_METRIC])
    cells = (
        "Cells: value ± lm-eval's stderr [bootstrap 95% interval]. average: the mean over all tasks (none "
        "where a task has no value), its stderr sqrt(sum of squared task stderrs) / tasks, its interval "
        "a stratified bootstrap (examples resampled within each task). "
    )
    main_df, metrics = main_table(reports, accuracy, **boot)
    per_task = "; ".join(f"{d}: {m}" for d, m in metrics.items())
    write_table(
        main_df,
        tables / "main",
        title="Accuracy per system and task",
        note=f"Primary metric per task: {per_task}. "
        + cells
        + interval_note(args.resamples)
        + (f"\n\n{skipped}" if (skipped := not_run_note(reports, accuracy)) else ""),
        md=interval_markdown(main_df, accuracy),
    )
    likelihood_df = main_table(reports, likelihood, **boot)[0] if likelihood else pd.DataFrame({"system": []})
    write_table(
        likelihood_df,
        tables / "likelihood",
        title="Held-out answer likelihood per system and task (bits per byte, lower is better)",
        note=(
            "Metric: bits_per_byte of each task's reference answers: -sum log2 p(reference answer | prompt) "
            "/ sum UTF-8 bytes, under each system's own routing and mixture. " + cells + interval_note(args.resamples)
        )
        if likelihood
        else "No target task is scored in bits per byte (a loglikelihood task of reference answers).",
        md=interval_markdown(likelihood_df, likelihood) if likelihood else likelihood_df,
    )
    write_table(
        paired_table(reports, columns, comparisons(list(reports)), **boot),
        tables / "paired",
        title="Paired differences between the systems the papers compare",
        note=_paired_note(args.resamples),
        floatfmt=".4f",
    )
    reference = next((s for s in ("base", "gradientspace-single") if s in reports), next(iter(reports), None))
    others = [(f"vs. {reference}", s, reference) for s in reports if s != reference]
    measure = LIKELIHOOD_METRIC if likelihood else "accuracy"
    to_reference = paired_table(reports, {measure: columns[measure]}, others, **boot)
    # The figure's measure: bits per byte where a task has it (it separates systems whose generations all
    # score 0), else accuracy.
    what = "Bits per byte" if likelihood else "Accuracy"
    write_table(
        to_reference,
        tables / "likelihood_paired",
        title=f"{what} of each system minus {reference}'s, paired over the same examples",
        note=_paired_note(args.resamples),
        floatfmt=".4f",
    )
    plot_differences(
        to_reference,
        str(reference),
        figures / "likelihood.png",
        ylabel=f"{what.lower()} minus {reference}'s ({'below 0' if likelihood else 'above 0'}: better)",
        title=f"{'Held-out answer likelihood' if likelihood else 'Accuracy'}: paired difference to {reference} "
        "(95% bootstrap intervals)",
    )
    latency_csv = res / "latency" / "latency.csv" if args.latency is None else args.latency
    write_table(
        pd.DataFrame() if latency_csv == "none" else pd.read_csv(latency_csv),
        tables / "latency",
        title="Inference latency: single expert vs. ensembles",
        note="Not measured: the config's studies leave out gradientspace." if latency_csv == "none" else "",
    )
    if not args.targets:
        for stem, title in SELECTION_TITLES.items():
            write_table(pd.DataFrame(), tables / stem, title=title, note="Not run: no selection targets.")
        plot_budget(pd.DataFrame(), [], figures / "clusterucb_budget.png")
    else:
        selection_reports = load_reports(_pairs(args.selection_eval))
        selection_paired = clusterucb_paired_table(
            selection_reports, args.targets, task_columns(selection_reports), **boot
        )
        write_table(
            selection_paired,
            tables / "clusterucb_paired",
            title=SELECTION_TITLES["clusterucb_paired"],
            note=_paired_note(args.resamples),
            floatfmt=".4f",
        )
        write_table(
            clusterucb_table(res / "selection", args.targets, selection_reports, **boot),
            tables / "clusterucb",
            title=SELECTION_TITLES["clusterucb"],
            note="Compute in per-sample gradient computations (one sample, one checkpoint, one pass): "
            "total = clustering pass + cold start + draws, each draw at the influence checkpoints it needed; "
            "full LESS computes every sample at every checkpoint. Validation gradients apart (the same for all). "
            "accuracy / bits_per_byte on the target's own test / reference examples, where the selection was "
            "fine-tuned; " + interval_note(args.resamples),
            sections={
                "Paired differences on the target's examples (ClusterUCB minus the other selection)": selection_paired
            },
            floatfmt=".4f",
        )
        budget = clusterucb_budget_table(res / "selection", args.targets)
        write_table(
            budget,
            tables / "clusterucb_budget",
            title=SELECTION_TITLES["clusterucb_budget"],
            note="Mean and std over seeds; total compute as a fraction of full LESS's, the clustering pass "
            "counted. Influences read from the full LESS pass, charged as if computed on demand.",
        )
        write_table(
            clusterucb_ablation_table(res / "selection", args.targets),
            tables / "clusterucb_ablation",
            title=SELECTION_TITLES["clusterucb_ablation"],
            note="Mean and std over seeds at the configured budget; read from the full LESS pass.",
        )
        plot_budget(budget, args.targets, figures / "clusterucb_budget.png")
    write_table(
        compute_table(Path(args.benchmarks)),
        tables / "compute",
        title="Compute per job",
        note=machine_note(Path(args.cpu_dtype) if args.cpu_dtype else None),
    )
    print(interval_markdown(main_df, accuracy).to_string(index=False))


if __name__ == "__main__":
    run_cli(main)
