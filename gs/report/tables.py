"""The study's result tables with their uncertainty: per-system values with lm-eval's stderr and a
bootstrap 95% interval, and paired differences between the systems the papers compare.

* :func:`main_table`: one row per system, per domain the primary metric (lm-eval's value), its
  stderr as lm-eval reports it, and a percentile-bootstrap interval over the domain's examples
  (:mod:`gs.intervals`); the ``average`` over domains gets a *stratified* bootstrap (each domain's
  examples resampled within the domain, the average of the domain statistics taken per replicate),
  and ``average_stderr = sqrt(sum_d stderr_d^2) / D`` (independent domains). A domain the evaluation
  deliberately did not run (gs_code's pass@1 without bubblewrap) is "not run" in its cell, empty in the
  CSV with the domain named in a ``not_run`` column, and left out of that row's average
  (:func:`not_run_note` says so under the table).
* :func:`paired_table`: for each ``(comparison, system, reference)``, the difference
  ``system - reference`` per domain and averaged, with a paired bootstrap interval over the examples
  both scored (matched by task, ``doc_id`` and ``id``) and a plain-words reading of the interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gs.intervals import CONFIDENCE, MIN_EXAMPLES, RESAMPLES, Interval, bootstrap_interval, paired_interval
from gs.io import InputError, read_json
from gs.report.scores import TaskScores, paired_scores, report_targets, task_scores

NO_DIFFERENCE = "no difference detected at this scale"
# Fewer paired examples than this in a domain: the reading says so instead of naming a winner (ours). The
# percentile bootstrap of a mean is about a z-interval with the n (not n - 1) variance; at n = 10 that is
# 1.96 * sqrt(9 / 10) = 1.86 standard errors where Student's t wants 2.26 (coverage near 90%, not 95%), and
# with n = 4 examples that all move the same way it excludes 0 where an exact sign test gives p = 0.125.
SMALL_SAMPLE = 10
TOO_FEW = f"too few examples to tell (under {SMALL_SAMPLE} a domain)"
#: Columns of a measure: ``{label: task}`` (:func:`gs.report.scores.task_columns` gives them per measure).
Columns = dict[str, str]
LOWER_IS_BETTER = {"accuracy": False, "bits_per_byte": True}

Reports = dict[str, tuple[Path, dict[str, Any]]]


def load_reports(eval_files: dict[str, Path]) -> Reports:
    """Each system's evaluation report, read once: ``{system: (path, report)}``."""
    return {system: (path, read_json(path)) for system, path in eval_files.items()}


def _scores(reports: Reports, system: str, task: str) -> TaskScores:
    path, report = reports[system]
    return task_scores(report, path, task)


