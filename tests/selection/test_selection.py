"""Selection pieces on synthetic arrays: LESS influence (gs.selection.less), the bandit
(gs.selection.bandit), baselines, metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gs.checks import count_from_fraction
from gs.io import InputError
from gs.selection.bandit import ESTIMATORS, cluster_ucb
from gs.selection.baselines import mean_influence_ratio, overlap, select_random
from gs.selection.less import adam_precondition, influence_scores, select_full

MEANS = np.array([-0.2, 0.0, 0.1, 0.3, 0.5])
# Exploration per estimator for the synthetic bandit: the official default beta=1 for mean_std, 0.5 for
# UCB1 (exactly UCB1 for rewards in [-1, 1]), and the official bonus-free threshold variants.
SETTINGS = [("mean_std", 1.0), ("mean", 0.5), ("thresh_hard", 0.0), ("thresh_normal", 0.0)]


def _bandit(seed: int, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """5 clusters of 200 samples, shuffled, influence = cluster mean + Gaussian noise."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(5), 200))
    return labels, MEANS[labels] + noise * rng.standard_normal(labels.size)


class Counting:
    """An influence_fn that fails the test if a sample is requested twice or the budget is overrun."""

    def __init__(self, scores: np.ndarray, budget: int) -> None:
        self.scores, self.budget = scores, budget
        self.seen: set[int] = set()
        self.calls = 0

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        self.calls += 1
        assert idx.ndim == 1 and idx.size >= 1
        new = set(idx.tolist())
        assert len(new) == idx.size, "the same sample twice in one call"
        assert not new & self.seen, "a sample requested again"
        self.seen |= new
        assert len(self.seen) <= self.budget, "budget exceeded"
        return self.scores[idx]


# ------------------------------------------------------------------------------------------------
# ClusterUCB on a synthetic bandit
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("estimator", "exploration"), SETTINGS)
def test_bandit_pulls_concentrate_on_the_best_clusters(estimator, exploration):
    overlaps, random_overlaps = [], []
    for seed in range(3):
        labels, scores = _bandit(seed)
        res = cluster_ucb(
            labels,
            lambda i, s=scores: s[i],
            budget=200,
            cold_start=5,
            exploration=exploration,
            keep=20,
            estimator=estimator,
            seed=seed,
        )
        assert res.n_computations == 200
        assert res.cold_start_per_cluster.tolist() == [5] * 5
        assert int(np.argmax(res.pulls_per_cluster)) == 4  # the best arm gets the most pulls
        post = res.pulls_per_cluster - res.cold_start_per_cluster
        assert post[3:].sum() > 0.5 * post.sum()  # the top-2 arms get most post-cold-start pulls
        truth = select_full(scores, 20)
        overlaps.append(overlap(res.selected, truth))
        random_overlaps.append(overlap(select_random(1000, 20, seed), truth))
    # Random selection recovers ~k/n = 2% of the true top-20; ClusterUCB far more.
    assert np.mean(overlaps) >= np.mean(random_overlaps) + 0.4


def test_selected_is_the_best_of_the_drawn_best_first():
    labels, scores = _bandit(0)
    res = cluster_ucb(labels, lambda i: scores[i], budget=150, cold_start=5, exploration=1.0, keep=30, seed=1)
    np.testing.assert_array_equal(res.influences, scores[res.drawn])
    assert np.all(np.diff(res.selected_influences) <= 0)
    assert set(res.selected.tolist()) <= set(res.drawn.tolist())
    assert res.selected_influences.min() >= np.sort(res.influences)[-30]
    np.testing.assert_array_equal(res.selected_influences, scores[res.selected])
    # kept_mean of the last round is the mean of the final selection.
    assert res.history[-1].kept_mean == pytest.approx(res.selected_influences.mean())


