"""ClusterUCB as its authors run it: own clustering, on-demand influence, compute charged, budget curve.

The on-demand tests run the tiny model: every influence a ClusterUCB run draws must equal the full LESS
pass's value for that sample (gs.selection.influence, computed independently of gs.selection.on_demand's call path),
and the
per-sample gradients it computed must equal what gs.selection.accounting charges, counted by hand here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gs.io import InputError
from gs.selection.accounting import clusterucb_charge, draws_for_total, full_charge
from gs.selection.bandit import REFERENCE_NAMES, cluster_ucb
from gs.selection.baselines import draw_random, draw_uniform_over_clusters
from gs.selection.budget_curve import budget_curve, summarise_curve
from gs.selection.select import SelectionInputs, select_for_target
from gs.selection.ucb_clustering import kmeans_cosine

LRS = [3.0e-4, 1.0e-4]


def _record(i: str, domain: str, q: str, a: str) -> dict:
    return {"id": i, "domain": domain, "instruction": q, "input": "", "output": a}


POOL = [
    _record("a", "math", "Add 2 and 3.", "5"),
    _record("b", "writing", "Write one line about rain.", "Rain taps softly on the roof."),
    _record("c", "code", "Write a Python function that doubles x.", "def double(x):\n    return 2 * x"),
    _record("d", "math", "What is 7 times 6?", "42"),
    _record("e", "writing", "Describe the sea.", "The sea rolls grey and wide."),
    _record("f", "math", "Subtract 9 from 20.", "11"),
    _record("g", "code", "Return the last item of a list.", "def last(xs):\n    return xs[-1]"),
    _record("h", "writing", "A line about wind.", "The wind hums in the wires."),
]
VALIDATION = [_record("m1", "math", "Subtract 4 from 10.", "6"), _record("m2", "math", "Half of 8?", "4")]
GRAD_PARAMS = {"batch_size": 3, "max_length": 40, "influence": {"projection_dim": None}}


# --------------------------------------------------------------------------- arrays only


def _reference_kmeans(x: np.ndarray, k: int, iters: int, seed: int) -> np.ndarray:
    """kmeans_clustering.py's KMeans_cosine written out in numpy (same initial rows)."""
    c = x[np.random.default_rng(seed).choice(x.shape[0], size=k, replace=False)].copy()
    for _ in range(iters):
        cl = np.argmax(x @ c.T, axis=1)
        c = np.zeros_like(c)
        for i, j in enumerate(cl):
            c[j] += x[i]
        norms = np.linalg.norm(c, axis=1, keepdims=True)
        c = np.divide(c, norms, out=np.zeros_like(c), where=norms > 0)
    return cl


def test_cosine_kmeans_matches_the_reference_loop_and_finds_directional_clusters():
    rng = np.random.default_rng(0)
    axes = np.eye(6)[:3]
    truth = rng.integers(0, 3, 120)
    x = axes[truth] + 0.2 * rng.standard_normal((120, 6))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for seed in range(4):
        labels, centres = kmeans_cosine(torch.from_numpy(x), 5, 20, seed)
        np.testing.assert_array_equal(labels, _reference_kmeans(x, 5, 20, seed))
        assert np.allclose(np.linalg.norm(centres.numpy(), axis=1), 1.0)
    labels, _ = kmeans_cosine(torch.from_numpy(x), 3, 20, 1)
    # Three well-separated directions: each found cluster is one true cluster (up to naming).
    assert all(len(set(truth[labels == j])) == 1 for j in np.unique(labels))
    with pytest.raises(InputError, match="exceeds"):
        kmeans_cosine(torch.from_numpy(x), 121, 20, 0)


def test_charges_counted_by_hand():
    # Full LESS: 96 samples x 2 checkpoints.
    assert full_charge(96, 2, 16).total == 192
    # ClusterUCB whose clustering checkpoint is one of the 2: 96 + (8 cold + 40 UCB) x 1 = 144 = 0.75 of full.
    c = clusterucb_charge(96, 8, 40, 1, 16)
    assert (c.total, c.to_dict(192)["ratio_vs_full"]) == (144, 0.75)
    # Reference paper setting: step-20 clustering (covers no checkpoint) + 0.2 n draws at 4 checkpoints.
    assert clusterucb_charge(1000, 0, 200, 4, 0).total == 1800
    assert draws_for_total(100, 96, 1, 96) == 4 and draws_for_total(50, 96, 1, 96) == 0
    assert draws_for_total(200, 96, 0, 96) == 96


