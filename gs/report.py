"""Every table (CSV + Markdown) and figure (PNG) of the study, from the files the stages wrote.

Nothing here computes a result: it reads ``results/`` and lays the numbers out. Tables:

* ``main``: accuracy per system (rows: base, multitask LoRA, every clustering method with
  single-expert routing and with the ensembles) and domain (the primary metric of each lm-eval task),
  plus the mean over domains;
* ``likelihood``: the same rows, scored by the bits per byte of held-out reference answers under
  each system's routing (the gs_<domain>_likelihood tasks), with a bar figure;
* ``latency``: the latency measurements; ``clusterucb``: selection accuracy and compute;
* ``compute``: wall time, memory and CPU time of every job (Snakemake ``benchmark:`` files).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from gs.io import InputError, atomic_path, read_json, run_cli  # noqa: E402

DOMAIN_TASKS = {"math": "gs_math", "code": "gs_code", "finance": "gs_finance", "writing": "gs_writing"}
LIKELIHOOD_TASKS = {d: f"{t}_likelihood" for d, t in DOMAIN_TASKS.items()}
TASK_DOMAIN = {t: d for tasks in (DOMAIN_TASKS, LIKELIHOOD_TASKS) for d, t in tasks.items()}


def write_table(df: pd.DataFrame, stem: Path, *, title: str, note: str = "") -> None:
    """``stem.csv`` and ``stem.md`` (a titled Markdown table with a note on where the numbers come from)."""
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        df.to_csv(tmp, index=False)
    md = f"# {title}\n\n{df.to_markdown(index=False, floatfmt='.3f')}\n"
    if note:
        md += f"\n{note}\n"
    with atomic_path(stem.with_suffix(".md")) as tmp:
        Path(tmp).write_text(md)


def save_figure(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)


def primary_result(report: dict[str, Any], path: Path, task: str) -> dict[str, Any]:
    """The ``{"metric", "value"}`` entry of ``task`` in an evaluation report read from ``path``.

    A task the evaluation did not run is an :class:`InputError`: a table must not quietly show an
    empty cell (or an average over fewer domains) for a system whose evaluation is incomplete.
    """
    entry = (report.get("primary") or {}).get(task)
    if not isinstance(entry, dict):
        domain = TASK_DOMAIN.get(task)
        where = f" (domain {domain})" if domain else ""
        raise InputError(f"{path}: no result for {task}{where}; rerun its evaluation with that task")
    return entry


def main_table(
    eval_files: dict[str, Path], domains: list[str], tasks: dict[str, str] = DOMAIN_TASKS
) -> tuple[pd.DataFrame, dict[str, str]]:
    """One row per system, one column per domain (the primary metric of the domain's task in
    ``tasks``: the generation tasks by default, :data:`LIKELIHOOD_TASKS` for the likelihood table)
    and their mean; returns the table and the metric of each domain.

    The mean is over every domain: a system lacking a domain's task is an :class:`InputError`
    (:func:`primary_result`), and one whose metric is undefined there (``None``) gets no mean (NaN),
    never a mean over the other domains. Systems scored with different metrics for a domain are an
    :class:`InputError`: their column would mix two measures.
    """
    rows, metrics = [], {}
    for system, path in eval_files.items():
        report = read_json(path)
        row: dict[str, Any] = {"system": system}
        for d in domains:
            primary = primary_result(report, path, tasks[d])
            row[d] = primary.get("value")
            metric = primary.get("metric", "")
            if d in metrics and metric != metrics[d]:
                raise InputError(f"{path}: {tasks[d]} is scored by {metric!r}, the other systems' by {metrics[d]!r}")
            metrics[d] = metric
        values = [row[d] for d in domains]
        row["average"] = float(np.mean(values)) if values and None not in values else float("nan")
        n = {d: report["tasks"].get(tasks[d], {}).get("n_examples") for d in domains}
        row["n_examples"] = "/".join(str(n[d]) for d in domains)
        rows.append(row)
    return pd.DataFrame(rows), metrics


def plot_likelihood(df: pd.DataFrame, domains: list[str], path: Path) -> None:
    """Bits per byte of the reference answers, one bar group per domain, one bar per system."""
    fig, ax = plt.subplots(figsize=(max(7.0, 0.45 * len(df) * len(domains) / 2), 3.8))
    width = 0.8 / max(len(df), 1)
    x = np.arange(len(domains))
    for i, (_, row) in enumerate(df.iterrows()):
        values = [np.nan if row[d] is None else float(row[d]) for d in domains]
        ax.bar(x + (i - (len(df) - 1) / 2) * width, values, width, label=row["system"])
    ax.set_xticks(x, domains)
    ax.set_ylabel("bits per byte of the reference answer (lower is better)")
    low = np.nanmin(df[domains].to_numpy(dtype=float)) if len(df) else 0.0
    ax.set_ylim(bottom=max(0.0, 0.9 * low))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.suptitle("Held-out answer likelihood per system and domain")
    save_figure(fig, path)


def clusterucb_table(selection_dir: Path, targets: list[str], eval_files: dict[str, Path]) -> pd.DataFrame:
    """One row per target and selection method: accuracy where fine-tuned, and its compute.

    Compute in per-sample gradient computations (:mod:`gs.accounting`): ``clustering_pass`` (the arms'
    clustering pass, counted), ``influence_computations`` (cold start and draws, each at the influence
    checkpoints it needed), ``total_computations`` and its ratio to full LESS's total.
    """
    rows = []
    for t in targets:
        sel = read_json(selection_dir / t / "selection.json")
        for method, m in sel["methods"].items():
            system = f"select-{t}-{method}"
            acc, metric, bpb = None, None, None
            if system in eval_files:  # fine-tuned on this selection and evaluated on its target
                report = read_json(eval_files[system])
                generation = primary_result(report, eval_files[system], DOMAIN_TASKS[t])
                acc, metric = generation.get("value"), generation.get("metric")
                bpb = primary_result(report, eval_files[system], LIKELIHOOD_TASKS[t]).get("value")
            charge = m.get("charge") or {}
            rows.append(
                {
                    "target": t,
                    "method": method,
                    "accuracy": acc,
                    "metric": metric,
                    "bits_per_byte": bpb,
                    "selected": len(m["selected_ids"]),
                    "clustering_pass": charge.get("clustering", 0),
                    "influence_computations": charge.get("cold_start", 0) + charge.get("draws", 0)
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
    """The budget curve (:mod:`gs.budget_curve`) of every target: mean and std over seeds per method,
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


