"""Mean and spread of a metric over seeds: the numbers every seed-averaged table reports.

For values ``x_1..x_S`` over ``S`` seeds: the mean, the sample standard deviation (``ddof = 1``; NaN for
one seed), and the min and max. NaN values (a metric a seed could not measure) are left out and counted apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

STATS = ("mean", "sd", "min", "max", "n")


def spread(values: Iterable[Any]) -> dict[str, float]:
    """``{mean, sd, min, max, n}`` of the finite ``values``; all NaN (``n = 0``) if none."""
    x = np.asarray([float(v) for v in values if v is not None], dtype=np.float64)
    x = x[np.isfinite(x)]
    n = int(x.shape[0])
    if n == 0:
        return {**{k: float("nan") for k in STATS if k != "n"}, "n": 0}
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if n > 1 else float("nan")
    return {"mean": mean, "sd": sd, "min": float(x.min()), "max": float(x.max()), "n": n}


def summarise(frame: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """One row per group of ``by``: ``<metric>_<stat>`` for every metric and :data:`STATS` (``n`` once, as
    ``seeds``: the largest count of finite values of any metric in the group), groups in first-seen order."""
    rows = []
    for key, group in frame.groupby(by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(by, key, strict=True))
        counts = []
        for m in metrics:
            s = spread(group[m])
            counts.append(s.pop("n"))
            row.update({f"{m}_{k}": v for k, v in s.items()})
        row["seeds"] = max(counts) if counts else 0
        rows.append(row)
    return pd.DataFrame(rows)


def fmt_spread(mean: float, sd: float, low: float, high: float, digits: int = 3) -> str:
    """``"m ± sd [low, high]"`` for a Markdown cell; ``"n/a"`` without a mean; no ``± sd`` for one seed."""
    if not np.isfinite(mean):
        return "n/a"
    out = f"{mean:.{digits}f}"
    if np.isfinite(sd):
        out += f" ± {sd:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
    return out
