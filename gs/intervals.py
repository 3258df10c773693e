"""Percentile-bootstrap confidence intervals over evaluation examples (ours; no reference code).

Every table statistic here is a *ratio of sums* over examples, ``sum(num) / sum(den)``: a mean of
per-example scores (``den = 1``) for accuracy-like metrics, and lm-eval's corpus bits per byte
(``num = -loglikelihood / ln 2``, ``den = UTF-8 bytes``) for the likelihood tasks, so that the bootstrap
resamples exactly the estimator the table reports. Several *strata* (domains) give the unweighted mean
of the strata's ratios (the "average over domains" column), bootstrapped by resampling within each
stratum independently (a stratified bootstrap: every replicate keeps each domain's example count).

Resampling follows :func:`scipy.stats.bootstrap` (``method="percentile"``): replicate ``b`` of a
stratum of ``n`` examples draws the indices ``rng.integers(0, n, (B, n))[b]`` from a seeded
:class:`numpy.random.Generator`, and the interval is the ``(1 - c) / 2`` and ``(1 + c) / 2``
percentiles (numpy's linear interpolation) of the replicate statistics. A *paired* interval applies the
same index draws to both systems' examples (matched beforehand by task and example id), so that the
per-example correlation between two systems scored on the same questions cancels out of the
difference. scipy has no stratified bootstrap, hence the few lines here; with one stratum the draws and
percentiles are scipy's (tests/test_intervals.py checks that).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000  # bootstrap replicates (ours)
CONFIDENCE = 0.95  # two-sided interval level (ours)
MIN_EXAMPLES = 2  # fewer examples in a stratum: no interval (one example resamples to a zero-width one) (ours)


@dataclass(frozen=True)
class Interval:
    """A point estimate, its percentile-bootstrap interval ``[low, high]`` and the examples behind it."""

    estimate: float
    low: float
    high: float
    n: int

    def includes(self, value: float = 0.0) -> bool:
        """Whether ``value`` lies in ``[low, high]`` (False for an undefined interval)."""
        return bool(self.low <= value <= self.high)


@dataclass(frozen=True)
class Scores:
    """One system's examples of one stratum: the statistic is ``num.sum() / den.sum()``.

    ``num`` and ``den`` have shape ``(n,)``; ``den`` is all ones for a plain mean.
    """

    num: np.ndarray
    den: np.ndarray

    @classmethod
    def of_mean(cls, values: Sequence[float] | np.ndarray) -> Scores:
        x = np.asarray(values, dtype=float)
        return cls(x, np.ones_like(x))

    def __post_init__(self) -> None:
        if self.num.shape != self.den.shape or self.num.ndim != 1:
            raise ValueError(f"num and den must be equal-length vectors, got {self.num.shape} and {self.den.shape}")

    def __len__(self) -> int:
        return len(self.num)


def _replicates(strata: Sequence[Sequence[Scores]], resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates of each system's mean-over-strata ratio, shape ``(resamples, systems)``.

    ``strata[s][k]`` is system ``k``'s examples in stratum ``s``; the systems of a stratum are paired
    (same length, same order) and share each replicate's index draw.
    """
    total = np.zeros((resamples, len(strata[0])))
    for systems in strata:
        n = len(systems[0])
        idx = rng.integers(0, n, (resamples, n))  # as scipy.stats._resampling._bootstrap_resample
        for k, s in enumerate(systems):
            total[:, k] += s.num[idx].sum(axis=1) / s.den[idx].sum(axis=1)
    return total / len(strata)


def _estimate(systems_by_stratum: Sequence[Sequence[Scores]]) -> np.ndarray:
    """Each system's mean-over-strata ratio on the data themselves, shape ``(systems,)``."""
    return np.mean([[s.num.sum() / s.den.sum() for s in systems] for systems in systems_by_stratum], axis=0)


def _interval(estimate: float, replicates: np.ndarray, n: int, confidence: float) -> Interval:
    alpha = (1 - confidence) / 2
    low, high = np.percentile(replicates, [100 * alpha, 100 * (1 - alpha)])
    return Interval(float(estimate), float(low), float(high), n)


def _usable(strata: Sequence[Sequence[Scores]], least: int) -> bool:
    """Every stratum has ``least`` examples or more, all scores finite."""
    return bool(strata) and all(
        len(s[0]) >= max(least, 1) and all(np.isfinite(x.num).all() and np.isfinite(x.den).all() for x in s)
        for s in strata
    )


def bootstrap_interval(
    strata: Sequence[Scores],
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Interval:
    """Percentile-bootstrap interval of the unweighted mean over ``strata`` of ``sum(num) / sum(den)``.

    One stratum: the plain bootstrap of one domain's statistic; several: the stratified bootstrap of the
    average over domains. A stratum of fewer than :data:`MIN_EXAMPLES` examples or a non-finite score
    gives NaN bounds: no interval rather than a zero-width one (the estimate stays where defined).
    """
    n = sum(len(s) for s in strata)
    cols = [[s] for s in strata]
    if not _usable(cols, MIN_EXAMPLES):
        estimate = float(_estimate(cols)[0]) if _usable(cols, 1) else float("nan")
        return Interval(estimate, float("nan"), float("nan"), n)
    reps = _replicates(cols, resamples, np.random.default_rng(seed))[:, 0]
    return _interval(_estimate(cols)[0], reps, n, confidence)


def paired_interval(
    strata: Sequence[tuple[Scores, Scores]],
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> Interval:
    """Paired percentile-bootstrap interval of ``statistic(a) - statistic(b)``.

    ``strata[s] = (a, b)``: the two systems' scores on the same examples in the same order (length
    ``n_s``); each replicate resamples the example indices once and applies them to both. NaNs as
    :func:`bootstrap_interval` for a stratum under :data:`MIN_EXAMPLES` or a non-finite score.
    """
    for a, b in strata:
        if len(a) != len(b):
            raise ValueError(f"paired scores must be matched example by example, got {len(a)} and {len(b)}")
    n = sum(len(a) for a, _ in strata)
    if not _usable(strata, MIN_EXAMPLES):
        estimate = float(np.subtract(*_estimate(strata))) if _usable(strata, 1) else float("nan")
        return Interval(estimate, float("nan"), float("nan"), n)
    reps = _replicates(strata, resamples, np.random.default_rng(seed))
    est = _estimate(strata)
    return _interval(est[0] - est[1], reps[:, 0] - reps[:, 1], n, confidence)
