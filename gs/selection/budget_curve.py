"""The budget curve: selection quality against total compute, ClusterUCB against random and uniform draws.

For a total compute ``b * (n * C)`` (a fraction ``b`` of full LESS, :mod:`gs.selection.accounting`'s unit), each
selector draws as many samples as that total pays for and keeps the best ``keep`` of them by influence:

* ``clusterucb``: the clustering pass (``n``) first, then ``per_draw`` units per drawn sample (the
  influence checkpoints the clustering pass did not already cover); the bandit of :mod:`gs.selection.bandit`;
* ``uniform_clusters``: the same clusters and the same draws, round-robin over the clusters;
* ``random``: no clustering pass; ``C`` units per drawn sample, drawn uniformly from the pool.

Quality: overlap with LESS's top ``keep`` and mean-influence ratio to it (:mod:`gs.selection.baselines`), per
seed, and their mean and standard deviation over seeds. A total too small for a selector (below its
clustering pass plus its cold start, or paying for fewer than ``keep`` draws) is reported infeasible.

The curve reads influences from the full LESS pass (computed once for the reference anyway, and for
every seed, budget, k and selector at once) with the compute charged as if each drawn influence were
computed on demand; the reported ClusterUCB selection itself (:mod:`gs.selection.select`) is computed on
demand. The draws read the full pass's checkpoint-weighted score, so they are the same numbers an
on-demand run would compute (the on-demand test checks that equality).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from gs.io import InputError
from gs.selection.accounting import draws_for_total
from gs.selection.bandit import cluster_ucb
from gs.selection.baselines import draw_random, draw_uniform_over_clusters, mean_influence_ratio, overlap
from gs.selection.less import select_full

__all__ = ["budget_curve", "summarise_curve"]


def _cold_draws(labels: np.ndarray, cold_start: int | float) -> int:
    sizes = np.bincount(labels)
    if isinstance(cold_start, (int, np.integer)) and not isinstance(cold_start, bool):
        return int(np.minimum(sizes, int(cold_start)).sum())
    return int(np.minimum(sizes, np.maximum((sizes * float(cold_start) + 1e-9).astype(np.int64), 1)).sum())


def budget_curve(
    scores: np.ndarray,
    n_checkpoints: int,
    clustering_covers: int,
    labels_by_k: dict[int, np.ndarray],
    *,
    keep: int,
    fractions: list[float],
    seeds: list[int],
    bandit: dict[str, Any],
) -> pd.DataFrame:
    """One row per (selector, k, budget fraction, seed).

    ``scores`` (n,) the full pass's checkpoint-weighted influences on the target; ``n_checkpoints`` C;
    ``clustering_covers`` how many of the C influence checkpoints the clustering pass already covers
    (0 or 1); ``labels_by_k`` the cluster labels (n,) per k; ``bandit``: :func:`gs.selection.bandit.cluster_ucb`'s
    ``cold_start``, ``exploration``, ``draw_size``, ``estimator``. Columns: ``method``, ``k`` (0 for
    random), ``budget_fraction``, ``seed``, ``total_computations``, ``draws``, ``feasible``,
    ``overlap_with_full``, ``mean_influence_ratio`` (NaN when infeasible).
    """
    n = scores.size
    full_total = n * n_checkpoints
    reference = select_full(scores, keep)
    per_draw = n_checkpoints - clustering_covers
    rows = []

    def add(method: str, k: int, b: float, seed: int, draws: int, total: int, picked: np.ndarray | None) -> None:
        ok = picked is not None
        rows.append(
            {
                "method": method,
                "k": k,
                "budget_fraction": b,
                "seed": seed,
                "total_computations": total if ok else np.nan,
                "draws": draws,
                "feasible": ok,
                "overlap_with_full": overlap(picked, reference) if ok else np.nan,
                "mean_influence_ratio": mean_influence_ratio(picked, reference, scores) if ok else np.nan,
            }
        )

    for b in fractions:
        total = int(b * full_total + 1e-9)
        for seed in seeds:
            d = draws_for_total(total, n, n_checkpoints, 0)
            picked = draw_random(scores, d, keep, seed) if d >= keep else None
            add("random", 0, b, seed, d, d * n_checkpoints, picked)
            for k, labels in sorted(labels_by_k.items()):
                d = draws_for_total(total, n, per_draw, n)
                feasible = d >= max(keep, _cold_draws(labels, bandit["cold_start"])) and total >= n
                spent = n + d * per_draw
                ucb = None
                if feasible:
                    ucb = cluster_ucb(labels, lambda i: scores[i], budget=d, keep=keep, seed=seed, **bandit).selected
                add("clusterucb", k, b, seed, d, spent, ucb)
                uni = draw_uniform_over_clusters(scores, labels, d, keep, seed) if feasible else None
                add("uniform_clusters", k, b, seed, d, spent, uni)
    if not rows:
        raise InputError("budget curve: no budget fractions or seeds")
    return pd.DataFrame(rows)


def summarise_curve(curve: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (ddof 0) over seeds per (method, k, budget fraction); ``seeds`` counts feasible runs."""
    g = curve.groupby(["method", "k", "budget_fraction"], sort=True)
    out = g.agg(
        seeds=("feasible", "sum"),
        total_computations=("total_computations", "mean"),
        overlap_mean=("overlap_with_full", "mean"),
        overlap_std=("overlap_with_full", lambda s: float(np.std(s.dropna())) if s.notna().any() else np.nan),
        ratio_mean=("mean_influence_ratio", "mean"),
        ratio_std=("mean_influence_ratio", lambda s: float(np.std(s.dropna())) if s.notna().any() else np.nan),
    )
    return out.reset_index()
