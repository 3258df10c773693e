"""Argument checks shared by every stage: each user error is one :class:`gs.io.InputError` line."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from gs.io import InputError


def int_param(value: Any, name: str, *, minimum: int) -> int:
    # bool is an Integral; a YAML ``true`` must not become a budget of 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def finite_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def float_array(x: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name}: not an array ({e})") from None
    if arr.dtype.kind not in "fiu":
        raise InputError(f"{name}: expected numbers, got dtype {arr.dtype}")
    return arr


def scores_1d(scores: Any, name: str = "scores") -> np.ndarray:
    arr = float_array(scores, name).astype(np.float64, copy=False)
    if arr.ndim != 1:
        raise InputError(f"{name}: expected shape (n,), got {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise InputError(f"{name}: non-finite value {arr[bad[0]]} at index {bad[0]}")
    return arr


def index_array(idx: Any, name: str, n: int | None = None) -> np.ndarray:
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
    n = int_param(n, "n", minimum=1)
    f = finite_float(fraction, what)
    if not 0.0 < f <= 1.0:
        raise InputError(f"{what} must lie in (0, 1], got {f}")
    k = int(f * n + 1e-9)
    if k < 1:
        raise InputError(f"{what} {f} of {n} samples selects none (floor({f} * {n}) = 0)")
    return k