def plot_budget(selection_dir: Path, targets: list[str], path: Path) -> None:
    """Overlap with LESS's top set and mean-influence ratio against total compute, one column per target;
    a line per selector and k, error bars one std over seeds."""
    df = clusterucb_budget_table(selection_dir, targets)
    shown = [t for t in targets if not df.empty and (df["target"] == t).any()]
    fig, axes = plt.subplots(2, max(len(shown), 1), figsize=(3.6 * max(len(shown), 1), 6.4), squeeze=False)
    for col, t in enumerate(shown):
        sub = df[(df["target"] == t) & (df["seeds"] > 0)]
        for (method, k), g in sub.groupby(["method", "k"], sort=True):
            label = method if method == "random" else f"{method} k={k}"
            for row, (mean, std) in enumerate((("overlap_mean", "overlap_std"), ("ratio_mean", "ratio_std"))):
                axes[row, col].errorbar(g["budget_fraction"], g[mean], yerr=g[std], marker="o", capsize=2, label=label)
        axes[0, col].set_title(t)
        axes[1, col].set_xlabel("total compute / full LESS's")
    axes[0, 0].set_ylabel("overlap with LESS's top set")
    axes[1, 0].set_ylabel("mean influence / LESS top set's")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("ClusterUCB, uniform-over-clusters and random at equal total compute (mean +- std over seeds)")
    save_figure(fig, path)


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Tables and figures of the study.")
    parser.add_argument("--results", default="results")
    parser.add_argument("--eval", nargs="*", default=[], help="SYSTEM=path.json for the main table")
    parser.add_argument("--selection-eval", nargs="*", default=[], help="SYSTEM=path.json of ClusterUCB runs")
    parser.add_argument("--targets", nargs="*", default=[])
    parser.add_argument("--domains", nargs="+", required=True)
    parser.add_argument("--benchmarks", default="benchmarks")
    parser.add_argument("--tables", default="results/tables")
    parser.add_argument("--figures", default="results/figures")
    args = parser.parse_args(argv)
    res, tables, figures = Path(args.results), Path(args.tables), Path(args.figures)

    def pairs(items: list[str]) -> dict[str, Path]:
        out = {}
        for item in items:
            name, _, path = item.partition("=")
            if not path:
                raise InputError(f"expected SYSTEM=path, got {item!r}")
            out[name] = Path(path)
        return out

    main_df, metrics = main_table(pairs(args.eval), args.domains)
    note = (
        "Primary metric per domain: "
        + "; ".join(f"{d}: {m}" for d, m in metrics.items())
        + ". average: the mean over all domains (none where a domain has no value)."
    )
    write_table(main_df, tables / "main", title="Accuracy per system and domain", note=note)
    likelihood_df, _ = main_table(pairs(args.eval), args.domains, LIKELIHOOD_TASKS)
    write_table(
        likelihood_df,
        tables / "likelihood",
        title="Held-out answer likelihood per system and domain (bits per byte, lower is better)",
        note="Metric: bits_per_byte of each domain's reference split (gs_<domain>_likelihood tasks): "
        "-sum log2 p(reference answer | prompt) / sum UTF-8 bytes, under each system's own routing and mixture.",
    )
    plot_likelihood(likelihood_df, args.domains, figures / "likelihood.png")
    latency = pd.read_csv(res / "latency" / "latency.csv")
    write_table(latency, tables / "latency", title="Inference latency: single expert vs. ensembles")
    if args.targets:
        sel = clusterucb_table(res / "selection", args.targets, pairs(args.selection_eval))
        write_table(
            sel,
            tables / "clusterucb",
            title="ClusterUCB vs. full gradient selection (LESS) and random",
            note="Compute in per-sample gradient computations (one sample, one checkpoint, one pass): "
            "total = clustering pass + cold start + draws, each draw at the influence checkpoints it needed; "
            "full LESS computes every sample at every checkpoint. Validation gradients apart (the same for all).",
        )
        write_table(
            clusterucb_budget_table(res / "selection", args.targets),
            tables / "clusterucb_budget",
            title="Budget curve: overlap with LESS's top set and mean-influence ratio at equal total compute",
            note="Mean and std over seeds; total compute as a fraction of full LESS's, the clustering pass "
            "counted. Influences read from the full LESS pass, charged as if computed on demand.",
        )
        write_table(
            clusterucb_ablation_table(res / "selection", args.targets),
            tables / "clusterucb_ablation",
            title="ClusterUCB ablation: arm rules (reference names), arm sets, one-shot vs. dynamic",
            note="Mean and std over seeds at the configured budget; read from the full LESS pass.",
        )
        plot_budget(res / "selection", args.targets, figures / "clusterucb_budget.png")
    write_table(compute_table(Path(args.benchmarks)), tables / "compute", title="Compute per job")
    print(main_df.to_string(index=False))


if __name__ == "__main__":
    run_cli(main)