def test_uniform_over_clusters_draws_round_robin_and_random_keeps_best_of_draws():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 7)
    scores = np.arange(20, dtype=float)
    for seed in range(5):
        kept = draw_uniform_over_clusters(scores, labels, 12, 12, seed)
        # 12 draws round-robin over sizes (10, 3, 7), clusters in id order: 4 full rounds would need 12 but
        # the 3-sample cluster runs out after 3, so rounds 4 and 5 go to clusters 0, 2 and then 0.
        assert np.bincount(labels[kept], minlength=3).tolist() == [5, 3, 4]
        best = draw_random(scores, 8, 3, seed)
        drawn = np.random.default_rng(seed).choice(20, size=8, replace=False)
        assert sorted(best.tolist()) == sorted(np.sort(drawn)[-3:].tolist())


def test_zero_cold_start_is_the_reference_first_visit_of_every_arm():
    labels = np.repeat(np.arange(4), 5)
    r = cluster_ucb(labels, lambda i: np.zeros(i.size), budget=6, cold_start=0.0, exploration=1.0, keep=2, seed=0)
    assert r.cold_start_per_cluster.tolist() == [1, 1, 1, 1]
    assert r.n_computations == 6
    r2 = cluster_ucb(labels, lambda i: np.zeros(i.size), budget=6, cold_start=1, exploration=1.0, keep=2, seed=0)
    np.testing.assert_array_equal(r.drawn, r2.drawn)
    assert set(REFERENCE_NAMES) == {"ucb_beta", "ucb1", "ucb_threshhard", "ucb_threshnormal"}


@pytest.mark.parametrize("estimator", ["ucb_beta", "ucb1", "ucb_threshhard", "ucb_threshnormal"])
@pytest.mark.parametrize(("draw_size", "lookahead"), [(1, 4), (1, 9), (3, 5)])
def test_lookahead_draws_what_one_call_a_pull_draws_and_charges_what_it_computes_ahead(estimator, draw_size, lookahead):
    """Computing a cluster's next samples ahead changes nothing the bandit sees: the same draws, rewards and
    selection as one influence call a pull. Counted from the calls themselves: each call after the cold
    start is a run of one cluster, no sample is computed twice, and those never drawn are at most
    K (max(draw_size, lookahead) - draw_size)."""
    rng = np.random.default_rng(7)
    n, k = 90, 5
    labels = rng.integers(0, k, n)
    scores = rng.standard_normal(n) + 0.5 * labels  # clusters differ, so the bandit switches arms
    kw = {"budget": 50, "cold_start": 1, "exploration": 1.0, "keep": 10, "seed": 3, "estimator": estimator}
    one = cluster_ucb(labels, lambda i: scores[i], draw_size=draw_size, **kw)
    calls: list[np.ndarray] = []

    def record(i: np.ndarray) -> np.ndarray:
        calls.append(i.copy())
        return scores[i]

    ahead = cluster_ucb(labels, record, draw_size=draw_size, lookahead=lookahead, **kw)
    np.testing.assert_array_equal(ahead.drawn, one.drawn)
    np.testing.assert_array_equal(ahead.influences, one.influences)
    np.testing.assert_array_equal(ahead.selected, one.selected)
    assert [r.cluster for r in ahead.history] == [r.cluster for r in one.history]
    computed = np.concatenate(calls)
    assert computed.size == len(set(computed.tolist())) == ahead.n_evaluated
    assert set(ahead.drawn.tolist()) <= set(computed.tolist())
    assert all(len(set(labels[c].tolist())) == 1 for c in calls[1:])  # calls[0]: the cold start, every cluster
    assert len(calls) < len(one.history)  # fewer, larger calls
    unused = ahead.n_evaluated - ahead.n_computations
    assert 0 <= unused <= k * (max(draw_size, lookahead) - draw_size)
    assert one.n_evaluated == one.n_computations == 50


