"""Gradient-based data selection on arrays: LESS influence, its full top-k reference, random, ClusterUCB.

No model code lives here: gradients come in as arrays and the expensive per-sample influence computation
comes in as a callable, so the algorithms can be tested on synthetic data in milliseconds.

Sources (public code, read for this module; none of it is copied):

* LESS, Xia et al., ICML 2024, ``princeton-nlp/LESS``: ``less/data_selection/collect_grad_reps.py``
  (``obtain_gradients_with_adam``: the Adam update direction of a training sample, computed from the
  warm-up checkpoint's optimizer state; every gradient row is L2-normalised before it is stored),
  ``matching.py`` (influence = normalised training features times normalised validation gradients,
  averaged over the validation samples of a subtask, max over subtasks, summed over checkpoints with
  weights renormalised to sum to 1; the scripts pass each checkpoint's average learning rate as its
  weight) and ``write_selected_data.py`` (top ``int(percentage * N)``).
* ClusterUCB, Wang et al., Findings of EMNLP 2025 (arXiv 2506.10288); only the abstract is in
  ``shared/papers.md``, but the authors' repository ``ZigeW/ClusterUCB`` (commit ``0bf5c5b``) holds
  ``data_selection/cluster_ucb_select_data.py``. Its default method ``ucb_beta`` ("our modified UCB
  algorithm", README) is the arm index ``mean + beta * std`` of the influences recorded in a cluster,
  with ``beta = 1``; ``ucb1``, ``ucb_threshhard`` and ``ucb_threshnormal`` are the ablations of the
  paper's Section 4.6 (README). The cold start draws ``max(int(size * csp), 1)`` samples from every
  cluster; the final subset is the top ``int(N * top_p)`` of the drawn samples by influence.

What follows the official code and what is ours is said per function; in short, :func:`cluster_ucb`
reproduces the official arm indices, cold start, exhaustion and final top-k, and differs in that
(a) the budget is an absolute number of influence computations that includes the cold start and is
never exceeded (the official script runs ``int(N * (budget - csp))`` UCB draws after a cold start whose
per-cluster ``max(., 1)`` can overshoot), (b) an exhausted cluster can never be chosen (the official
``UCB_Beta`` leaves ``0.0`` in an exhausted arm's slot, which wins when every live index is negative),
(c) the UCB1 ablation is seeded with the cold-start rewards (the official ``UCB1`` class has no
``initialize_arms``), and (d) random draws use a numpy ``Generator``, so a seed does not reproduce the
official script's Python ``random`` draws.
"""

from __future__ import annotations

import bisect
import heapq
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gs.io import InputError, parse_params

ESTIMATORS = ("mean_std", "mean", "thresh_hard", "thresh_normal")
TARGET_REDUCTIONS = ("mean_cosine", "cosine_to_mean")

__all__ = [
    "ESTIMATORS",
    "TARGET_REDUCTIONS",
    "ClusterUCBResult",
    "UCBRound",
    "adam_precondition",
    "cluster_ucb",
    "count_from_fraction",
    "influence_scores",
    "mean_influence_ratio",
    "overlap",
    "select_full",
    "select_random",
]


# --------------------------------------------------------------------------------------------------
# Small validators (every user error is one InputError line)
# --------------------------------------------------------------------------------------------------


def _int_param(value: Any, name: str, *, minimum: int) -> int:
    # bool is an Integral; a YAML ``true`` must not become a budget of 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _finite_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _float_array(x: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name}: not an array ({e})") from None
    if arr.dtype.kind not in "fiu":
        raise InputError(f"{name}: expected numbers, got dtype {arr.dtype}")
    return arr