# ------------------------------------------------------------------------------------------------
# Budget accounting
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("draw_size", [1, 3, 7])
@pytest.mark.parametrize("budget", [13, 37, 100, 500])
def test_budget_is_never_exceeded_and_no_sample_is_drawn_twice(budget, draw_size, estimator):
    rng = np.random.default_rng(budget * 10 + draw_size)
    # Unequal clusters, one smaller than the cold start; 119 samples in all.
    labels = rng.permutation(np.repeat(np.arange(4), [2, 17, 40, 60]))
    scores = rng.uniform(-1, 1, labels.size)
    fn = Counting(scores, budget)
    res = cluster_ucb(
        labels,
        fn,
        budget=budget,
        cold_start=3,
        exploration=0.7,
        keep=min(5, budget),
        draw_size=draw_size,
        estimator=estimator,
        seed=0,
    )
    assert res.n_computations == len(fn.seen) == len(res.drawn) == min(budget, labels.size)
    assert len(set(res.drawn.tolist())) == len(res.drawn)
    assert fn.calls == len(res.history) - 4 + 1  # one call for the whole cold start, one per round
    np.testing.assert_array_equal(res.pulls_per_cluster, np.bincount(labels[res.drawn], minlength=4))
    assert res.cold_start_per_cluster.tolist() == [2, 3, 3, 3]
    assert all(r.indices.size <= draw_size for r in res.history if r.phase == "ucb")
    assert [r.n_computations for r in res.history] == np.cumsum([r.indices.size for r in res.history]).tolist()
    # An exhausted cluster is never chosen again.
    for r in res.history:
        if r.phase == "ucb":
            assert not math.isnan(r.index_values[r.cluster])


def test_cold_start_fraction_follows_the_official_rule():
    labels = np.repeat(np.arange(3), [10, 50, 3])
    res = cluster_ucb(labels, lambda i: np.zeros(i.size), budget=7, cold_start=0.1, exploration=1, keep=1, seed=0)
    # max(int(size * csp), 1) per cluster: 1, 5, 1.
    assert res.cold_start_per_cluster.tolist() == [1, 5, 1]
    assert res.n_computations == 7


# ------------------------------------------------------------------------------------------------
# The arm indices match their formulas, recomputed from the history
# ------------------------------------------------------------------------------------------------


def _expected_index(recorded: list[list[float]], estimator: str, c: float, p: float) -> tuple[np.ndarray, float]:
    n = np.array([len(r) for r in recorded], dtype=float)
    mu = np.array([np.mean(r) for r in recorded])
    sd = np.array([np.std(r) for r in recorded])  # population std, like np.std in the official code
    bonus = c * np.sqrt(2 * math.log(n.sum()) / n)
    everything = sorted(x for r in recorded for x in r)
    tau = everything[-(int(len(everything) * p) + 1)]
    if estimator == "mean_std":
        return mu + c * sd, tau
    if estimator == "mean":
        return mu + bonus, tau
    if estimator == "thresh_hard":
        return np.array([np.mean(np.array(r) >= tau) for r in recorded]) + bonus, tau
    prob = [
        0.5 * math.erfc((tau - m) / (s * math.sqrt(2))) if s > 0 else float(m >= tau)
        for m, s in zip(mu, sd, strict=True)
    ]
    return np.array(prob) + bonus, tau


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_arm_indices_match_their_formulas(estimator):
    rng = np.random.default_rng(3)
    labels = rng.permutation(np.repeat(np.arange(4), [4, 9, 15, 30]))
    scores = rng.normal(0.1 * labels, 0.2)
    c, p = 0.3, 0.25
    res = cluster_ucb(
        labels,
        lambda i: scores[i],
        budget=45,
        cold_start=2,
        exploration=c,
        keep=5,
        draw_size=2,
        estimator=estimator,
        seed=0,
        threshold_p=p,
    )
    recorded: list[list[float]] = [[] for _ in range(4)]
    n_ucb = 0
    for r in res.history:
        if r.phase == "ucb":
            n_ucb += 1
            live = np.array([len(recorded[j]) < np.sum(labels == j) for j in range(4)])
            expected, tau = _expected_index(recorded, estimator, c, p)
            np.testing.assert_allclose(r.index_values[live], expected[live], rtol=1e-9, atol=1e-12)
            assert np.isnan(r.index_values[~live]).all()
            if estimator.startswith("thresh"):
                assert r.threshold == tau
            if not r.fallback:
                assert r.cluster == int(np.argmax(np.where(live, expected, -np.inf)))
        recorded[r.cluster].extend(r.influences.tolist())
    assert n_ucb > 5


