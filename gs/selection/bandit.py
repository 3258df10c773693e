"""The ClusterUCB bandit: clusters are arms, a pull computes the influence of unseen samples of one cluster.

ClusterUCB, Wang et al., Findings of EMNLP 2025 (arXiv 2506.10288); the authors' repository
``ZigeW/ClusterUCB`` holds ``data_selection/cluster_ucb_select_data.py`` (classes ``UCB1``,
``UCB_ThreshHard``, ``UCB_ThreshNormal``, ``UCB_Beta``, ``Cluster`` and ``ucb_selection``), read for
this module, none of it copied. Its default method ``ucb_beta`` ("our modified UCB algorithm", README)
is the arm index ``mean + beta * std`` of the influences recorded in a cluster, with ``beta = 1``
(``cluster_ucb_selection.sh`` passes ``--beta 1``); ``ucb1``, ``ucb_threshhard`` and
``ucb_threshnormal`` are the ablations of the paper's Section 4.6 (README). Those reference names are
accepted for ``estimator`` next to ours (:data:`REFERENCE_NAMES`). The cold start draws
``max(int(size * csp), 1)`` samples from every cluster; the final subset is the top ``int(N * top_p)``
of the drawn samples by influence.

:class:`ClusterUCB` holds the run's state (draw order, samples taken per cluster, running arm
statistics, history); :func:`cluster_ucb` checks the arguments and runs it. It reproduces the official
arm indices, cold start, exhaustion and final top-k, and differs in that (a) the budget is an absolute
number of influence computations that includes the cold start and is never exceeded (the official
script runs ``int(N * (budget - csp))`` UCB draws after a cold start whose per-cluster ``max(., 1)`` can
overshoot; with ``csp = 0``, the script's default, the two agree), (b) an exhausted cluster can never be
chosen (the official ``UCB_Beta`` leaves ``0.0`` in an exhausted arm's slot, which wins when every live
index is negative), (c) the UCB1 ablation is seeded with the cold-start rewards (the official ``UCB1``
class has no ``initialize_arms``), and (d) random draws use a numpy ``Generator``, so a seed does not
reproduce the official script's Python ``random`` draws.
"""

from __future__ import annotations

import bisect
import heapq
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gs.checks import finite_float, int_param
from gs.io import InputError

ESTIMATORS = ("mean_std", "mean", "thresh_hard", "thresh_normal")
# The reference's --method names (cluster_ucb_select_data.py) for ours.
REFERENCE_NAMES = {
    "ucb_beta": "mean_std",
    "ucb1": "mean",
    "ucb_threshhard": "thresh_hard",
    "ucb_threshnormal": "thresh_normal",
}

__all__ = ["ESTIMATORS", "REFERENCE_NAMES", "ClusterUCB", "ClusterUCBResult", "UCBRound", "cluster_ucb"]


@dataclass(frozen=True)
class UCBRound:
    """One draw of the run: the cold-start draw of one cluster, or one UCB choice.

    ``index_values`` (K,) are the arm indices the choice was made on (NaN for an exhausted cluster;
    ``None`` during the cold start); ``threshold`` the reward threshold of the ``thresh_*`` estimators
    at that choice; ``fallback`` whether the official fallback (largest recorded influence) decided;
    ``kept_mean`` the mean influence of the best ``keep`` samples drawn so far (the curve that shows
    how the selection improves with computations).
    """

    round: int
    phase: str
    cluster: int
    indices: np.ndarray
    influences: np.ndarray
    n_computations: int
    index_values: np.ndarray | None
    threshold: float | None
    fallback: bool
    kept_mean: float