def _scores_1d(scores: Any, name: str = "scores") -> np.ndarray:
    arr = _float_array(scores, name).astype(np.float64, copy=False)
    if arr.ndim != 1:
        raise InputError(f"{name}: expected shape (n,), got {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise InputError(f"{name}: non-finite value {arr[bad[0]]} at index {bad[0]}")
    return arr


def _index_array(idx: Any, name: str, n: int | None = None) -> np.ndarray:
    arr = np.asarray(idx)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise InputError(f"{name}: expected a 1-D array of integer indices, got shape {arr.shape} dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if n is not None and arr.size and (arr.min() < 0 or arr.max() >= n):
        raise InputError(f"{name}: indices must lie in [0, {n}), got range [{arr.min()}, {arr.max()}]")
    return arr


def count_from_fraction(n: int, fraction: float, *, what: str = "fraction") -> int:
    """Number of samples that ``fraction`` of a pool of ``n`` means: ``floor(fraction * n)``.

    LESS (``write_selected_data.py``) and ClusterUCB (``--budget``, ``--top_p``) both take
    ``int(fraction * n)``; the ``1e-9`` guard keeps e.g. ``0.29 * 100 = 28.999...`` from rounding down
    to 28. ``fraction`` must lie in (0, 1] and give at least one sample.
    """
    n = _int_param(n, "n", minimum=1)
    f = _finite_float(fraction, what)
    if not 0.0 < f <= 1.0:
        raise InputError(f"{what} must lie in (0, 1], got {f}")
    k = int(f * n + 1e-9)
    if k < 1:
        raise InputError(f"{what} {f} of {n} samples selects none (floor({f} * {n}) = 0)")
    return k


# --------------------------------------------------------------------------------------------------
# 1. Influence (LESS)
# --------------------------------------------------------------------------------------------------


def adam_precondition(
    grads: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    *,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    eps_inside_sqrt: bool = True,
) -> np.ndarray:
    """The Adam update direction LESS uses as a training sample's gradient feature.

    Shapes: ``grads`` (n, d) or (d,); ``exp_avg``, ``exp_avg_sq`` (d,), the first and second moment
    estimates in the warm-up checkpoint's optimizer state. Returns an array of ``grads``' shape.

    One Adam step from the stored state with the sample's gradient ``g``::

        m' = beta1 * m + (1 - beta1) * g
        v' = beta2 * v + (1 - beta2) * g**2
        out = m' / sqrt(v' + eps)            # eps_inside_sqrt=True  (LESS, default)
        out = m' / (sqrt(v') + eps)          # eps_inside_sqrt=False (torch.optim.Adam's form)

    This is LESS's ``obtain_gradients_with_adam`` (``less/data_selection/collect_grad_reps.py``),
    also used unchanged by ClusterUCB: **no bias correction** (``m'`` and ``v'`` are not divided by
    ``1 - beta**t``) and eps **inside** the square root. Bias correction would only rescale every
    coordinate by the same factor ``sqrt(1 - beta2**t) / (1 - beta1**t)``, which a cosine ignores.
    The learning rate is omitted for the same reason.

    Torch tensors (all three) are computed with torch on their device and returned as a float32 (or
    float64) tensor, so the influence pass need not move a GPU block to numpy. Memory: two arrays of
    ``grads``' shape (the result and one temporary), no float64 copy of float32 input.
    """
    if any(type(a).__module__.startswith("torch") for a in (grads, exp_avg, exp_avg_sq)):
        return _adam_precondition_torch(grads, exp_avg, exp_avg_sq, beta1, beta2, eps, eps_inside_sqrt)
    g = _float_array(grads, "grads")
    m = _float_array(exp_avg, "exp_avg")
    v = _float_array(exp_avg_sq, "exp_avg_sq")
    b1, b2, e = _adam_hyper(g.shape, m.shape, v.shape, beta1, beta2, eps)
    if (v < 0).any():
        raise InputError("exp_avg_sq: the second moment estimate has negative entries")
    # float16/float32 inputs stay float32 (gradients are large); float64 stays float64.
    dtype = np.result_type(g.dtype, m.dtype, v.dtype, np.float32)
    g, m, v = g.astype(dtype, copy=False), m.astype(dtype, copy=False), v.astype(dtype, copy=False)
    denom = np.square(g)  # v' = beta2 * v + (1 - beta2) * g**2, in place
    denom *= dtype.type(1.0 - b2)
    denom += dtype.type(b2) * v
    if eps_inside_sqrt:
        denom += dtype.type(e)
        np.sqrt(denom, out=denom)
    else:
        np.sqrt(denom, out=denom)
        denom += dtype.type(e)
    out = g * dtype.type(1.0 - b1)  # m' = beta1 * m + (1 - beta1) * g
    out += dtype.type(b1) * m
    out /= denom
    del denom
    if not np.isfinite(out).all():
        raise InputError("adam_precondition: non-finite values in grads or the optimizer state")
    return out


def _adam_hyper(
    g_shape: tuple[int, ...], m_shape: tuple[int, ...], v_shape: tuple[int, ...], beta1: float, beta2: float, eps: float
) -> tuple[float, float, float]:
    """Check :func:`adam_precondition`'s shapes and hyperparameters; returns (beta1, beta2, eps)."""
    if len(g_shape) not in (1, 2):
        raise InputError(f"grads: expected shape (n, d) or (d,), got {tuple(g_shape)}")
    d = g_shape[-1]
    for shape, name in ((m_shape, "exp_avg"), (v_shape, "exp_avg_sq")):
        if tuple(shape) != (d,):
            raise InputError(f"{name}: expected shape ({d},) to match grads {tuple(g_shape)}, got {tuple(shape)}")
    b1, b2, e = _finite_float(beta1, "beta1"), _finite_float(beta2, "beta2"), _finite_float(eps, "eps")
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise InputError(f"beta1 and beta2 must lie in [0, 1), got {b1} and {b2}")
    if e <= 0.0:
        raise InputError(f"eps must be > 0, got {e}")
    return b1, b2, e


def _adam_precondition_torch(
    grads: Any, exp_avg: Any, exp_avg_sq: Any, beta1: float, beta2: float, eps: float, eps_inside_sqrt: bool
) -> Any:
    """:func:`adam_precondition` for torch tensors, on ``grads``' device (same formula, in place)."""
    import torch

    if not all(isinstance(a, torch.Tensor) for a in (grads, exp_avg, exp_avg_sq)):
        raise InputError("adam_precondition: pass grads, exp_avg and exp_avg_sq all as numpy or all as torch")
    b1, b2, e = _adam_hyper(tuple(grads.shape), tuple(exp_avg.shape), tuple(exp_avg_sq.shape), beta1, beta2, eps)
    dtype = torch.promote_types(torch.promote_types(grads.dtype, exp_avg.dtype), exp_avg_sq.dtype)
    dtype = torch.promote_types(dtype, torch.float32)
    g = grads.detach().to(dtype)
    m, v = exp_avg.to(g.device, dtype), exp_avg_sq.to(g.device, dtype)
    if bool((v < 0).any()):
        raise InputError("exp_avg_sq: the second moment estimate has negative entries")
    denom = g.square().mul_(1.0 - b2).add_(v, alpha=b2)
    if eps_inside_sqrt:
        denom.add_(e).sqrt_()
    else:
        denom.sqrt_().add_(e)
    out = g.mul(1.0 - b1).add_(m, alpha=b1).div_(denom)
    del denom
    if not bool(torch.isfinite(out).all()):
        raise InputError("adam_precondition: non-finite values in grads or the optimizer state")
    return out


def _checkpoints(x: Any, name: str) -> list[np.ndarray]:
    """One (rows, d) array per checkpoint: a 2-D array is one checkpoint, a 3-D array or a list of 2-D
    arrays several."""
    if isinstance(x, (list, tuple)) and x and all(np.ndim(e) == 2 for e in x):
        arrs = [_float_array(e, f"{name}[{i}]") for i, e in enumerate(x)]
    else:
        arr = _float_array(x, name)
        if arr.ndim == 2:
            arrs = [arr]
        elif arr.ndim == 3:
            arrs = list(arr)
        else:
            raise InputError(
                f"{name}: expected (rows, d), (checkpoints, rows, d) or a list of (rows, d) "
                f"arrays, got shape {arr.shape}"
            )
    for i, a in enumerate(arrs):
        if a.shape[0] == 0 or a.shape[1] == 0:
            raise InputError(f"{name}[{i}]: empty array of shape {a.shape}")
    return arrs


def _checkpoint_weights(weights: Sequence[float] | None, n_ckpt: int) -> np.ndarray:
    if weights is None:
        return np.full(n_ckpt, 1.0 / n_ckpt)
    w = _scores_1d(weights, "checkpoint_weights")
    if w.size != n_ckpt:
        raise InputError(f"checkpoint_weights: {w.size} weights for {n_ckpt} checkpoints")
    if (w < 0).any() or w.sum() <= 0:
        raise InputError(f"checkpoint_weights must be >= 0 with a positive sum, got {w.tolist()}")
    # LESS matching.py renormalises the weights to sum to 1, which keeps scores in [-1, 1].
    return w / w.sum()


def _target_directions(
    v: np.ndarray, group_of: np.ndarray, n_groups: int, reduction: str, ckpt: int, chunk: int
) -> np.ndarray:
    """(d, G) matrix whose column g, dotted with a unit training feature, gives its group-g score.

    Streams ``v`` in row chunks in its own precision (float32 stays float32): memory ``chunk * d``
    plus the (G, d) sums, never a float64 copy of the (m, d) target matrix.
    """
    dtype = np.result_type(v.dtype, np.float32)
    sums = np.zeros((n_groups, v.shape[1]), dtype=dtype)
    for start in range(0, v.shape[0], chunk):
        vc = np.asarray(v[start : start + chunk], dtype=dtype)
        if not np.isfinite(vc).all():
            raise InputError(f"target_grads[{ckpt}]: non-finite values")
        if reduction == "mean_cosine":
            # Mean over validation samples of cos(x, v_j) = <x/|x|, mean_j v_j/|v_j|>; a zero validation
            # gradient contributes cosine 0 (LESS normalises it to the zero vector and still averages it).
            norms = np.linalg.norm(vc, axis=1, keepdims=True)
            vc = np.divide(vc, norms, out=np.zeros_like(vc), where=norms > 0)
        np.add.at(sums, group_of[start : start + chunk], vc)
    counts = np.bincount(group_of, minlength=n_groups).astype(dtype)
    t = sums / counts[:, None]
    t_norms = np.linalg.norm(t, axis=1)
    zero = np.flatnonzero(t_norms == 0)
    if zero.size:
        which = f"target group {zero[0]}" if n_groups > 1 else "the target"
        raise InputError(
            f"target_grads[{ckpt}]: {which} has no gradient direction (its validation "
            f"gradients average to the zero vector)"
        )
    if reduction == "cosine_to_mean":
        t = t / t_norms[:, None]
    return t.T


def influence_scores(
    train_features: np.ndarray | Sequence[np.ndarray],
    target_grads: np.ndarray | Sequence[np.ndarray],
    *,
    checkpoint_weights: Sequence[float] | None = None,
    target_reduction: str = "mean_cosine",
    target_groups: np.ndarray | None = None,
    chunk_size: int = 4096,
) -> np.ndarray:
    """LESS influence of every training sample on a target task; shape (n,), float64.

    Inputs, one checkpoint: ``train_features`` (n, d), the training samples' (Adam-preconditioned,
    see :func:`adam_precondition`, possibly randomly projected) gradient features, and
    ``target_grads`` (m, d), the target task's validation gradients (plain SGD gradients in LESS).
    Several checkpoints: lists (or 3-D arrays) of those, one entry per checkpoint, same n and d.

    With ``x_i`` the training feature, ``v_j`` the validation gradients and ``hat`` the L2-normalised
    vector (a zero vector stays zero, so a zero row scores 0 and never NaN)::

        target_reduction="mean_cosine"    (LESS matching.py, default)
            s_i = (1/m) * sum_j cos(x_i, v_j) = < hat(x_i), (1/m) * sum_j hat(v_j) >
        target_reduction="cosine_to_mean"
            s_i = cos(x_i, mean_j v_j)

    Both lie in [-1, 1] and both give exactly 1 (-1) for a training gradient along (against) the
    common direction of identical validation gradients. For one checkpoint and no groups they rank
    samples identically up to how the validation gradients are averaged (normalised first, or not).

    ``target_groups`` (m,) (optional): subtask label of each validation sample. LESS averages within
    each subtask and takes the max over subtasks (``reshape(n, N_SUBTASKS, -1).mean(-1).max(-1)``):
    ``s_i = max_g s_i^(g)``, the group scores being computed as above on group g's rows.

    Checkpoints: ``s_i = sum_c w_c s_i^(c)`` with the weights renormalised to sum to 1 (LESS passes
    each checkpoint's average learning rate; ``None`` = equal weights); the max over groups is taken
    after the sum, as in LESS.
    """
    if target_reduction not in TARGET_REDUCTIONS:
        raise InputError(f"target_reduction must be one of {TARGET_REDUCTIONS}, got {target_reduction!r}")
    chunk = _int_param(chunk_size, "chunk_size", minimum=1)
    trains = _checkpoints(train_features, "train_features")
    targets = _checkpoints(target_grads, "target_grads")
    if len(trains) != len(targets):
        raise InputError(f"{len(trains)} checkpoints of train_features but {len(targets)} of target_grads")
    weights = _checkpoint_weights(checkpoint_weights, len(trains))
    n = trains[0].shape[0]
    if target_groups is None:
        group_of, n_groups = None, 1
    else:
        labels = _index_array(target_groups, "target_groups")
        if labels.size and labels.min() < 0:
            raise InputError("target_groups: labels must be >= 0")
        uniq, group_of = np.unique(labels, return_inverse=True)
        n_groups = uniq.size
    total = np.zeros((n, n_groups))
    for c, (x, v) in enumerate(zip(trains, targets, strict=True)):
        if x.shape[0] != n:
            raise InputError(f"train_features[{c}]: {x.shape[0]} rows, checkpoint 0 has {n}")
        if x.shape[1] != v.shape[1]:
            raise InputError(f"checkpoint {c}: train_features have d={x.shape[1]} but target_grads d={v.shape[1]}")
        if group_of is None:
            g = np.zeros(v.shape[0], dtype=np.int64)
        elif v.shape[0] != group_of.size:
            raise InputError(f"target_grads[{c}]: {v.shape[0]} rows but target_groups has {group_of.size}")
        else:
            g = group_of
        t = _target_directions(v, g, n_groups, target_reduction, c, chunk)
        # Chunks of rows in the features' own precision (float32 stays float32): no float64 copy.
        for start in range(0, n, chunk):
            xc = np.asarray(x[start : start + chunk], dtype=np.result_type(x.dtype, t.dtype))
            if not np.isfinite(xc).all():
                bad = start + int(np.flatnonzero(~np.isfinite(xc).all(axis=1))[0])
                raise InputError(f"train_features[{c}]: non-finite values in row {bad}")
            norms = np.linalg.norm(xc, axis=1, keepdims=True)
            dots = xc @ t
            total[start : start + chunk] += weights[c] * np.divide(
                dots, norms, out=np.zeros_like(dots), where=norms > 0
            )
    return total.max(axis=1)


# --------------------------------------------------------------------------------------------------
# 2. Baselines
# --------------------------------------------------------------------------------------------------


def _k_of(n: int, k: int | None, fraction: float | None) -> int:
    if (k is None) == (fraction is None):
        raise InputError("give exactly one of k and fraction")
    if k is not None:
        k = _int_param(k, "k", minimum=1)
        if k > n:
            raise InputError(f"k {k} exceeds the pool of {n} samples")
        return k
    return count_from_fraction(n, fraction, what="fraction")  # type: ignore[arg-type]


def select_full(scores: np.ndarray, k: int | None = None, *, fraction: float | None = None) -> np.ndarray:
    """Top-k indices by influence, best first (the LESS selection); ties go to the lower index.

    ``scores`` (n,) must be the influences of the whole pool, so this reference costs n influence
    computations. Give ``k`` or ``fraction`` (k = :func:`count_from_fraction`, LESS's
    ``int(percentage * N)``). Returns int64 (k,).
    """
    s = _scores_1d(scores)
    kk = _k_of(s.size, k, fraction)
    return np.argsort(-s, kind="stable")[:kk].astype(np.int64)


def select_random(n: int, k: int, seed: int) -> np.ndarray:
    """``k`` distinct indices of ``range(n)`` drawn uniformly (numpy Generator, ``seed``), sorted."""
    n = _int_param(n, "n", minimum=1)
    k = _int_param(k, "k", minimum=1)
    if k > n:
        raise InputError(f"k {k} exceeds the pool of {n} samples")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# 3. ClusterUCB
# --------------------------------------------------------------------------------------------------


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
    ``n_computations == len(drawn) <= budget``; ``pulls_per_cluster`` (K,) samples drawn per cluster
    (cold start included), ``cold_start_per_cluster`` (K,) the cold-start part; ``history`` one
    :class:`UCBRound` per influence_fn call.
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
        k = _int_param(n_clusters, "n_clusters", minimum=1)
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


def cluster_ucb(
    cluster_labels: np.ndarray,
    influence_fn: Callable[[np.ndarray], np.ndarray],
    *,
    budget: int,
    cold_start: int | float,
    exploration: float,
    keep: int,
    draw_size: int = 1,
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
       ``c_j = max(int(size_j * cold_start), 1)`` (the official ``--csp`` fraction).
    2. Until ``budget`` computations are spent or every sample is drawn: compute each live cluster's
       index from the influences recorded in it, draw ``min(draw_size, budget left, unseen in j)``
       unseen samples from the cluster with the largest index (ties: lower id), record their
       influences. A cluster whose samples are all drawn drops out.
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
    if estimator not in ESTIMATORS:
        raise InputError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    budget = _int_param(budget, "budget", minimum=1)
    keep = _int_param(keep, "keep", minimum=1)
    draw_size = _int_param(draw_size, "draw_size", minimum=1)
    c = _finite_float(exploration, "exploration")
    if c < 0:
        raise InputError(f"exploration must be >= 0, got {c}")
    p = _finite_float(threshold_p, "threshold_p")
    if not 0.0 < p < 1.0:
        raise InputError(f"threshold_p must lie in (0, 1), got {p}")

    if isinstance(cold_start, bool) or not isinstance(cold_start, numbers.Real):
        raise InputError(
            f"cold_start must be an int (samples per cluster) or a float in (0, 1] "
            f"(fraction of each cluster), got {cold_start!r}"
        )
    if isinstance(cold_start, numbers.Integral):
        cs = _int_param(cold_start, "cold_start", minimum=1)
        cold = np.minimum(sizes, cs)
        need = f"{cs} samples from each of {k} clusters"
    else:
        f = _finite_float(cold_start, "cold_start")
        if not 0.0 < f <= 1.0:
            raise InputError(f"cold_start as a fraction must lie in (0, 1], got {f}")
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

    rng = np.random.default_rng(seed)
    # A uniform random order inside each cluster, fixed up front: drawing its prefix is drawing
    # uniformly without replacement, and every sample is requested at most once.
    by_cluster = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    order = [rng.permutation(by_cluster[bounds[j] : bounds[j + 1]]) for j in range(k)]
    taken = np.zeros(k, dtype=np.int64)

    arms = _Arms(k, track_sorted=estimator.startswith("thresh"))
    drawn: list[np.ndarray] = []
    rewards: list[np.ndarray] = []
    history: list[UCBRound] = []
    top: list[float] = []  # min-heap of the best `keep` influences so far, for kept_mean
    top_sum = 0.0

    def record(
        j: int,
        idx: np.ndarray,
        vals: np.ndarray,
        phase: str,
        index_values: np.ndarray | None,
        threshold: float | None,
        fallback: bool,
    ) -> None:
        nonlocal top_sum
        taken[j] += idx.size
        arms.add(j, vals)
        drawn.append(idx)
        rewards.append(vals)
        for r in vals.tolist():
            if len(top) < keep:
                heapq.heappush(top, r)
                top_sum += r
            elif r > top[0]:
                top_sum += r - heapq.heapreplace(top, r)
        history.append(
            UCBRound(
                round=len(history),
                phase=phase,
                cluster=j,
                indices=idx,
                influences=vals,
                n_computations=int(taken.sum()),
                index_values=index_values,
                threshold=threshold,
                fallback=fallback,
                kept_mean=top_sum / len(top),
            )
        )

    # 1. Cold start, one influence_fn call for all clusters (a single batch is cheapest for a GPU).
    cold_idx = [order[j][: cold[j]] for j in range(k)]
    cold_vals = _evaluate(influence_fn, np.concatenate(cold_idx))
    split = np.cumsum(cold)[:-1]
    for j, (idx, vals) in enumerate(zip(cold_idx, np.split(cold_vals, split), strict=True)):
        record(j, idx, vals, "cold_start", None, None, False)

    # 2. UCB rounds.
    spent = cold_cost
    while spent < budget:
        live = taken < sizes
        if not live.any():
            break
        values, j, threshold, fallback = _arm_indices(arms, live, estimator, c, p)
        m = int(min(draw_size, budget - spent, sizes[j] - taken[j]))
        idx = order[j][taken[j] : taken[j] + m]
        vals = _evaluate(influence_fn, idx)
        record(j, idx, vals, "ucb", values, threshold, fallback)
        spent += m

    # 3. Keep the best.
    all_drawn = np.concatenate(drawn).astype(np.int64)
    all_vals = np.concatenate(rewards)
    best = np.argsort(-all_vals, kind="stable")[:keep]
    return ClusterUCBResult(
        drawn=all_drawn,
        influences=all_vals,
        selected=all_drawn[best],
        selected_influences=all_vals[best],
        n_computations=int(all_drawn.size),
        budget=budget,
        pulls_per_cluster=taken.copy(),
        cold_start_per_cluster=cold.astype(np.int64),
        cluster_sizes=sizes.astype(np.int64),
        history=history,
        estimator=estimator,
        exploration=c,
    )


# --------------------------------------------------------------------------------------------------
# 4. Report metrics
# --------------------------------------------------------------------------------------------------


def overlap(selected_a: np.ndarray, selected_b: np.ndarray) -> float:
    """``|A ∩ B| / |B|`` over the distinct indices: the share of reference ``B`` (e.g. LESS's full
    top-k) that ``A`` recovers; 1.0 when A contains all of B."""
    a = set(_index_array(selected_a, "selected_a").tolist())
    b = set(_index_array(selected_b, "selected_b").tolist())
    if not b:
        raise InputError("overlap: the reference selection is empty")
    return len(a & b) / len(b)


def mean_influence_ratio(selected: np.ndarray, reference: np.ndarray, scores: np.ndarray) -> float:
    """``mean(scores[selected]) / mean(scores[reference])``: 1.0 means the selection is as influential
    on average as the reference (e.g. LESS's full top-k, which maximises it for its size).

    ``scores`` (n,) are the full-pool influences. The ratio is only meaningful for a positive
    reference mean, so a reference mean <= 0 is an error rather than a sign-flipped number.
    """
    s = _scores_1d(scores)
    sel = _index_array(selected, "selected", s.size)
    ref = _index_array(reference, "reference", s.size)
    if sel.size == 0 or ref.size == 0:
        raise InputError("mean_influence_ratio: empty selection or reference")
    denom = float(s[ref].mean())
    if denom <= 0:
        raise InputError(
            f"mean_influence_ratio: the reference's mean influence is {denom:.6g} (<= 0); the ratio is undefined"
        )
    return float(s[sel].mean()) / denom


# --------------------------------------------------------------------------- workflow step


def select_for_target(
    scores: np.ndarray,
    cluster_labels: np.ndarray,
    params: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """ClusterUCB, full (LESS) and random selection for one target at the same selected size.

    ``scores`` (n,) is every sample's influence (from :mod:`gs.influence`); ClusterUCB is charged one
    computation per sample it reads, full selection ``n``, random none. ``params``: ``keep_fraction``,
    ``budget_fraction``, ``cold_start``, ``exploration``, ``draw_size``, ``estimator``, and
    ``budget_sweep`` (fractions for the budget curve). Returns the selected indices per method, the
    computations spent, and ClusterUCB's recovery of the full top set (overlap, mean-influence ratio).
    """
    n = len(scores)
    keep = count_from_fraction(n, float(params["keep_fraction"]), what="keep_fraction")
    ucb_kwargs = {
        "cold_start": params["cold_start"],
        "exploration": float(params["exploration"]),
        "draw_size": int(params.get("draw_size", 1)),
        "estimator": params.get("estimator", "mean_std"),
        "seed": seed,
    }

    def run(budget_fraction: float) -> ClusterUCBResult:
        budget = count_from_fraction(n, budget_fraction, what="budget_fraction")
        return cluster_ucb(cluster_labels, lambda idx: scores[idx], budget=budget, keep=keep, **ucb_kwargs)

    full = select_full(scores, keep)
    ucb = run(float(params["budget_fraction"]))
    rand = select_random(n, keep, seed)
    sweep = []
    for fraction in params.get("budget_sweep", []):
        try:
            r = run(float(fraction))
        except InputError as e:  # a budget below the cold start or the kept size is skipped, and said
            sweep.append({"budget_fraction": float(fraction), "skipped": str(e)})
            continue
        sweep.append(
            {
                "budget_fraction": float(fraction),
                "computations": r.n_computations,
                "overlap_with_full": overlap(r.selected, full),
                "mean_influence_ratio": mean_influence_ratio(r.selected, full, scores),
            }
        )
    methods = {
        "clusterucb": {"selected": ucb.selected.tolist(), "computations": ucb.n_computations},
        "full": {"selected": full.tolist(), "computations": n},
        "random": {"selected": rand.tolist(), "computations": 0},
    }
    for m in methods.values():
        idx = np.asarray(m["selected"])
        m["mean_influence"] = float(scores[idx].mean())
        m["overlap_with_full"] = overlap(idx, full)
        m["mean_influence_ratio"] = mean_influence_ratio(idx, full, scores)
        m["computation_ratio_vs_full"] = m["computations"] / n
    return {
        "n": n,
        "keep": keep,
        "methods": methods,
        "budget_sweep": sweep,
        "pulls_per_cluster": np.asarray(ucb.pulls_per_cluster).tolist(),
    }


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json
    from pathlib import Path

    import pandas as pd

    from gs.data import load_records
    from gs.io import write_json, write_jsonl

    parser = argparse.ArgumentParser(description="ClusterUCB, LESS and random selection for one target.")
    parser.add_argument("--influence", required=True)
    parser.add_argument("--assignments", required=True, help="clusters of the pool (id,cluster)")
    parser.add_argument("--train", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--params", required=True, help="the selection config section as JSON")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    data = np.load(args.influence)
    targets = data["targets"].tolist()
    if args.target not in targets:
        raise InputError(f"{args.influence}: no influence for target {args.target!r} (has {', '.join(targets)})")
    ids = data["ids"].astype(str).tolist()
    scores = data["scores"][targets.index(args.target)]
    frame = pd.read_csv(args.assignments, dtype={"id": str})
    by_id = dict(zip(frame["id"], frame["cluster"].astype(int), strict=True))
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise InputError(f"{args.assignments}: sample {missing[0]!r} has no cluster")
    labels = np.array([by_id[i] for i in ids])
    result = select_for_target(scores, labels, parse_params(args.params), args.seed)
    records = {r["id"]: r for r in load_records(args.train)}
    out = Path(args.out_dir)
    for name, m in result["methods"].items():
        write_jsonl(out / f"{name}.jsonl", [records[ids[i]] for i in m["selected"]])
        m["selected_ids"] = [ids[i] for i in m.pop("selected")]
    result["target"] = args.target
    result["influence_computations_per_sample"] = int(data["per_checkpoint"].shape[0])
    write_json(out / "selection.json", result)
    print(
        json.dumps(
            {
                k: {kk: v[kk] for kk in ("computations", "overlap_with_full", "mean_influence_ratio")}
                for k, v in result["methods"].items()
            }
        )
    )


if __name__ == "__main__":
    from gs.io import run_cli

    run_cli(main)