def test_lookahead_is_capped_by_the_budget_and_the_cluster_counted_by_hand():
    # Cluster 0 (6 samples) always wins (influence 1 against 0). Cold start: one call of 2 (one per cluster).
    # Budget 8, lookahead 4: the first pull computes cluster 0's next 4 (budget left 6), the next three take
    # them, the fifth (budget left 2) computes the last 1 of cluster 0, which is then exhausted, and the
    # sixth computes 1 of cluster 1: calls of 2, 4, 1, 1; nothing computed and left undrawn.
    labels = np.array([0] * 6 + [1] * 6)
    scores = (labels == 0).astype(float)
    kw = {"cold_start": 1, "exploration": 1.0, "keep": 2, "seed": 0}

    def run(budget: int, lookahead: int) -> tuple[list[int], object]:
        sizes: list[int] = []
        r = cluster_ucb(
            labels, lambda i: (sizes.append(i.size), scores[i])[1], budget=budget, lookahead=lookahead, **kw
        )
        return sizes, r

    sizes, r = run(8, 4)
    assert sizes == [2, 4, 1, 1]
    assert (r.n_computations, r.n_evaluated) == (8, 8)
    assert r.pulls_per_cluster.tolist() == [6, 2]
    # Budget 4 (left 2 after the cold start): the first pull computes 2, not 4.
    sizes, r = run(4, 4)
    assert sizes == [2, 2] and r.n_evaluated == 4
    with pytest.raises(InputError, match="lookahead"):
        run(4, 0)


def test_budget_curve_is_infeasible_below_the_clustering_pass_and_charges_draws():
    rng = np.random.default_rng(1)
    n = 40
    scores = rng.standard_normal(n)
    labels = {4: np.arange(n) % 4}
    kw = {"cold_start": 1, "exploration": 1.0, "draw_size": 1, "estimator": "ucb_beta"}
    curve = budget_curve(scores, 2, 1, labels, keep=5, fractions=[0.25, 0.6, 1.0], seeds=[0, 1], bandit=kw)
    ucb = curve[curve.method == "clusterucb"].set_index(["budget_fraction", "seed"])
    # Total 0.25 * 80 = 20 < the clustering pass of 40: infeasible.
    assert not ucb.loc[(0.25, 0), "feasible"]
    # Total 0.6 * 80 = 48: 40 for clustering, 8 draws at 1 unit each.
    assert ucb.loc[(0.6, 0), "draws"] == 8 and ucb.loc[(0.6, 0), "total_computations"] == 48
    rnd = curve[curve.method == "random"].set_index(["budget_fraction", "seed"])
    assert rnd.loc[(0.25, 0), "draws"] == 10  # 20 units at 2 checkpoints each
    # Total = full LESS: every random draw reads every sample -> the full top set exactly.
    assert rnd.loc[(1.0, 1), "overlap_with_full"] == 1.0
    summary = summarise_curve(curve)
    row = summary[(summary.method == "clusterucb") & (summary.budget_fraction == 0.6)].iloc[0]
    per_seed = curve[(curve.method == "clusterucb") & (curve.budget_fraction == 0.6)]["overlap_with_full"]
    assert row.seeds == 2 and np.isclose(row.overlap_std, np.std(per_seed.to_numpy()))


