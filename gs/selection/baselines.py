"""The bandit's comparisons: random and uniform-over-clusters selection, and recovery of LESS's top set.

``select_random`` keeps ``k`` uniformly random samples at no influence cost. ``draw_random`` and
``draw_uniform_over_clusters`` are the equal-compute baselines of the budget curve
(:mod:`gs.selection.budget_curve`): they spend the same number of influence computations as ClusterUCB, on
uniformly random samples of the pool or round-robin over the clusters (uniform inside each), and keep
the best ``k`` drawn, as ClusterUCB does (``cluster_ucb_select_data.py``: top ``top_p`` of the drawn
samples). ``overlap`` and ``mean_influence_ratio`` measure a selection against LESS's full top-k.
"""

from __future__ import annotations

import numpy as np

from gs.checks import index_array, int_param, scores_1d
from gs.io import InputError

__all__ = ["draw_random", "draw_uniform_over_clusters", "mean_influence_ratio", "overlap", "select_random"]


def select_random(n: int, k: int, seed: int) -> np.ndarray:
    """``k`` distinct indices of ``range(n)`` drawn uniformly (numpy Generator, ``seed``), sorted."""
    n = int_param(n, "n", minimum=1)
    k = int_param(k, "k", minimum=1)
    if k > n:
        raise InputError(f"k {k} exceeds the pool of {n} samples")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


def overlap(selected_a: np.ndarray, selected_b: np.ndarray) -> float:
    """``|A ∩ B| / |B|`` over the distinct indices: the share of reference ``B`` (e.g. LESS's full
    top-k) that ``A`` recovers; 1.0 when A contains all of B."""
    a = set(index_array(selected_a, "selected_a").tolist())
    b = set(index_array(selected_b, "selected_b").tolist())
    if not b:
        raise InputError("overlap: the reference selection is empty")
    return len(a & b) / len(b)


def mean_influence_ratio(selected: np.ndarray, reference: np.ndarray, scores: np.ndarray) -> float:
    """``mean(scores[selected]) / mean(scores[reference])``: 1.0 means the selection is as influential
    on average as the reference (e.g. LESS's full top-k, which maximises it for its size).

    ``scores`` (n,) are the full-pool influences. The ratio is only meaningful for a positive
    reference mean, so a reference mean <= 0 is an error rather than a sign-flipped number.
    """
    s = scores_1d(scores)
    sel = index_array(selected, "selected", s.size)
    ref = index_array(reference, "reference", s.size)
    if sel.size == 0 or ref.size == 0:
        raise InputError("mean_influence_ratio: empty selection or reference")
    denom = float(s[ref].mean())
    if denom <= 0:
        raise InputError(
            f"mean_influence_ratio: the reference's mean influence is {denom:.6g} (<= 0); the ratio is undefined"
        )
    return float(s[sel].mean()) / denom


def _keep_best(drawn: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` drawn indices with the highest score, best first (ties: earlier draw first)."""
    if k > drawn.size:
        raise InputError(f"keep {k} exceeds the {drawn.size} samples drawn: only drawn samples can be kept")
    return drawn[np.argsort(-scores[drawn], kind="stable")[:k]]


def draw_random(scores: np.ndarray, draws: int, keep: int, seed: int) -> np.ndarray:
    """Draw ``draws`` distinct samples uniformly, read their influences, keep the best ``keep``.

    ``scores`` (n,): the influences (read only at the drawn indices, so the charge is ``draws``).
    Returns (keep,) int64 indices, best first.
    """
    s = scores_1d(scores)
    draws = int_param(draws, "draws", minimum=1)
    if draws > s.size:
        raise InputError(f"draws {draws} exceed the pool of {s.size} samples")
    drawn = np.random.default_rng(seed).choice(s.size, size=draws, replace=False).astype(np.int64)
    return _keep_best(drawn, s, int_param(keep, "keep", minimum=1))


def draw_uniform_over_clusters(scores: np.ndarray, labels: np.ndarray, draws: int, keep: int, seed: int) -> np.ndarray:
    """Draw ``draws`` samples round-robin over the clusters (uniform inside each), keep the best ``keep``.

    ``labels`` (n,) cluster ids; clusters are visited in id order, each pass taking one unseen sample
    of every cluster that has one, so every cluster gets ``draws / K`` samples up to its size: the
    bandit without its arm index. Returns (keep,) int64 indices, best first.
    """
    s = scores_1d(scores)
    lab = index_array(labels, "labels")
    if lab.size != s.size:
        raise InputError(f"labels: {lab.size} entries for {s.size} scores")
    draws = int_param(draws, "draws", minimum=1)
    if draws > s.size:
        raise InputError(f"draws {draws} exceed the pool of {s.size} samples")
    rng = np.random.default_rng(seed)
    orders = [rng.permutation(np.flatnonzero(lab == j)) for j in np.unique(lab)]
    longest = max(len(o) for o in orders)
    # Rank r of every cluster before rank r + 1 of any: the round-robin order, clusters in id order.
    sequence = np.concatenate([np.array([o[r] for o in orders if r < len(o)]) for r in range(longest)])
    return _keep_best(sequence[:draws].astype(np.int64), s, int_param(keep, "keep", minimum=1))
