"""gs.intervals against independent computations: scipy.stats.bootstrap (same draws, percentile method),
a numpy loop written here for the stratified case, and intervals that must include / exclude 0 by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from gs.intervals import Scores, bootstrap_interval, paired_interval


def _scipy(data, statistic, *, paired=False, seed=0, resamples=2000):
    res = stats.bootstrap(
        data,
        statistic,
        n_resamples=resamples,
        method="percentile",
        paired=paired,
        vectorized=True,
        confidence_level=0.95,
        rng=np.random.default_rng(seed),
    )
    return res.confidence_interval.low, res.confidence_interval.high


def test_one_mean_is_scipys_percentile_bootstrap():
    x = np.random.default_rng(1).binomial(1, 0.4, size=37).astype(float)
    got = bootstrap_interval([Scores.of_mean(x)], seed=7)
    low, high = _scipy((x,), lambda a, axis: a.mean(axis=axis), seed=7)
    assert got.estimate == pytest.approx(x.mean())
    assert (got.low, got.high) == pytest.approx((low, high), abs=1e-12)
    assert got.n == 37 and got.low < x.mean() < got.high


def test_a_ratio_of_sums_is_scipys_paired_bootstrap_of_num_and_den():
    rng = np.random.default_rng(2)
    num, den = rng.gamma(2.0, 30.0, size=25), rng.integers(50, 400, size=25).astype(float)
    got = bootstrap_interval([Scores(num, den)], seed=3)
    low, high = _scipy((num, den), lambda a, b, axis: a.sum(axis=axis) / b.sum(axis=axis), paired=True, seed=3)
    assert got.estimate == pytest.approx(num.sum() / den.sum())
    assert (got.low, got.high) == pytest.approx((low, high), abs=1e-12)


def test_paired_difference_is_scipys_paired_bootstrap():
    rng = np.random.default_rng(4)
    b = rng.binomial(1, 0.5, size=40).astype(float)
    a = np.where(rng.random(40) < 0.2, 1 - b, b)  # a flips 20% of b's answers
    got = paired_interval([(Scores.of_mean(a), Scores.of_mean(b))], seed=5)
    low, high = _scipy((a, b), lambda x, y, axis: x.mean(axis=axis) - y.mean(axis=axis), paired=True, seed=5)
    assert got.estimate == pytest.approx(a.mean() - b.mean())
    assert (got.low, got.high) == pytest.approx((low, high), abs=1e-12)


def test_stratified_average_matches_a_numpy_loop():
    rng = np.random.default_rng(6)
    strata = [rng.random(n) for n in (5, 9, 3)]
    dens = [rng.integers(1, 10, size=len(x)).astype(float) for x in strata]
    got = bootstrap_interval([Scores(x, d) for x, d in zip(strata, dens, strict=True)], resamples=500, seed=11)
    draw = np.random.default_rng(11)
    reps = np.zeros(500)
    for x, d in zip(strata, dens, strict=True):
        idx = draw.integers(0, len(x), (500, len(x)))
        for r in range(500):
            reps[r] += x[idx[r]].sum() / d[idx[r]].sum() / 3
    assert got.estimate == pytest.approx(np.mean([x.sum() / d.sum() for x, d in zip(strata, dens, strict=True)]))
    assert (got.low, got.high) == pytest.approx(tuple(np.percentile(reps, [2.5, 97.5])), abs=1e-12)
    assert got.n == 17


def test_intervals_include_or_exclude_zero_by_construction():
    rng = np.random.default_rng(8)
    b = rng.binomial(1, 0.5, size=60).astype(float)
    # Same answers: every replicate's difference is 0.
    same = paired_interval([(Scores.of_mean(b), Scores.of_mean(b))])
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0) and same.includes(0.0)
    # a is right wherever b is, and on 15 more of the 60: every replicate's difference is >= 0, most > 0.
    wrong = np.flatnonzero(b == 0)
    a = b.copy()
    a[wrong[:15]] = 1.0
    better = paired_interval([(Scores.of_mean(a), Scores.of_mean(b))])
    assert better.estimate == pytest.approx(15 / 60) and better.low > 0 and not better.includes(0.0)
    # Symmetric disagreement: a wins 6 examples, b wins 6; the mean difference is 0 and so inside the interval.
    a = b.copy()
    a[np.flatnonzero(b == 0)[:6]] = 1.0
    a[np.flatnonzero(b == 1)[:6]] = 0.0
    tie = paired_interval([(Scores.of_mean(a), Scores.of_mean(b))])
    assert tie.estimate == 0.0 and tie.low < 0 < tie.high and tie.includes(0.0)
    # Unpaired bootstrap of the same two systems would be far wider: pairing removes the shared variance.
    assert (
        tie.high - tie.low < bootstrap_interval([Scores.of_mean(b)]).high - bootstrap_interval([Scores.of_mean(b)]).low
    )


def test_determinism_bad_pairs_and_undefined_scores():
    x = Scores.of_mean(np.arange(10.0))
    assert bootstrap_interval([x], seed=1) == bootstrap_interval([x], seed=1)
    assert bootstrap_interval([x], seed=1) != bootstrap_interval([x], seed=2)
    with pytest.raises(ValueError, match="matched example by example"):
        paired_interval([(x, Scores.of_mean(np.arange(9.0)))])
    undefined = bootstrap_interval([Scores.of_mean([1.0, np.nan])])
    assert math.isnan(undefined.low) and undefined.n == 2 and not undefined.includes(0.0)
    assert math.isnan(bootstrap_interval([Scores.of_mean([])]).estimate)
    # One example resamples to itself: no interval rather than a zero-width one, also inside a stratified average.
    one = bootstrap_interval([Scores.of_mean([1.0, 0.0, 1.0]), Scores.of_mean([1.0])])
    assert (
        math.isnan(one.low) and math.isnan(one.high) and one.n == 4 and one.estimate == pytest.approx((2 / 3 + 1) / 2)
    )
    single = paired_interval([(Scores.of_mean([1.0]), Scores.of_mean([0.25]))])
    assert math.isnan(single.high) and single.estimate == 0.75