def test_select_for_target_charges_without_a_model():
    rng = np.random.default_rng(2)
    n = 48
    pc = rng.standard_normal((2, n))
    labels = np.arange(n) % 6
    inputs = SelectionInputs(pc, np.array([0.5, 0.5]), labels, 0, 4, {"gradientspace": np.arange(n) % 3})
    params = {
        "keep_fraction": 0.25,
        "budget_fraction": 0.5,
        "cold_start": 1,
        "exploration": 1.0,
        "estimator": "ucb_beta",
        "dynamic": True,
        "curve_seeds": 2,
    }
    r = select_for_target(inputs, params, 0)
    m = r["methods"]
    assert m["full"]["computations"] == 96
    assert m["clusterucb"]["computations"] == 48 + 24 * 1  # clustering + 24 draws at the uncovered checkpoint
    assert m["clusterucb_gradientspace"]["computations"] == 48 + 24 * 2
    assert m["clusterucb_dynamic"]["computations"] == 48 + 24  # full LESS at the covered one, bandit at the other
    assert m["random"]["computations"] == 0
    assert {row["rule"] for row in r["ablation"]} == set(REFERENCE_NAMES)
    # lookahead: the same selections; the samples computed ahead and never drawn are charged on top
    # (at most 6 clusters x 3 at each of the checkpoints a draw needs).
    ahead = select_for_target(inputs, {**params, "lookahead": 4}, 0)["methods"]
    for name in ("clusterucb", "clusterucb_gradientspace", "clusterucb_dynamic"):
        assert ahead[name]["selected"] == m[name]["selected"], name
        extra = ahead[name]["charge"]["ahead"]
        assert ahead[name]["computations"] == m[name]["computations"] + extra, name
        assert m[name]["charge"]["ahead"] == 0
    assert 0 <= ahead["clusterucb"]["charge"]["ahead"] <= 6 * 3
    assert ahead["clusterucb_gradientspace"]["charge"]["ahead"] % 2 == 0  # 2 units a sample (no covered checkpoint)


def test_select_for_target_takes_the_subtask_max_after_the_checkpoint_sum():
    """(C, S_t, n) influences: the score is max_s sum_c w_c x[c, s] (LESS matching.py :75-79), counted by
    hand; a checkpoint alone (Dynamic-ClusterUCB) is max_s x[c, s]; one subtask is the (C, n) case."""
    x2 = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 0.0]]])  # (2, 2, 2)
    two = SelectionInputs(x2, np.array([0.5, 0.5]), np.zeros(2, dtype=np.int64), None, 4)
    np.testing.assert_allclose(two.scores, [0.5, 0.5])  # s0 = [0.5, 0], s1 = [0.5, 0.5]
    assert not np.allclose(two.scores, 0.5 * x2[0].max(axis=0) + 0.5 * x2[1].max(axis=0))  # [1, 0.5]
    np.testing.assert_allclose(two.checkpoint_scores(0), [1.0, 1.0])
    np.testing.assert_allclose(two.checkpoint_scores(1), [1.0, 0.0])
    assert (two.n_checkpoints, two.n) == (2, 2)
    # One subtask: (C, 1, n) is the (C, n) case, the same selection to the last number.
    rng = np.random.default_rng(4)
    pc = rng.standard_normal((2, 24))
    params = {"keep_fraction": 0.25, "budget_fraction": 0.5, "cold_start": 1, "exploration": 1.0, "dynamic": True}
    labels = np.arange(24) % 4
    a = select_for_target(SelectionInputs(pc, np.array([0.75, 0.25]), labels, 0, 3), {**params, "curve_seeds": 1}, 0)
    b = select_for_target(
        SelectionInputs(pc[:, None, :], np.array([0.75, 0.25]), labels, 0, 3), {**params, "curve_seeds": 1}, 0
    )
    assert json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


# --------------------------------------------------------------------------- on the tiny model