def test_mean_std_is_the_official_mean_plus_beta_std():
    # Cluster 0 always returns 0.3 (no spread); cluster 1 returns 0.0, 0.4, 0.0, ... in draw order, whichever
    # samples are drawn (mean 0.2, population std 0.2 after the cold start). beta decides.
    labels = np.array([0] * 10 + [1] * 10)
    pick = {}
    for beta in (0.0, 1.0):
        sequence = [0.0, 0.4] * 5

        def fn(idx, seq=sequence):
            return np.array([0.3 if labels[i] == 0 else seq.pop(0) for i in idx])

        res = cluster_ucb(labels, fn, budget=5, cold_start=2, exploration=beta, keep=1, seed=0)
        assert res.history[2].index_values.tolist() == pytest.approx([0.3, 0.2 + beta * 0.2])
        pick[beta] = res.history[2].cluster
    assert pick == {0.0: 0, 1.0: 1}


def test_threshold_estimators_fall_back_to_the_largest_recorded_influence():
    # Cluster 0 (one sample, influence 1.0) is exhausted by the cold start and holds the threshold, so no
    # live cluster has anything above it: the official fallback picks the live cluster with the top value.
    labels = np.array([0, 1, 1, 1, 2, 2, 2])
    scores = np.array([1.0, -0.5, -0.6, -0.7, -0.1, -0.2, -0.3])
    for estimator in ("thresh_hard", "thresh_normal"):
        res = cluster_ucb(
            labels,
            lambda i: scores[i],
            budget=4,
            cold_start=1,
            exploration=0,
            keep=1,
            estimator=estimator,
            seed=0,
        )
        last = res.history[-1]
        assert last.phase == "ucb" and last.fallback and last.threshold == 1.0
        assert last.cluster == 2  # its cold-start draw (-0.1..-0.3) beats cluster 1's (-0.5..-0.7)


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


def _run(labels=None, fn=None, **kw):
    labels = np.repeat(np.arange(3), 10) if labels is None else labels
    args = dict(budget=20, cold_start=2, exploration=1.0, keep=5, seed=0)
    args.update(kw)
    return cluster_ucb(labels, fn or (lambda i: np.zeros(i.size)), **args)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(labels=np.array([0, 0, 2, 2])), "cluster 1 has no samples"),
        (dict(labels=np.array([0, 1, 1]), n_clusters=3), "cluster 2 has no samples"),
        (dict(budget=5, cold_start=2), "budget 5 is smaller than the cold start: 2 samples from each of 3"),
        (dict(keep=21), "keep 21 exceeds the budget 20"),
        (dict(keep=0), "keep must be >= 1"),
        (dict(exploration=-0.1), "exploration must be >= 0"),
        (dict(estimator="ucb2"), "estimator must be one of"),
        (dict(cold_start=0), "cold_start must be >= 1"),
        (dict(cold_start=1.5), "cold_start as a fraction"),
        (dict(labels=np.array([0.0, 1.0])), "integer cluster ids"),
        (dict(labels=np.array([0, -1])), "must be >= 0"),
        (dict(labels=np.array([0, 3]), n_clusters=2), "out of range"),
        (dict(fn=lambda i: np.where(i == i.max(), np.nan, 0.0)), "non-finite influence (nan)"),
        (dict(fn=lambda i: np.zeros((i.size, 1))), "influence_fn returned shape"),
        (dict(fn=lambda i: np.zeros(i.size + 1)), "influence_fn returned shape"),
    ],
)
def test_cluster_ucb_errors_name_their_cause(kwargs, message):
    with pytest.raises(InputError) as err:
        _run(**kwargs)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_budget_error_states_both_numbers():
    with pytest.raises(InputError, match=r"budget 8 .* 3 samples from each of 4 clusters need 12"):
        _run(labels=np.repeat(np.arange(4), 5), budget=8, cold_start=3, keep=2)


# ------------------------------------------------------------------------------------------------
# Determinism
# ------------------------------------------------------------------------------------------------