@dataclass
class ClusterUCBResult:
    """Outcome of :func:`cluster_ucb`.

    ``drawn`` (N_drawn,) sample indices in draw order and ``influences`` (N_drawn,) theirs;
    ``selected`` (keep,) the kept indices, best first, and ``selected_influences``;
    ``n_computations == len(drawn) <= budget``; ``n_evaluated`` samples passed to influence_fn
    (``n_computations`` plus those computed ahead by ``lookahead`` and never drawn); ``pulls_per_cluster``
    (K,) samples drawn per cluster (cold start included), ``cold_start_per_cluster`` (K,) the cold-start
    part; ``history`` one :class:`UCBRound` per pull (the cold start: one per cluster).
    """

    drawn: np.ndarray
    influences: np.ndarray
    selected: np.ndarray
    selected_influences: np.ndarray
    n_computations: int
    budget: int
    pulls_per_cluster: np.ndarray
    cold_start_per_cluster: np.ndarray
    cluster_sizes: np.ndarray
    history: list[UCBRound]
    estimator: str
    exploration: float
    n_evaluated: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists; NaN becomes ``None``) for writing the run and plotting it."""

        def _list(a: np.ndarray | None) -> list[Any] | None:
            if a is None:
                return None
            return [None if isinstance(x, float) and not math.isfinite(x) else x for x in a.tolist()]

        return {
            "estimator": self.estimator,
            "exploration": self.exploration,
            "budget": self.budget,
            "n_computations": self.n_computations,
            "n_evaluated": self.n_evaluated,
            "cluster_sizes": _list(self.cluster_sizes),
            "pulls_per_cluster": _list(self.pulls_per_cluster),
            "cold_start_per_cluster": _list(self.cold_start_per_cluster),
            "drawn": _list(self.drawn),
            "influences": _list(self.influences),
            "selected": _list(self.selected),
            "selected_influences": _list(self.selected_influences),
            "history": [
                {
                    "round": r.round,
                    "phase": r.phase,
                    "cluster": r.cluster,
                    "indices": _list(r.indices),
                    "influences": _list(r.influences),
                    "n_computations": r.n_computations,
                    "index_values": _list(r.index_values),
                    "threshold": r.threshold,
                    "fallback": r.fallback,
                    "kept_mean": r.kept_mean,
                }
                for r in self.history
            ],
        }


class _Arms:
    """Running statistics of the influences recorded per cluster (O(K) per index evaluation)."""

    def __init__(self, k: int, *, track_sorted: bool) -> None:
        self.track_sorted = track_sorted  # only the thresh_* estimators need the sorted rewards
        self.count = np.zeros(k, dtype=np.int64)
        self.mean = np.zeros(k)
        self.m2 = np.zeros(k)  # Welford's sum of squared deviations: stable population variance
        self.max = np.full(k, -np.inf)
        self.sorted: list[list[float]] = [[] for _ in range(k)]  # for counts above a threshold
        self.all_sorted: list[float] = []  # every recorded reward, for the official threshold

    def add(self, arm: int, rewards: np.ndarray) -> None:
        for r in rewards.tolist():
            self.count[arm] += 1
            delta = r - self.mean[arm]
            self.mean[arm] += delta / self.count[arm]
            self.m2[arm] += delta * (r - self.mean[arm])
            self.max[arm] = max(self.max[arm], r)
            if self.track_sorted:
                bisect.insort(self.sorted[arm], r)
                bisect.insort(self.all_sorted, r)

    def std(self) -> np.ndarray:
        # Population std (ddof=0), as np.std in the official code.
        return np.sqrt(np.maximum(self.m2 / np.maximum(self.count, 1), 0.0))

    def threshold(self, p: float) -> float:
        # Official UCB_Thresh*: sorted_values[-(int(len * p) + 1)], i.e. the (floor(len*p)+1)-th largest.
        vals = self.all_sorted
        return vals[-(int(len(vals) * p) + 1)]


def _arm_indices(
    arms: _Arms, live: np.ndarray, estimator: str, exploration: float, threshold_p: float
) -> tuple[np.ndarray, int, float | None, bool]:
    """Index of every arm (NaN where exhausted), the chosen arm, the threshold, and the fallback flag."""
    n = arms.count.astype(np.float64)
    t = float(arms.count.sum())
    threshold: float | None = None
    fallback = False
    if estimator == "mean_std":
        values = arms.mean + exploration * arms.std()
    elif estimator == "mean":
        values = arms.mean + exploration * np.sqrt(2.0 * math.log(t) / n)
    else:
        threshold = arms.threshold(threshold_p)
        if estimator == "thresh_hard":
            above = np.array([len(s) - bisect.bisect_left(s, threshold) for s in arms.sorted], dtype=float)
            prob = above / n
        else:
            std = arms.std()
            with np.errstate(divide="ignore", invalid="ignore"):
                z = (threshold - arms.mean) / (std * math.sqrt(2.0))
            prob = np.array(
                [
                    0.5 * math.erfc(zz) if s > 0 else float(mu >= threshold)
                    for zz, s, mu in zip(z.tolist(), std.tolist(), arms.mean.tolist(), strict=True)
                ]
            )
        values = prob + exploration * np.sqrt(2.0 * math.log(t) / n)
        # Official fallback: when no live arm has recorded anything above the threshold (its top
        # rewards sit in exhausted arms), take the live arm with the largest recorded influence.
        if not (prob[live] > 0).any():
            fallback = True
    values = np.where(live, values, np.nan)
    if fallback:
        chosen = int(np.argmax(np.where(live, arms.max, -np.inf)))
    else:
        # argmax returns the first maximum: ties go to the lower cluster id, as list.index(max) does.
        chosen = int(np.argmax(np.where(live, values, -np.inf)))
    return values, chosen, threshold, fallback


def _validate_labels(cluster_labels: Any, n_clusters: int | None) -> tuple[np.ndarray, int]:
    labels = np.asarray(cluster_labels)
    if labels.ndim != 1 or labels.size == 0:
        raise InputError(f"cluster_labels: expected a non-empty shape (n,), got {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise InputError(f"cluster_labels: expected integer cluster ids, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise InputError(f"cluster_labels: cluster ids must be >= 0, got {labels.min()}")
    top = int(labels.max())
    if n_clusters is None:
        k = top + 1
    else:
        k = int_param(n_clusters, "n_clusters", minimum=1)
        if top >= k:
            raise InputError(f"cluster_labels: cluster id {top} is out of range for n_clusters={k}")
    return labels, k


def _evaluate(influence_fn: Callable[[np.ndarray], np.ndarray], idx: np.ndarray) -> np.ndarray:
    # A copy: the callee may keep or modify what it is given without touching our draw order.
    out = influence_fn(idx.copy())
    try:
        vals = np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"influence_fn returned {type(out).__name__}, not an array of numbers") from None
    if vals.shape != idx.shape:
        raise InputError(f"influence_fn returned shape {vals.shape} for {idx.size} samples; expected ({idx.size},)")
    bad = np.flatnonzero(~np.isfinite(vals))
    if bad.size:
        raise InputError(f"influence_fn returned a non-finite influence ({vals[bad[0]]}) for sample {idx[bad[0]]}")
    return vals


class ClusterUCB:
    """One ClusterUCB run's state, updated by :meth:`cold_start` and :meth:`pull_best`.

    What a reader follows, for K clusters:

    * ``order[j]``: cluster j's sample indices in a uniform random order fixed up front; drawing its
      prefix is drawing uniformly without replacement (the official ``Cluster.draw_batch``), so every
      sample is requested at most once;
    * ``taken[j]``: how many of them are drawn; cluster j's drawn samples are ``order[j][:taken[j]]``
      and it is live while ``taken[j] < sizes[j]``;
    * ``arms``: running mean, std, max (and sorted rewards for ``thresh_*``) of the influences recorded
      per cluster, from which :func:`_arm_indices` computes the indices;
    * ``ahead[j]``: influences of ``order[j][taken[j]:]`` computed before they are drawn (``lookahead``);
      every sample passed to influence_fn is drawn or ahead, so ``spent`` plus the ``ahead`` sizes counts them;
    * ``drawn``, ``rewards``, ``history``: every draw in order; ``spent`` computations so far;
    * ``top``: a min-heap of the best ``keep`` influences so far (``kept_mean`` of each round).
    """

    def __init__(
        self,
        labels: np.ndarray,
        k: int,
        *,
        estimator: str,
        exploration: float,
        threshold_p: float,
        keep: int,
        seed: int,
        lookahead: int = 1,
    ) -> None:
        self.estimator, self.exploration, self.threshold_p, self.keep = estimator, exploration, threshold_p, keep
        self.lookahead = lookahead
        self.sizes = np.bincount(labels, minlength=k)
        rng = np.random.default_rng(seed)
        by_cluster = np.argsort(labels, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(self.sizes)])
        self.order = [rng.permutation(by_cluster[bounds[j] : bounds[j + 1]]) for j in range(k)]
        self.taken = np.zeros(k, dtype=np.int64)
        self.ahead = [np.empty(0) for _ in range(k)]
        self.cold = np.zeros(k, dtype=np.int64)
        self.arms = _Arms(k, track_sorted=estimator.startswith("thresh"))
        self.drawn: list[np.ndarray] = []
        self.rewards: list[np.ndarray] = []
        self.history: list[UCBRound] = []
        self.top: list[float] = []
        self.top_sum = 0.0

    @property
    def spent(self) -> int:
        """Influence computations so far (one per drawn sample)."""
        return int(self.taken.sum())

    def live(self) -> np.ndarray:
        """(K,) bool: clusters with undrawn samples."""
        return self.taken < self.sizes

    def cold_start(self, per_cluster: np.ndarray, influence_fn: Callable[[np.ndarray], np.ndarray]) -> None:
        """Draw ``per_cluster[j]`` samples of every cluster j in one influence_fn call (one batch)."""
        idx = [self.order[j][: per_cluster[j]] for j in range(len(per_cluster))]
        vals = _evaluate(influence_fn, np.concatenate(idx))
        for j, (ij, vj) in enumerate(zip(idx, np.split(vals, np.cumsum(per_cluster)[:-1]), strict=True)):
            self._record(j, ij, vj, "cold_start", None, None, False)
        self.cold = np.asarray(per_cluster, dtype=np.int64).copy()

    def pull_best(self, m: int, influence_fn: Callable[[np.ndarray], np.ndarray], budget_left: int) -> None:
        """Draw up to ``m`` unseen samples from the live cluster with the largest index.

        Their influences come from ``ahead`` when computed there; else one influence_fn call computes the
        cluster's next ``max(m, min(lookahead, budget_left))`` samples of its fixed order (at most what the
        cluster has left) and keeps those past ``m`` for its later pulls. The order is fixed up front and
        an influence does not depend on when it is computed, so the bandit sees the same rewards at the
        same draws at any ``lookahead``; only samples computed ahead and never drawn cost more.
        """
        values, j, threshold, fallback = _arm_indices(
            self.arms, self.live(), self.estimator, self.exploration, self.threshold_p
        )
        m = int(min(m, self.sizes[j] - self.taken[j]))
        idx = self.order[j][self.taken[j] : self.taken[j] + m]
        have = self.ahead[j]
        if have.size < m:
            start = self.taken[j] + have.size
            stop = min(self.sizes[j], self.taken[j] + max(m, min(self.lookahead, budget_left)))
            have = np.concatenate([have, _evaluate(influence_fn, self.order[j][start:stop])])
        self.ahead[j] = have[m:]
        self._record(j, idx, have[:m], "ucb", values, threshold, fallback)

    def _record(
        self,
        j: int,
        idx: np.ndarray,
        vals: np.ndarray,
        phase: str,
        index_values: np.ndarray | None,
        threshold: float | None,
        fallback: bool,
    ) -> None:
        self.taken[j] += idx.size
        self.arms.add(j, vals)
        self.drawn.append(idx)
        self.rewards.append(vals)
        for r in vals.tolist():
            if len(self.top) < self.keep:
                heapq.heappush(self.top, r)
                self.top_sum += r
            elif r > self.top[0]:
                self.top_sum += r - heapq.heapreplace(self.top, r)
        self.history.append(
            UCBRound(
                round=len(self.history),
                phase=phase,
                cluster=j,
                indices=idx,
                influences=vals,
                n_computations=self.spent,
                index_values=index_values,
                threshold=threshold,
                fallback=fallback,
                kept_mean=self.top_sum / len(self.top),
            )
        )

    def result(self, budget: int) -> ClusterUCBResult:
        """Keep the ``keep`` drawn samples with the highest influence (ties: earlier draw first)."""
        all_drawn = np.concatenate(self.drawn).astype(np.int64)
        all_vals = np.concatenate(self.rewards)
        best = np.argsort(-all_vals, kind="stable")[: self.keep]
        return ClusterUCBResult(
            drawn=all_drawn,
            influences=all_vals,
            selected=all_drawn[best],
            selected_influences=all_vals[best],
            n_computations=int(all_drawn.size),
            n_evaluated=self.spent + sum(a.size for a in self.ahead),
            budget=budget,
            pulls_per_cluster=self.taken.copy(),
            cold_start_per_cluster=self.cold.copy(),
            cluster_sizes=self.sizes.astype(np.int64),
            history=self.history,
            estimator=self.estimator,
            exploration=self.exploration,
        )


def cluster_ucb(
    cluster_labels: np.ndarray,
    influence_fn: Callable[[np.ndarray], np.ndarray],
    *,
    budget: int,
    cold_start: int | float,
    exploration: float,
    keep: int,
    draw_size: int = 1,
    lookahead: int = 1,
    estimator: str = "mean_std",
    seed: int,
    n_clusters: int | None = None,
    threshold_p: float = 0.25,
) -> ClusterUCBResult:
    """ClusterUCB: spend a budget of influence computations on the clusters that look most influential.

    Arms are clusters, a pull draws unseen samples of one cluster uniformly at random, the reward of a
    sample is its influence (``influence_fn(indices) -> (len(indices),)``, the expensive call; every
    sample passed costs 1). Inputs: ``cluster_labels`` (n,) integer cluster ids in ``[0, K)`` with
    ``K = n_clusters`` or ``max + 1``; every cluster in that range must have a sample.

    1. Cold start: from every cluster j draw ``c_j`` samples in one influence_fn call, where
       ``c_j = min(cold_start, size_j)`` for an int ``cold_start`` (>= 1), or, for a float in (0, 1],
       ``c_j = max(int(size_j * cold_start), 1)`` (the official ``--csp`` fraction; 0.0, its default,
       draws one sample per cluster, as the official ``select_arm`` visits every unvisited arm first).
    2. Until ``budget`` computations are spent or every sample is drawn: compute each live cluster's
       index from the influences recorded in it, draw ``min(draw_size, budget left, unseen in j)``
       unseen samples from the cluster with the largest index (ties: lower id), record their
       influences. A cluster whose samples are all drawn drops out. ``lookahead`` (ours; default 1,
       the reference's one influence call a pull): a pull that finds its samples not yet computed
       computes the cluster's next ``min(lookahead, budget left)`` in one call, in the cluster's fixed
       draw order, and later pulls of that cluster take them; the draws, rewards and selection equal
       ``lookahead = 1``'s (the order is fixed up front), the gradients are batched (one projector
       launch for many samples), and the samples computed but never drawn (at most K (lookahead - 1))
       are counted in ``n_evaluated``.
    3. Keep the ``keep`` drawn samples with the highest influence (ties: earlier draw first).

    Arm indices, with ``mu_j``, ``sigma_j`` the mean and population std (ddof 0) of cluster j's
    recorded influences, ``n_j`` their number, ``t = sum_j n_j`` and ``c = exploration``:

    * ``"mean_std"`` (default; the official ``ucb_beta``, ClusterUCB's "modified UCB", with
      ``c = beta``, official default 1)::

          I_j = mu_j + c * sigma_j

      There is no ``sqrt(ln t / n_j)`` term: the recorded influences estimate the cluster's
      distribution and its spread alone drives exploration (and a cluster with ``sigma_j = 0`` is
      never explored for its spread).
    * ``"mean"`` (UCB1, Auer, Cesa-Bianchi & Fischer 2002; the official ``ucb1`` ablation)::

          I_j = mu_j + c * sqrt(2 ln t / n_j)

      Rewards enter raw, as in the official ablation. UCB1 assumes rewards in [0, 1]; influences lie
      in [-1, 1], so ``c = 0.5`` is exactly UCB1 on the affinely rescaled reward ``(r + 1) / 2`` and
      ``c = 1`` is the official code.
    * ``"thresh_hard"`` (official ``ucb_threshhard``; Section 4.6 ablation): with ``tau`` the
      ``(floor(N_rec * p) + 1)``-th largest of all ``N_rec`` recorded influences (``p = threshold_p``,
      official ``--ucb_p`` default 0.25), i.e. about the top-p quantile::

          I_j = #{recorded r in j : r >= tau} / n_j  +  c * sqrt(2 ln t / n_j)

    * ``"thresh_normal"`` (official ``ucb_threshnormal``): the same with a Gaussian fit,
      ``P_j = 1 - Phi((tau - mu_j) / sigma_j)`` (``P_j = [mu_j >= tau]`` when ``sigma_j = 0``,
      the limit; scipy's ``Normal`` would not accept ``sigma = 0``)::

          I_j = P_j + c * sqrt(2 ln t / n_j)

      For both ``thresh_*`` estimators the official code has no bonus (``c = 0`` reproduces it; the
      bonus is our option), and when every live cluster's ``P_j`` / fraction is 0 the official
      fallback picks the live cluster with the largest recorded influence.

    Ours, not the paper's or the official code's: the budget counts every influence computation
    including the cold start and is a hard cap; exhausted clusters can never be chosen; the
    ``thresh_*`` bonus; the numpy ``Generator`` draws (module docstring). ``mean_std`` and the
    ``thresh_*`` indices are invariant to an affine rescaling of the rewards (positive scale), so no
    normalisation is needed; ``mean`` is not, see above.

    Errors (:class:`~gs.io.InputError`): an empty cluster, a budget smaller than the cold start,
    ``keep`` < 1 or > budget or > n, ``exploration`` < 0, an unknown estimator, and an influence_fn
    result of the wrong shape or with non-finite values. The run is deterministic given ``seed``.
    """
    labels, k = _validate_labels(cluster_labels, n_clusters)
    n = labels.size
    sizes = np.bincount(labels, minlength=k)
    empty = np.flatnonzero(sizes == 0)
    if empty.size:
        raise InputError(
            f"cluster {empty[0]} has no samples ({empty.size} of clusters 0..{k - 1} are "
            f"empty); relabel the clusters 0..K-1 without gaps"
        )
    estimator = REFERENCE_NAMES.get(estimator, estimator)
    if estimator not in ESTIMATORS:
        raise InputError(f"estimator must be one of {ESTIMATORS + tuple(REFERENCE_NAMES)}, got {estimator!r}")
    budget = int_param(budget, "budget", minimum=1)
    keep = int_param(keep, "keep", minimum=1)
    draw_size = int_param(draw_size, "draw_size", minimum=1)
    lookahead = int_param(lookahead, "lookahead", minimum=1)
    c = finite_float(exploration, "exploration")
    if c < 0:
        raise InputError(f"exploration must be >= 0, got {c}")
    p = finite_float(threshold_p, "threshold_p")
    if not 0.0 < p < 1.0:
        raise InputError(f"threshold_p must lie in (0, 1), got {p}")

    if isinstance(cold_start, bool) or not isinstance(cold_start, numbers.Real):
        raise InputError(
            f"cold_start must be an int (samples per cluster) or a float in [0, 1] "
            f"(fraction of each cluster), got {cold_start!r}"
        )
    if isinstance(cold_start, numbers.Integral):
        cs = int_param(cold_start, "cold_start", minimum=1)
        cold = np.minimum(sizes, cs)
        need = f"{cs} samples from each of {k} clusters"
    else:
        f = finite_float(cold_start, "cold_start")
        if not 0.0 <= f <= 1.0:
            raise InputError(f"cold_start as a fraction must lie in [0, 1], got {f}")
        # f = 0 is the official --csp default 0.0: no cold start, but UCB_Beta.select_arm returns every
        # arm without a recorded influence first, in id order: one draw per cluster, as max(int(0), 1).
        cold = np.minimum(sizes, np.maximum((sizes * f + 1e-9).astype(np.int64), 1))
        need = f"a fraction {f} (at least 1) of each of {k} clusters"
    cold_cost = int(cold.sum())
    if budget < cold_cost:
        raise InputError(
            f"budget {budget} is smaller than the cold start: {need} need {cold_cost} influence computations"
        )
    if keep > budget:
        raise InputError(f"keep {keep} exceeds the budget {budget}: only drawn samples can be kept")
    if keep > n:
        raise InputError(f"keep {keep} exceeds the pool of {n} samples")

    bandit = ClusterUCB(
        labels, k, estimator=estimator, exploration=c, threshold_p=p, keep=keep, seed=seed, lookahead=lookahead
    )
    bandit.cold_start(cold, influence_fn)
    while bandit.spent < budget and bandit.live().any():
        left = budget - bandit.spent
        bandit.pull_best(min(draw_size, left), influence_fn, left)
    return bandit.result(budget)
