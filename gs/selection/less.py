"""LESS's scorer on arrays: the Adam-preconditioned training feature, the influence, the full top-k.

LESS, Xia et al., ICML 2024, ``princeton-nlp/LESS`` (read for this module; none of it is copied):
``less/data_selection/collect_grad_reps.py`` (``obtain_gradients_with_adam``: the Adam update direction
of a training sample, computed from the warm-up checkpoint's optimizer state; every gradient row is
L2-normalised before it is stored), ``matching.py`` (influence = normalised training features times
normalised validation gradients, averaged over the validation samples of a subtask, max over subtasks,
summed over checkpoints with weights renormalised to sum to 1; the scripts pass each checkpoint's
average learning rate as its weight) and ``write_selected_data.py`` (top ``int(percentage * N)``).
ClusterUCB (``ZigeW/ClusterUCB``, "modified from LESS") uses the same pieces unchanged
(``data_selection/collect_grad_reps.py``, ``cluster_ucb_select_data.py``: ``matching``).

No model code lives here: gradients come in as arrays (the model side is :mod:`gs.selection.influence`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gs.checks import count_from_fraction, finite_float, float_array, index_array, int_param, scores_1d
from gs.io import InputError

TARGET_REDUCTIONS = ("mean_cosine", "cosine_to_mean")

__all__ = ["TARGET_REDUCTIONS", "adam_precondition", "influence_scores", "select_full"]


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
    g = float_array(grads, "grads")
    m = float_array(exp_avg, "exp_avg")
    v = float_array(exp_avg_sq, "exp_avg_sq")
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
    b1, b2, e = finite_float(beta1, "beta1"), finite_float(beta2, "beta2"), finite_float(eps, "eps")
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
        arrs = [float_array(e, f"{name}[{i}]") for i, e in enumerate(x)]
    else:
        arr = float_array(x, name)
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
    w = scores_1d(weights, "checkpoint_weights")
    if w.size != n_ckpt:
        raise InputError(f"checkpoint_weights: {w.size} weights for {n_ckpt} checkpoints")
    if (w < 0).any() or w.sum() <= 0:
        raise InputError(f"checkpoint_weights must be >= 0 with a positive sum, got {w.tolist()}")
    # LESS matching.py renormalises the weights to sum to 1, which keeps scores in [-1, 1].
    return w / w.sum()


def target_directions(
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
    chunk = int_param(chunk_size, "chunk_size", minimum=1)
    trains = _checkpoints(train_features, "train_features")
    targets = _checkpoints(target_grads, "target_grads")
    if len(trains) != len(targets):
        raise InputError(f"{len(trains)} checkpoints of train_features but {len(targets)} of target_grads")
    weights = _checkpoint_weights(checkpoint_weights, len(trains))
    n = trains[0].shape[0]
    if target_groups is None:
        group_of, n_groups = None, 1
    else:
        labels = index_array(target_groups, "target_groups")
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
        t = target_directions(v, g, n_groups, target_reduction, c, chunk)
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


def _k_of(n: int, k: int | None, fraction: float | None) -> int:
    if (k is None) == (fraction is None):
        raise InputError("give exactly one of k and fraction")
    if k is not None:
        k = int_param(k, "k", minimum=1)
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
    s = scores_1d(scores)
    kk = _k_of(s.size, k, fraction)
    return np.argsort(-s, kind="stable")[:kk].astype(np.int64)