def test_cluster_ucb_is_deterministic_under_seed():
    labels, scores = _bandit(5)
    kw = dict(budget=120, cold_start=4, exploration=1.0, keep=10, draw_size=3)
    a = cluster_ucb(labels, lambda i: scores[i], seed=11, **kw)
    b = cluster_ucb(labels, lambda i: scores[i], seed=11, **kw)
    c = cluster_ucb(labels, lambda i: scores[i], seed=12, **kw)
    np.testing.assert_array_equal(a.drawn, b.drawn)
    np.testing.assert_array_equal(a.selected, b.selected)
    assert a.to_dict() == b.to_dict()
    assert not np.array_equal(a.drawn, c.drawn)
    np.testing.assert_array_equal(select_random(100, 10, 3), select_random(100, 10, 3))


def test_to_dict_is_strict_json():
    labels = np.repeat(np.arange(3), [2, 8, 50])
    scores = np.linspace(-1, 1, labels.size)
    res = cluster_ucb(labels, lambda i: scores[i], budget=60, cold_start=2, exploration=1.0, keep=5, seed=0)
    assert any(np.isnan(r.index_values).any() for r in res.history if r.phase == "ucb")
    out = json.loads(json.dumps(res.to_dict(), allow_nan=False))  # exhausted clusters' NaN become null
    assert out["n_computations"] == 60 and len(out["history"]) == len(res.history)
    assert out["pulls_per_cluster"] == [2, 8, 50]


# ------------------------------------------------------------------------------------------------
# Influence (LESS)
# ------------------------------------------------------------------------------------------------


def test_influence_is_cosine_to_the_target_direction():
    target = np.array([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0]])  # one direction, two magnitudes
    train = np.array([[2.0, 4.0, 0.0], [-1.0, -2.0, 0.0], [0.0, 0.0, 5.0], [0.0, 0.0, 0.0]])
    for reduction in ("mean_cosine", "cosine_to_mean"):
        with np.errstate(all="raise"):
            s = influence_scores(train, target, target_reduction=reduction)
        np.testing.assert_allclose(s, [1.0, -1.0, 0.0, 0.0], atol=1e-12)  # zero row -> 0, no NaN


def test_mean_cosine_is_less_and_differs_from_cosine_to_mean():
    target = np.array([[1.0, 0.0], [0.0, 2.0]])
    train = np.array([[1.0, 0.0]])
    # LESS: mean of cosines = (1 + 0) / 2; cosine to the mean [0.5, 1]: 0.5 / sqrt(1.25).
    assert influence_scores(train, target)[0] == pytest.approx(0.5)
    assert influence_scores(train, target, target_reduction="cosine_to_mean")[0] == pytest.approx(0.5 / math.sqrt(1.25))


def test_target_groups_take_the_max_over_subtasks():
    target = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    train = np.array([[0.0, 1.0], [1.0, 1.0]])
    s = influence_scores(train, target, target_groups=np.array([0, 0, 1]))
    np.testing.assert_allclose(s, [1.0, 1 / math.sqrt(2)])
    # Without groups: mean over the three validation samples.
    np.testing.assert_allclose(influence_scores(train, target), [1 / 3, 1 / math.sqrt(2)])


def test_checkpoints_are_summed_with_renormalised_weights():
    train1, target1 = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 0.0]])
    train2, target2 = np.array([[1.0, 1.0], [0.0, 1.0]]), np.array([[0.0, 1.0]])
    s1 = influence_scores(train1, target1)
    s2 = influence_scores(train2, target2)
    np.testing.assert_allclose(s1, [1.0, 0.0])
    np.testing.assert_allclose(s2, [1 / math.sqrt(2), 1.0])
    # Learning-rate-like weights 3e-5 and 1e-5 renormalise to 0.75 and 0.25.
    both = influence_scores([train1, train2], [target1, target2], checkpoint_weights=[3e-5, 1e-5])
    np.testing.assert_allclose(both, 0.75 * s1 + 0.25 * s2)
    stacked = influence_scores(np.stack([train1, train2]), np.stack([target1, target2]))
    np.testing.assert_allclose(stacked, 0.5 * s1 + 0.5 * s2)


def test_influence_chunking_does_not_change_the_result():
    rng = np.random.default_rng(0)
    train, target = rng.normal(size=(50, 8)), rng.normal(size=(6, 8))
    np.testing.assert_allclose(
        influence_scores(train, target, chunk_size=7), influence_scores(train, target), rtol=1e-12
    )


