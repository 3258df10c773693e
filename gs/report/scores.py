"""Per-example scores of an evaluation report (``results/eval/<system>.json``, :mod:`gs.evaluation.run`).

A task's entry carries lm-eval's aggregate (``metrics``, ``stderr``) and every example it scored
(``samples[i]``: ``doc_id``, ``id``, ``scores[metric]``, and for the likelihood tasks ``loglikelihood``).
This module turns one task's samples into :class:`gs.intervals.Scores` whose ratio of sums is the
reported aggregate, keyed by example so that two systems can be paired:

* an accuracy-like metric (``exact_match``, ``pass@1``, ...) is lm-eval's mean of per-example scores:
  ``num = score``, ``den = 1``;
* ``bits_per_byte`` is lm-eval's corpus statistic ``-sum(loglikelihood) / (ln 2 * sum(bytes))``, not the
  mean of the per-example ratios :mod:`gs.evaluation.run` stores; the bytes of example ``i`` are recovered
  from that ratio, ``bytes = -loglikelihood / (ln 2 * score)`` (rounded to an integer), or the UTF-8
  length of the target where the score is 0.

Recomputing the aggregate from the samples must give the reported value; a report where it does not is
an :class:`InputError` (the intervals would describe another number than the table's).

A task the evaluation deliberately left out (gs_code's pass@1 without bubblewrap, :mod:`gs.evaluation.run`)
has ``tasks[task]["not_run"]``, the reason, and ``primary[task]["value"]`` null: :attr:`TaskScores.not_run`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gs.intervals import Scores
from gs.io import InputError

#: The metric that makes a task a likelihood column (lower is better) rather than an accuracy column.
LIKELIHOOD_METRIC = "bits_per_byte"

Key = tuple[str, str | None]  # (doc_id, id) of one example


def primary_result(report: dict[str, Any], path: Path, task: str) -> dict[str, Any]:
    """The ``{"metric", "value"}`` entry of ``task`` in an evaluation report read from ``path``.

    A task the evaluation did not run is an :class:`InputError`: a table must not quietly show an
    empty cell (or an average over fewer domains) for a system whose evaluation is incomplete.
    """
    entry = (report.get("primary") or {}).get(task)
    if not isinstance(entry, dict):
        target = ((report.get("tasks") or {}).get(task) or {}).get("target")
        where = f" (target {target})" if target else ""
        raise InputError(f"{path}: no result for {task}{where}; rerun its evaluation with that task")
    return entry


def report_targets(report: dict[str, Any]) -> dict[str, list[str]]:
    """A report's targets and their tasks, in the config's order (``report["targets"]``: ``[{target, tasks}]``)."""
    return {entry["target"]: list(entry["tasks"]) for entry in report.get("targets") or []}


def task_columns(reports: dict[str, tuple[Path, dict[str, Any]]]) -> dict[str, dict[str, str]]:
    """The table columns of the evaluated tasks: ``{"accuracy": {label: task}, "bits_per_byte": {...}}``.

    Targets and their tasks in the order the reports list them (``report["targets"]``); a task is a
    likelihood column when its primary metric is :data:`LIKELIHOOD_METRIC`, else an accuracy column
    (every accuracy-like metric lm-eval reports is a mean in [0, 1]); the label is the task's name.
    """
    order: dict[str, None] = {}
    metric: dict[str, str | None] = {}
    for _, report in reports.values():
        for tasks in report_targets(report).values():
            for task in tasks:
                order.setdefault(task, None)
                found = ((report.get("primary") or {}).get(task) or {}).get("metric")
                if metric.get(task) is None:
                    metric[task] = found
    columns: dict[str, dict[str, str]] = {"accuracy": {}, LIKELIHOOD_METRIC: {}}
    for task in order:
        columns[LIKELIHOOD_METRIC if metric.get(task) == LIKELIHOOD_METRIC else "accuracy"][task] = task
    return columns


@dataclass(frozen=True)
class TaskScores:
    """One system's primary metric on one task: lm-eval's value and stderr, and the examples behind them.

    ``keys[i]`` is example ``i``'s ``(doc_id, id)``; ``scores.num`` / ``scores.den`` have shape ``(n,)``
    in the same order (NaN where an example has no score). ``not_run``: why the evaluation did not run
    the task (then no value and no examples), else ``None``.
    """

    metric: str
    value: float | None
    stderr: float | None
    n_examples: int | None
    keys: list[Key]
    scores: Scores
    not_run: str | None = None


def _float(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _not_run(entry: dict[str, Any], primary: dict[str, Any], path: Path, task: str) -> str | None:
    """The reason a task was not run (``tasks[task]["not_run"]``), checked to come with no value."""
    reason = entry.get("not_run") or primary.get("not_run")
    if reason is None:
        return None
    if primary.get("value") is not None or entry.get("samples"):
        raise InputError(f"{path}: {task} is marked not run but has a value or samples")
    return " ".join(str(reason).split())


def task_scores(report: dict[str, Any], path: Path, task: str) -> TaskScores:
    """The primary metric of ``task`` in ``report`` (read from ``path``) with its per-example scores."""
    primary = primary_result(report, path, task)
    metric, value = primary.get("metric", ""), primary.get("value")
    entry = (report.get("tasks") or {}).get(task) or {}
    keys: list[Key] = []
    seen: set[Key] = set()
    num, den = [], []
    for i, s in enumerate(entry.get("samples") or []):
        key = (str(s.get("doc_id")), None if s.get("id") is None else str(s["id"]))
        if key in seen:
            raise InputError(f"{path}: {task} sample {i}: example {key} scored twice")
        seen.add(key)
        keys.append(key)
        score = _float((s.get("scores") or {}).get(metric))
        if metric == "bits_per_byte":
            bits = -_float(s.get("loglikelihood")) / math.log(2)
            if score > 0:
                n_bytes = float(round(bits / score))
            else:
                n_bytes = float(len(str(s.get("target") or "").encode("utf-8"))) if score == 0 else float("nan")
            num.append(bits)
            den.append(n_bytes)
        else:
            num.append(score)
            den.append(1.0)
    scores = Scores(np.asarray(num, dtype=float), np.asarray(den, dtype=float))
    if value is not None and len(scores) and np.isfinite(scores.num).all() and np.isfinite(scores.den).all():
        recomputed = scores.num.sum() / scores.den.sum()
        if not math.isclose(recomputed, value, rel_tol=1e-6, abs_tol=1e-9):
            raise InputError(
                f"{path}: {task}: the {len(scores)} samples' {metric} gives {recomputed:.6g}, the report {value:.6g}"
            )
    return TaskScores(
        metric=metric,
        value=value,
        stderr=(entry.get("stderr") or {}).get(metric),
        n_examples=entry.get("n_examples"),
        keys=keys,
        scores=scores,
        not_run=_not_run(entry, primary, path, task),
    )


def paired_scores(a: TaskScores, b: TaskScores) -> tuple[Scores, Scores]:
    """The examples both systems scored (matched by ``(doc_id, id)``, in ``a``'s order): two aligned
    :class:`Scores` of equal length (0 if they share none)."""
    where_b = {k: i for i, k in enumerate(b.keys)}
    ia = [i for i, k in enumerate(a.keys) if k in where_b]
    ib = [where_b[a.keys[i]] for i in ia]
    return (
        Scores(a.scores.num[ia], a.scores.den[ia]),
        Scores(b.scores.num[ib], b.scores.den[ib]),
    )