def main_table(
    reports: Reports,
    domains: list[str],
    tasks: Columns | None = None,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """One row per system; per column ``d`` of ``domains`` (a task; ``tasks`` maps a label to its task, by
    default the label is the task) the columns ``d`` (lm-eval's value),
    ``d_stderr``, ``d_ci_low``, ``d_ci_high``; then ``average`` (mean over domains), ``average_stderr``,
    ``average_ci_low``, ``average_ci_high`` and ``n_examples`` ("n_math/n_code/..."). Returns the table
    and the metric of each domain.

    The mean is over every domain: a system lacking a domain's task is an :class:`InputError`, and one
    whose metric is undefined there (``None``) gets no mean (NaN), never a mean over the other domains.
    The one exception is a domain the evaluation marked not run (:attr:`TaskScores.not_run`): its value is
    empty, ``n_examples`` shows ``-``, a ``not_run`` column (present only then) names it, and the row's
    average, stderr and interval are over the domains that ran (never counting it as 0).
    Systems scored with different metrics for a domain are an :class:`InputError`.
    """
    tasks = tasks or {d: d for d in domains}
    rows, metrics = [], {}
    for system, (path, _) in reports.items():
        row: dict[str, Any] = {"system": system}
        per_domain = {d: _scores(reports, system, tasks[d]) for d in domains}
        for d, ts in per_domain.items():
            if d in metrics and ts.metric != metrics[d]:
                raise InputError(f"{path}: {tasks[d]} is scored by {ts.metric!r}, the other systems' by {metrics[d]!r}")
            metrics[d] = ts.metric
            ci = bootstrap_interval([ts.scores], resamples=resamples, seed=seed)
            row.update({d: ts.value, f"{d}_stderr": ts.stderr, f"{d}_ci_low": ci.low, f"{d}_ci_high": ci.high})
        ran = [d for d in domains if per_domain[d].not_run is None]
        values = [per_domain[d].value for d in ran]
        defined = bool(values) and None not in values
        row["average"] = float(np.mean(values)) if defined else float("nan")
        errors = [per_domain[d].stderr for d in ran]
        row["average_stderr"] = (
            math.sqrt(sum(e * e for e in errors)) / len(errors) if defined and None not in errors else float("nan")
        )
        ci = (
            bootstrap_interval([per_domain[d].scores for d in ran], resamples=resamples, seed=seed)
            if defined
            else Interval(float("nan"), float("nan"), float("nan"), 0)
        )
        row.update(average_ci_low=ci.low, average_ci_high=ci.high)
        row["n_examples"] = "/".join("-" if per_domain[d].not_run else str(per_domain[d].n_examples) for d in domains)
        if len(ran) < len(domains):
            row["not_run"] = ", ".join(d for d in domains if d not in ran)
        rows.append(row)
    df = pd.DataFrame(rows)
    if "not_run" in df:
        df["not_run"] = df["not_run"].fillna("")
    return df, metrics


def _not_run(row: Any) -> list[str]:
    """The domains a :func:`main_table` row names in its ``not_run`` column."""
    value = row.get("not_run")
    return [d for d in value.split(", ") if d] if isinstance(value, str) else []


def not_run_note(reports: Reports, domains: list[str], tasks: Columns | None = None) -> str:
    """The sentence under a :func:`main_table` naming each domain not run, for which systems and why
    (each reason once), and that those rows average the domains that ran; ``""`` when everything ran."""
    tasks = tasks or {d: d for d in domains}
    by_reason: dict[tuple[str, str, str], list[str]] = {}
    for system in reports:
        for d in domains:
            ts = _scores(reports, system, tasks[d])
            if ts.not_run is not None:
                by_reason.setdefault((d, ts.metric, ts.not_run), []).append(system)
    if not by_reason:
        return ""
    reasons = "; ".join(
        f"{d} ({metric}) for {', '.join(systems)}: {reason.rstrip('.')}"
        for (d, metric, reason), systems in by_reason.items()
    )
    skipped = ", ".join(sorted({d for d, _, _ in by_reason}, key=domains.index))
    return (
        f"Not run: {reasons}. Those cells read 'not run' (empty in the CSV, named in its not_run column); the "
        f"average of those rows (marked 'without {skipped}') is the mean over the domains that ran, never "
        "counting a domain not run as 0."
    )


def _cell(value: Any, stderr: Any, low: Any, high: Any) -> str:
    """``value ± stderr [low, high]``, parts left out where undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = f"{value:.3f}"
    if stderr is not None and not (isinstance(stderr, float) and math.isnan(stderr)):
        text += f" ± {stderr:.3f}"
    if not (math.isnan(low) or math.isnan(high)):
        text += f" [{low:.3f}, {high:.3f}]"
    return text


def interval_markdown(df: pd.DataFrame, domains: list[str]) -> pd.DataFrame:
    """The Markdown view of :func:`main_table`: one ``value ± stderr [CI low, CI high]`` cell per domain;
    ``not run`` for a domain the evaluation did not run, and ``(without <domain>)`` after an average
    that leaves it out."""
    out = pd.DataFrame({"system": df["system"]})
    for col in domains:
        out[col] = [
            "not run"
            if col in _not_run(r)
            else _cell(r[col], r[f"{col}_stderr"], r[f"{col}_ci_low"], r[f"{col}_ci_high"])
            for _, r in df.iterrows()
        ]
    averages = []
    for _, r in df.iterrows():
        cell = _cell(r["average"], r["average_stderr"], r["average_ci_low"], r["average_ci_high"])
        averages.append(f"{cell} (without {', '.join(_not_run(r))})" if cell and _not_run(r) else cell)
    out["average"] = averages
    out["n_examples"] = df["n_examples"]
    return out


def comparisons(systems: Sequence[str]) -> list[tuple[str, str, str]]:
    """The comparisons the papers make among ``systems``, as ``(comparison, system, reference)``, read as
    ``system - reference``; a comparison whose two systems are not both evaluated is left out.

    * every other inference mode of a clustering (ensembles ``elrea`` / ``uniform``, ``oracle``) against
      its single-expert routing on the same clusters;
    * GradientSpace's single-expert routing against each other clustering's;
    * GradientSpace's experts (single) against the multitask LoRA and against the base model.
    """
    present = set(systems)
    out = []
    for s in systems:
        if s in ("base", "multitask") or s.startswith("select-") or "-" not in s:
            continue
        method, mode = s.rsplit("-", 1)
        if mode != "single" and f"{method}-single" in present:
            out.append((f"{mode} vs. single routing ({method} clusters)", s, f"{method}-single"))
    gs = "gradientspace-single"
    if gs in present:
        for s in systems:
            if s.endswith("-single") and s != gs and not s.startswith("select-"):
                out.append((f"GradientSpace vs. {s.removesuffix('-single')} clustering (single expert)", gs, s))
        for reference in ("multitask", "base"):
            if reference in present:
                out.append((f"GradientSpace experts vs. {reference}", gs, reference))
    return out


def reading(ci: Interval, measure: str, system: str, reference: str, smallest: int | None = None) -> str:
    """Plain words for a paired interval: which system it favours, or that it includes 0; where the
    smallest domain behind it has under :data:`SMALL_SAMPLE` examples (``smallest``), an interval that
    excludes 0 names no winner but :data:`TOO_FEW`."""
    if math.isnan(ci.low):
        if ci.n == 0:
            return "undefined (no examples scored by both)"
        return f"undefined (a domain with fewer than {MIN_EXAMPLES} examples, or an unscored example)"
    if ci.includes(0.0):
        return NO_DIFFERENCE
    if smallest is not None and smallest < SMALL_SAMPLE:
        return TOO_FEW
    system_better = (ci.estimate < 0) == LOWER_IS_BETTER[measure]
    return f"{system if system_better else reference} better"


def paired_row(
    a: dict[str, TaskScores],
    b: dict[str, TaskScores],
    domain: str,
    measure: str,
    *,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """The paired difference ``a - b`` on one domain of ``a``/``b`` (``{domain: TaskScores}``), or on
    their stratified average over all their domains when ``domain == "average"``."""
    domains = list(a) if domain == "average" else [domain]
    strata = [paired_scores(a[d], b[d]) for d in domains]
    if any(len(x) == 0 for x, _ in strata):
        ci = Interval(float("nan"), float("nan"), float("nan"), sum(len(x) for x, _ in strata))
    else:
        ci = paired_interval(strata, resamples=resamples, seed=seed)
    return {
        "domain": domain,
        "measure": measure,
        "metric": "/".join(dict.fromkeys(a[d].metric for d in domains)),
        "difference": ci.estimate,
        "ci_low": ci.low,
        "ci_high": ci.high,
        "n": ci.n,
        "smallest": min(len(x) for x, _ in strata),
    }


def paired_table(
    reports: Reports,
    measures: dict[str, Columns],
    pairs: Sequence[tuple[str, str, str]],
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per measure, comparison and domain (then ``average``): columns ``measure``,
    ``comparison``, ``system``, ``reference``, ``domain``, ``metric``, ``difference`` (system minus
    reference), ``ci_low``, ``ci_high`` (paired bootstrap), ``n`` (examples both scored) and ``reading``.
    A domain either evaluation did not run (:attr:`TaskScores.not_run`) reads "not run" and is left out
    of the ``average``, which is then over the domains both ran."""
    rows = []
    for measure, tasks in measures.items():
        domains = list(tasks)
        if not domains:
            continue
        for comparison, system, reference in pairs:
            a = {d: _scores(reports, system, tasks[d]) for d in domains}
            b = {d: _scores(reports, reference, tasks[d]) for d in domains}
            skipped = {d for d in domains if a[d].not_run is not None or b[d].not_run is not None}
            ran = [d for d in domains if d not in skipped] or domains
            for domain in [*domains, "average"]:
                both = (a, b) if domain != "average" else ({d: a[d] for d in ran}, {d: b[d] for d in ran})
                row = paired_row(*both, domain, measure, resamples=resamples, seed=seed)
                ci = Interval(row["difference"], row["ci_low"], row["ci_high"], row["n"])
                not_run = domain in skipped
                rows.append(
                    {
                        "measure": measure,
                        "comparison": comparison,
                        "system": system,
                        "reference": reference,
                        **{k: v for k, v in row.items() if k not in ("measure", "smallest")},
                        "reading": "not run" if not_run else reading(ci, measure, system, reference, row["smallest"]),
                    }
                )
    columns = ["measure", "comparison", "system", "reference", "domain", "metric", "difference", "ci_low", "ci_high"]
    return pd.DataFrame(rows, columns=[*columns, "n", "reading"])


def clusterucb_paired_table(
    reports: Reports, targets: list[str], measures: dict[str, Columns], *, resamples: int = RESAMPLES, seed: int = 0
) -> pd.DataFrame:
    """ClusterUCB's fine-tuned LoRA against full LESS's and random selection's, on each of the target's own
    tasks (``measures``: the columns of every measure; a target's tasks are those its report lists):
    columns ``target`` then as :func:`paired_table`. A target whose selections were not all fine-tuned and
    evaluated has no row."""
    rows = []
    for t in targets:
        system = f"select-{t}-clusterucb"
        for other in ("full", "random"):
            reference = f"select-{t}-{other}"
            if system not in reports or reference not in reports:
                continue
            own = set(report_targets(reports[system][1]).get(t, []))
            for measure, tasks in measures.items():
                for label, task in tasks.items():
                    if task not in own:
                        continue
                    a = {label: _scores(reports, system, task)}
                    b = {label: _scores(reports, reference, task)}
                    row = paired_row(a, b, label, measure, resamples=resamples, seed=seed)
                    ci = Interval(row["difference"], row["ci_low"], row["ci_high"], row["n"])
                    rows.append(
                        {
                            "target": t,
                            "task": task,
                            "measure": measure,
                            "comparison": f"ClusterUCB vs. {'full LESS' if other == 'full' else 'random'}",
                            "system": system,
                            "reference": reference,
                            **{k: v for k, v in row.items() if k not in ("measure", "domain", "smallest")},
                            "reading": reading(ci, measure, system, reference, row["smallest"]),
                        }
                    )
    columns = ["target", "task", "measure", "comparison", "system", "reference", "metric", "difference", "ci_low"]
    columns.append("ci_high")
    return pd.DataFrame(rows, columns=[*columns, "n", "reading"])


def interval_note(resamples: int = RESAMPLES, confidence: float = CONFIDENCE) -> str:
    """The sentence every table with intervals carries on how they were computed."""
    return (
        f"{confidence:.0%} intervals: percentile bootstrap over the examples, {resamples} resamples, seeded "
        "(gs.intervals); the statistic resampled is the table's own (mean score; corpus bits per byte = "
        "-sum log2 p / sum bytes)."
    )