@pytest.fixture(scope="module")
def warmup(tiny_model_dir, tmp_path_factory):
    """Two checkpoints of a LoRA on the tiny model, each with Adam moments and a mean lr."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("warmup")
    torch.manual_seed(5)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    rng = np.random.default_rng(1)
    for epoch, lr in enumerate(LRS, start=1):
        with torch.no_grad():
            for _, p in model.named_parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn_like(p))
        ckpt = out / f"checkpoint-{epoch}"
        model.save_pretrained(ckpt)
        d = sum(p.numel() for p in model.parameters() if p.requires_grad)
        torch.save(
            {
                "exp_avg": torch.from_numpy(1e-3 * rng.standard_normal(d)).float(),
                "exp_avg_sq": torch.from_numpy(1e-6 * rng.random(d) ** 2).float(),
            },
            ckpt / "adam_moments.pt",
        )
        (ckpt / "checkpoint.json").write_text(json.dumps({"epoch": epoch, "mean_lr": lr}))
    return out


@pytest.fixture(scope="module")
def full_pass(tiny_model_dir, warmup):
    from gs.selection.influence import compute_influence

    torch.set_num_threads(1)
    return compute_influence(str(tiny_model_dir), str(warmup), POOL, {"math": VALIDATION}, GRAD_PARAMS, seed=0)


@pytest.mark.parametrize(("covered", "lookahead"), [(None, 1), (0, 1), (None, 3)])
def test_on_demand_influence_equals_the_full_pass_and_its_count_equals_the_charge(
    tiny_model_dir, warmup, full_pass, covered, lookahead
):
    from gs.selection.on_demand import OnDemandInfluence

    per_ckpt = full_pass["per_checkpoint"][:, 0, :]  # (C, n)
    known = {} if covered is None else {covered: per_ckpt[covered]}
    fn = OnDemandInfluence(str(tiny_model_dir), str(warmup), POOL, VALIDATION, GRAD_PARAMS, seed=0, known=known)
    labels = np.array([0, 1, 2, 0, 1, 0, 2, 1])
    r = cluster_ucb(labels, fn, budget=5, cold_start=1, exploration=1.0, keep=2, seed=3, lookahead=lookahead)
    # Each drawn influence is the full pass's value for that sample.
    np.testing.assert_allclose(r.influences, full_pass["scores"][0][r.drawn], rtol=1e-4, atol=1e-6)
    # 5 drawn samples (and any computed ahead), at 2 checkpoints, or at 1 when the other is known (the
    # clustering pass's).
    per_draw = 2 if covered is None else 1
    assert r.n_computations == 5 and 5 <= r.n_evaluated <= 5 + 3 * (lookahead - 1)
    assert fn.gradient_computations == r.n_evaluated * per_draw
    assert fn.validation_computations == len(VALIDATION) * per_draw
    # The charge the selection step reports for this run, from gs.selection.accounting.
    cold = int(r.cold_start_per_cluster.sum())
    charge = clusterucb_charge(len(POOL), cold, r.n_computations - cold, per_draw, 0, r.n_evaluated - 5)
    assert charge.total == len(POOL) + fn.gradient_computations


def test_clustering_pass_influence_equals_the_full_pass_at_its_checkpoint(tiny_model_dir, warmup, full_pass):
    from gs.selection.ucb_clustering import clustering_pass

    out = clustering_pass(
        str(tiny_model_dir),
        str(warmup),
        POOL,
        {"math": VALIDATION},
        GRAD_PARAMS,
        {"step": 20, "k": 3, "curve_k": [2]},
        0,
    )
    assert str(out["checkpoint"]) == "checkpoint-1"  # no step-20 folder: the earliest checkpoint, said
    assert "step-20" in str(out["note"])
    np.testing.assert_allclose(out["influence"][0], full_pass["per_checkpoint"][0, 0], rtol=1e-4, atol=1e-6)
    assert int(out["gradient_computations"]) == len(POOL)
    assert out["labels_k3"].shape == (len(POOL),) and set(out["ks"].tolist()) == {2, 3}


def test_warmup_step_checkpoint_equals_the_epoch_checkpoint_at_the_same_step(tiny_model_dir, tokenizer, tmp_path):
    """4 samples at batch 2: epoch 1 ends at step 2, so step-2/ must hold what checkpoint-1/ holds."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from gs.models.lora import LoraSpec, TrainSpec, train_lora

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    spec = TrainSpec(epochs=2, learning_rate=1e-3, batch_size=2, max_length=40, save_steps=[2, 3])
    train_lora(model, tokenizer, POOL[:4], LoraSpec(rank=2, alpha=4), spec, tmp_path / "w", seed=0, checkpoints=True)
    step2, epoch1 = tmp_path / "w" / "step-2", tmp_path / "w" / "checkpoint-1"
    assert (tmp_path / "w" / "step-3" / "adam_moments.pt").is_file()
    a, b = torch.load(step2 / "adam_moments.pt"), torch.load(epoch1 / "adam_moments.pt")
    assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq"))
    wa, wb = load_file(step2 / "adapter_model.safetensors"), load_file(epoch1 / "adapter_model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    meta = json.loads((step2 / "checkpoint.json").read_text())
    assert meta["step"] == 2 and meta["mean_lr"] == json.loads((epoch1 / "checkpoint.json").read_text())["mean_lr"]
    # The clustering picks the step folder when it exists.
    from gs.selection.ucb_clustering import clustering_checkpoint

    assert clustering_checkpoint(tmp_path / "w", 2)[0] == step2
    assert clustering_checkpoint(tmp_path / "w", 20)[0] == epoch1


def test_clustering_and_selection_clis_run_on_demand_and_charge_what_they_compute(
    tiny_model_dir, warmup, full_pass, tmp_path
):
    """The workflow's two steps, in process: gs.selection.ucb_clustering, then gs.selection.select on demand."""
    from gs.io import read_json, write_jsonl
    from gs.selection.select import main as select_main
    from gs.selection.ucb_clustering import main as cluster_main

    write_jsonl(tmp_path / "train.jsonl", POOL)
    write_jsonl(tmp_path / "val.jsonl", VALIDATION)
    with open(tmp_path / "influence.npz", "wb") as f:
        np.savez(f, **full_pass)
    common = ["--model-dir", str(tiny_model_dir), "--warmup", str(warmup), "--train", str(tmp_path / "train.jsonl")]
    cluster_main(
        [*common, "--targets", f"math={tmp_path / 'val.jsonl'}", "--gradients", json.dumps(GRAD_PARAMS)]
        + ["--params", json.dumps({"step": 20, "k": 3, "curve_k": [2]}), "--seed", "0"]
        + ["--out-dir", str(tmp_path / "clusters")]
    )
    params = {
        "keep_fraction": 0.25,
        "budget_fraction": 0.5,
        "cold_start": 1,
        "exploration": 1.0,
        "estimator": "ucb_beta",
        "ucb_clustering": {"step": 20, "k": 3, "curve_k": [2]},
        "budget_curve": [1.0],
        "curve_seeds": 2,
    }
    select_main(
        [
            *common,
            "--influence",
            str(tmp_path / "influence.npz"),
            "--clustering",
            str(tmp_path / "clusters" / "clustering.npz"),
        ]
        + ["--validation", str(tmp_path / "val.jsonl"), "--gradients", json.dumps(GRAD_PARAMS), "--target", "math"]
        + ["--params", json.dumps(params), "--seed", "0", "--out-dir", str(tmp_path / "sel")]
    )
    sel = read_json(tmp_path / "sel" / "selection.json")
    ucb = sel["methods"]["clusterucb"]
    assert ucb["on_demand"] and sel["clustering_covers_checkpoint"] == 0
    # 8 clustered + 4 draws (budget 0.5 of 8) at the one checkpoint the clustering pass did not cover.
    assert ucb["measured_gradient_computations"] == ucb["computations"] == 8 + 4
    assert sel["methods"]["full"]["computations"] == 16
    assert len((tmp_path / "sel" / "clusterucb.jsonl").read_text().splitlines()) == 2
    # Files written before subtasks (no subtask arrays) select the same, to the last number.
    subtask_keys = ("subtask_target", "subtask", "subtask_per_checkpoint", "subtask_scores", "influence_subtask")
    with open(tmp_path / "old_influence.npz", "wb") as f:
        np.savez(f, **{k: v for k, v in full_pass.items() if k not in subtask_keys})
    with np.load(tmp_path / "clusters" / "clustering.npz") as clu, open(tmp_path / "old_clustering.npz", "wb") as f:
        np.savez(f, **{k: clu[k] for k in clu.files if k not in subtask_keys})
    args = [*common, "--influence", str(tmp_path / "old_influence.npz")]
    args += ["--clustering", str(tmp_path / "old_clustering.npz"), "--validation", str(tmp_path / "val.jsonl")]
    args += ["--gradients", json.dumps(GRAD_PARAMS), "--target", "math", "--params", json.dumps(params)]
    select_main([*args, "--seed", "0", "--out-dir", str(tmp_path / "sel_old")])
    assert read_json(tmp_path / "sel_old" / "selection.json") == sel


SUB_VALIDATION = [
    {**VALIDATION[0], "meta": {"subtask": "y"}},
    {**_record("m3", "math", "What is 9 plus 9?", "18"), "meta": {"subtask": "x"}},
    {**VALIDATION[1], "meta": {"subtask": "y"}},
]  # one gradient batch (batch_size 3) holding both subtasks


@pytest.mark.parametrize("covered", [None, 0])
def test_on_demand_subtask_max_equals_the_full_pass(tiny_model_dir, warmup, covered):
    """A target with 2 subtasks: the drawn influences equal the full pass's (the per-subtask checkpoint sum,
    then the max), the known checkpoint read from the clustering pass's per-subtask rows."""
    from gs.selection.influence import compute_influence
    from gs.selection.on_demand import OnDemandInfluence
    from gs.selection.ucb_clustering import clustering_pass

    full = compute_influence(str(tiny_model_dir), str(warmup), POOL, {"math": SUB_VALIDATION}, GRAD_PARAMS, seed=0)
    assert full["subtask"].tolist() == ["x", "y"]
    known = {}
    if covered is not None:
        clu = clustering_pass(
            str(tiny_model_dir), str(warmup), POOL, {"math": SUB_VALIDATION}, GRAD_PARAMS, {"step": 20, "k": 2}, 0
        )
        np.testing.assert_allclose(clu["influence_subtask"], full["subtask_per_checkpoint"][0], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(clu["influence"], full["per_checkpoint"][0], rtol=1e-4, atol=1e-6)
        known = {covered: clu["influence_subtask"][clu["subtask_target"] == 0]}
    fn = OnDemandInfluence(str(tiny_model_dir), str(warmup), POOL, SUB_VALIDATION, GRAD_PARAMS, seed=0, known=known)
    idx = np.array([6, 0, 3, 1])
    np.testing.assert_allclose(fn(idx), full["scores"][0][idx], rtol=1e-4, atol=1e-6)
    assert fn.gradient_computations == idx.size * (2 if covered is None else 1)
    # One checkpoint alone (Dynamic-ClusterUCB's draws): the max over subtasks at that checkpoint.
    one = OnDemandInfluence(
        str(tiny_model_dir), str(warmup), POOL, SUB_VALIDATION, GRAD_PARAMS, seed=0, checkpoints=[1]
    )
    np.testing.assert_allclose(one(idx), full["per_checkpoint"][1, 0][idx], rtol=1e-4, atol=1e-6)
    with pytest.raises(InputError, match=r"expected \(2, 8\)"):
        OnDemandInfluence(
            str(tiny_model_dir), str(warmup), POOL, SUB_VALIDATION, GRAD_PARAMS, seed=0, known={0: np.zeros(8)}
        )


def test_on_demand_draws_in_windows_equal_consecutive_batches_and_the_full_pass(tiny_model_dir, warmup, monkeypatch):
    """ClusterUCB's draws with projection_rows 4 and batch 4 (windows of one batch, as before windows) and with
    16 (the 8 drawn samples in one window, batched by token length, projected in one call): the same scores,
    in the order drawn, equal to the full pass's (which runs in the same windows)."""
    from gs.gradients.projection import Projector
    from gs.selection.influence import compute_influence
    from gs.selection.on_demand import OnDemandInfluence

    calls = []
    project = Projector.project
    monkeypatch.setattr(Projector, "project", lambda self, g: calls.append(g.shape[0]) or project(self, g))
    idx = np.array([6, 0, 3, 1, 5, 2, 7, 4])  # token lengths 50 39 41 44 42 50 44 42 at max_length 64
    got = {}
    for rows in (4, 16):
        params = {**GRAD_PARAMS, "batch_size": 4, "max_length": 64, "projection_rows": rows}
        params["influence"] = {"projection_dim": 32}
        fn = OnDemandInfluence(str(tiny_model_dir), str(warmup), POOL, VALIDATION, params, seed=0)
        calls.clear()
        got[rows] = fn(idx)
        assert calls == ([4, 4] if rows == 4 else [8]) * len(LRS)  # one call a window, per checkpoint
        full = compute_influence(str(tiny_model_dir), str(warmup), POOL, {"math": VALIDATION}, params, seed=0)
        np.testing.assert_allclose(got[rows], full["scores"][0][idx], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got[16], got[4], rtol=1e-5, atol=1e-6)