def test_influence_errors():
    with pytest.raises(InputError, match="d=3 but target_grads d=2"):
        influence_scores(np.ones((2, 3)), np.ones((1, 2)))
    with pytest.raises(InputError, match="zero vector"):
        influence_scores(np.ones((2, 2)), np.zeros((3, 2)))
    with pytest.raises(InputError, match="non-finite values in row 1"):
        influence_scores(np.array([[1.0, 0.0], [np.inf, 0.0]]), np.ones((1, 2)))
    with pytest.raises(InputError, match="2 weights for 1 checkpoints"):
        influence_scores(np.ones((2, 2)), np.ones((1, 2)), checkpoint_weights=[1, 2])


def test_adam_preconditioning_matches_a_hand_computed_case():
    g = np.array([[1.0, -2.0], [0.0, 0.0]])
    m = np.array([0.5, 0.0])
    v = np.array([0.25, 1.0])
    # m' = 0.9 m + 0.1 g; v' = 0.999 v + 0.001 g^2; m' / sqrt(v' + 1e-8) (LESS: eps inside, no bias fix).
    expected = np.array(
        [
            [0.55 / math.sqrt(0.25075 + 1e-8), -0.2 / math.sqrt(1.003 + 1e-8)],
            [0.45 / math.sqrt(0.24975 + 1e-8), 0.0 / math.sqrt(0.999 + 1e-8)],
        ]
    )
    np.testing.assert_allclose(adam_precondition(g, m, v), expected, rtol=1e-12)
    # torch.optim.Adam's placement of eps, as an option.
    np.testing.assert_allclose(
        adam_precondition(g[0], m, v, eps_inside_sqrt=False)[0],
        0.55 / (math.sqrt(0.25075) + 1e-8),
        rtol=1e-12,
    )
    assert adam_precondition(g.astype(np.float32), m, v.astype(np.float32)).dtype == np.float64
    assert adam_precondition(g.astype(np.float32), m.astype(np.float32), v.astype(np.float32)).dtype == np.float32
    with pytest.raises(InputError, match="expected shape \\(2,\\)"):
        adam_precondition(g, m[:1], v)
    with pytest.raises(InputError, match="negative"):
        adam_precondition(g, m, -v)


# ------------------------------------------------------------------------------------------------
# Baselines and report metrics
# ------------------------------------------------------------------------------------------------


def test_select_full_is_top_k_best_first_with_stable_ties():
    scores = np.array([0.1, 0.5, 0.3, 0.5, -1.0])
    np.testing.assert_array_equal(select_full(scores, 3), [1, 3, 2])
    np.testing.assert_array_equal(select_full(scores, fraction=0.4), [1, 3])
    with pytest.raises(InputError, match="exactly one"):
        select_full(scores, 2, fraction=0.4)
    with pytest.raises(InputError, match="exceeds the pool"):
        select_full(scores, 6)
    with pytest.raises(InputError, match="non-finite"):
        select_full(np.array([0.0, np.nan]), 1)


def test_count_from_fraction_floors_like_less_without_float_round_down():
    assert count_from_fraction(100, 0.29) == 29  # int(0.29 * 100) alone would give 28
    assert count_from_fraction(1000, 0.05) == 50
    assert count_from_fraction(99, 0.05) == 4
    with pytest.raises(InputError, match="selects none"):
        count_from_fraction(10, 0.05)


def test_select_random():
    idx = select_random(50, 20, 0)
    assert idx.size == 20 and len(set(idx.tolist())) == 20 and idx.min() >= 0 and idx.max() < 50
    assert np.all(np.diff(idx) > 0)
    with pytest.raises(InputError, match="exceeds the pool"):
        select_random(5, 6, 0)


def test_overlap_and_mean_influence_ratio():
    assert overlap(np.array([1, 2, 3]), np.array([2, 3, 4, 5])) == 0.5
    assert overlap(np.array([], dtype=int), np.array([1])) == 0.0
    scores = np.array([0.0, 0.2, 0.4, 0.6])
    assert mean_influence_ratio(np.array([1, 2]), np.array([2, 3]), scores) == pytest.approx(0.3 / 0.5)
    with pytest.raises(InputError, match="empty"):
        overlap(np.array([1]), np.array([], dtype=int))
    with pytest.raises(InputError, match="<= 0"):
        mean_influence_ratio(np.array([1]), np.array([0]), scores)
