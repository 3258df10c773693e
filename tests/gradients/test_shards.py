"""Sharded gradient passes (gs.gradients.shards): slices, merges of Brand and FD states against numpy's SVD, and
sharded (S = 2, 3) versus single extraction and coherence on the tiny model with the test config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from gs.cluster.coherence import cluster_gradient_sums, coherence_shard, merge_coherence
from gs.cluster.features import load_features
from gs.cluster.methods import ClusterInputs, cluster
from gs.gradients.extraction import extract_features
from gs.gradients.passes import shard_bounds
from gs.gradients.shards import (
    extract_shard,
    merge_basis,
    merge_brand,
    merge_frequent_directions,
    merge_shards,
    shard_coordinates,
)
from gs.gradients.svd import BrandSVD, FrequentDirections, principal_angles
from gs.gradients.warmup import run_warmup
from gs.io import InputError, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
TEST_CONFIG = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
GRADIENTS = {k: v for k, v in TEST_CONFIG["gradients"].items() if k != "shards"}

PROMPTS = [
    ("math", "Add 2 and 3.", "5"),
    ("math", "What is 7 times 6?", "42"),
    ("math", "Subtract 4 from 10.", "6"),
    ("math", "Halve 18.", "9"),
    ("math", "What is 12 plus 30?", "42"),
    ("writing", "Write one line about rain.", "Rain taps softly on the roof at night."),
    ("writing", "Describe the sea in a sentence.", "The sea rolls grey and wide under the clouds."),
    ("writing", "One sentence about autumn.", "Leaves fall red and gold along the quiet lane."),
    ("writing", "Describe a city at dawn.", "Streetlights fade as the first buses hum past."),
    ("code", "Write a Python function that doubles x.", "def double(x):\n    return 2 * x"),
    ("code", "Return the length of a list in Python.", "def size(xs):\n    return len(xs)"),
    ("code", "Python: square a number.", "def square(x):\n    return x * x"),
    ("code", "Python: sum a list.", "def total(xs):\n    return sum(xs)"),
    ("finance", "A $100 deposit earns 5% simple interest for 2 years. Interest?", "10.00"),
    ("finance", "Price 50, 10% discount. New price?", "45.00"),
    ("finance", "Buy at 20, sell at 25. Profit?", "5.00"),
]
RECORDS = [
    {"id": f"s{i}", "domain": d, "instruction": q, "input": "", "output": a} for i, (d, q, a) in enumerate(PROMPTS)
]


def test_shard_bounds_are_contiguous_and_balanced():
    assert shard_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert shard_bounds(16, 1) == [(0, 16)]
    assert shard_bounds(5, 5) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    with pytest.raises(InputError, match="larger than the number of samples"):
        shard_bounds(3, 4)
    with pytest.raises(InputError, match=">= 1"):
        shard_bounds(3, 0)


def _fit(cls, rows: np.ndarray, block: int, **options):
    svd = cls(options.pop("rank"), **options)
    for i in range(0, rows.shape[0], block):
        svd.partial_fit(rows[i : i + block])
    return svd


def test_brand_merge_is_exact_on_low_rank_data():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((40, 4)) @ rng.standard_normal((4, 60))  # rank 4
    parts = [a[:13], a[13:27], a[27:]]
    states = [_fit(BrandSVD, p, 5, rank=4) for p in parts]
    merged, coords = merge_brand(states)
    _, sig, vt = np.linalg.svd(a, full_matrices=False)
    np.testing.assert_allclose(merged.singular_values_, sig[:4], rtol=1e-10)
    assert np.degrees(principal_angles(merged.components_, vt[:4])).max() < 1e-6
    # Every sample's coordinates are its row projected on the merged basis (no second pass).
    np.testing.assert_allclose(coords, a @ merged.components_.T, atol=1e-9)


def test_brand_merge_of_full_states_is_the_svd_of_the_stack():
    """Noisy full-rank data, each shard keeping every direction (rank + oversample >= n_i): the merge
    is then the exact SVD of the stacked rows, its truncation the only loss."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((30, 5)) @ rng.standard_normal((5, 80)) + 0.05 * rng.standard_normal((30, 80))
    states = [_fit(BrandSVD, p, 4, rank=3, oversample=12) for p in (a[:15], a[15:])]
    merged, coords = merge_brand(states)
    u, sig, vt = np.linalg.svd(a, full_matrices=False)
    np.testing.assert_allclose(merged.singular_values_, sig[:3], rtol=1e-9)
    signs = np.sign(np.sum(merged.components_ * vt[:3], axis=1))
    np.testing.assert_allclose(coords * signs, u[:, :3] * sig[:3], atol=1e-9)


def test_frequent_directions_merge_keeps_the_covariance_bound():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((90, 30)) * np.linspace(3, 0.1, 30)
    parts = np.array_split(a, 3)
    states = [_fit(FrequentDirections, p, 7, rank=4, sketch_size=8) for p in parts]
    merged = merge_frequent_directions(states)
    b = merged.sketch_
    err = np.linalg.eigvalsh(a.T @ a - b.T @ b)
    assert err.min() > -1e-9  # A^T A - B^T B is PSD
    assert err.max() <= merged.shrinkage_ + 1e-9  # bounded by the summed shrinkage
    assert merged.shrinkage_ >= sum(s.shrinkage_ for s in states)
    # FD's own bound for the pool: ||A - A_k||_F^2 / (ell - k), added over 3 shards and the merge.
    sig = np.linalg.svd(a, compute_uv=False)
    k = 4
    assert err.max() <= 4 * np.square(sig[k:]).sum() / (8 - k)


@pytest.fixture(scope="module")
def sharded(tiny_model_dir, tmp_path_factory):
    """The test config's extraction of a 16-sample pool: single (S = 1) and sharded (S = 2, 3)."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("shards")
    train = tmp / "train.jsonl"
    write_jsonl(train, RECORDS)
    warmup = tmp / "warmup"
    run_warmup(str(tiny_model_dir), str(train), GRADIENTS["warmup"], 0, str(warmup))
    extract_features(str(tiny_model_dir), str(warmup), str(train), GRADIENTS, 0, str(tmp / "s1"))
    for s in (2, 3):
        dirs = [str(tmp / f"s{s}" / "shards" / str(i)) for i in range(s)]
        for i, d in enumerate(dirs):
            extract_shard(str(tiny_model_dir), str(warmup), str(train), GRADIENTS, 0, i, s, d)
        merge_shards(dirs, GRADIENTS, 0, str(tmp / f"s{s}"))
    return tmp, train, warmup


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize("shards", [2, 3])
def test_sharded_extraction_matches_the_single_pass(sharded, shards):
    tmp, train, _ = sharded
    single, merged = _arrays(tmp / "s1" / "features.npz"), _arrays(tmp / f"s{shards}" / "features.npz")
    assert merged["ids"].tolist() == [r["id"] for r in RECORDS]
    # Per-sample features are the same numbers whichever job computed them.
    for key in ("norms", "projected_16", "projected_32", "elrea_features"):
        np.testing.assert_allclose(merged[key], single[key], rtol=1e-5, atol=1e-6)
    comps1 = np.load(tmp / "s1" / "svd_components.npy").astype(np.float64)
    comps = np.load(tmp / f"s{shards}" / "svd_components.npy").astype(np.float64)
    assert comps.shape == comps1.shape == (2, comps.shape[1])
    angles = np.degrees(principal_angles(comps, comps1))
    assert angles.max() < 1.0, angles
    np.testing.assert_allclose(merged["singular_values"], single["singular_values"], rtol=1e-2)
    # The coordinates are each sample's gradient in the merged basis: up to the components' signs
    # they match the single pass's coordinates of the same samples, up to Brand's truncation error
    # (coordinates carry what earlier truncations dropped; measured: 4% of the largest at S = 2).
    signs = np.sign(np.sum(comps * comps1, axis=1))
    scale = np.abs(single["svd_coords"]).max()
    np.testing.assert_allclose(merged["svd_coords"] * signs, single["svd_coords"], atol=0.06 * scale)
    # GradientSpace's clustering of the test config gives the same partition.
    params = TEST_CONFIG["cluster"]
    labels = [
        cluster("gradientspace", ClusterInputs(load_features(tmp / d / "features.npz")), params, 0).labels
        for d in ("s1", f"s{shards}")
    ]
    pairs = {(int(a), int(b)) for a, b in zip(*labels, strict=True)}
    assert len(pairs) == len(set(labels[0])) == len(set(labels[1])), pairs  # one-to-one: same partition
    same = "identical labels" if np.array_equal(*labels) else "same partition"
    print(f"S={shards} vs S=1: principal angles {np.round(angles, 3).tolist()} deg, {same}")  # README (pytest -s)


def test_sharded_coherence_sums_equal_the_single_pass(sharded, tiny_model_dir):
    tmp, train, warmup = sharded
    cdir = tmp / "clusters" / "toy"
    cdir.mkdir(parents=True)
    labels = [i % 3 for i in range(len(RECORDS))]
    pd.DataFrame({"id": [r["id"] for r in RECORDS], "cluster": labels}).to_csv(cdir / "assignments.csv", index=False)
    single = cluster_gradient_sums(str(tiny_model_dir), str(warmup), str(train), [str(cdir)], GRADIENTS, 0)["toy"]
    files = [str(tmp / f"coh{i}.pt") for i in range(3)]
    for i, f in enumerate(files):
        coherence_shard(str(tiny_model_dir), str(warmup), str(train), [str(cdir)], GRADIENTS, 0, i, 3, f)
    parts = [torch.load(f, weights_only=True)["methods"]["toy"] for f in files]
    # summed on the host in float64 (whatever the model's device), saved as float32
    assert single["sums"].dtype == torch.float64 and single["sums"].device.type == "cpu"
    assert all(p["sums"].dtype == torch.float32 for p in parts)
    np.testing.assert_allclose(sum(p["sums"] for p in parts).numpy(), single["sums"].numpy(), atol=1e-6)
    assert sum(p["counts"] for p in parts).tolist() == single["counts"].tolist() == [6, 5, 5]
    result = merge_coherence(files, str(tmp / "coherence.json"))
    from gs.cluster.quality import coherence_from_sums

    expected = coherence_from_sums(np.sqrt(single["sq_norms"])[:, None], single["counts"])
    assert result["toy"]["overall"] == pytest.approx(expected["overall"], abs=1e-6)
    assert result["toy"]["per_cluster"] == pytest.approx(expected["per_cluster"], abs=1e-6)


def test_frequent_directions_shards_take_coordinates_in_a_second_pass(sharded, tiny_model_dir):
    tmp, train, warmup = sharded
    params = {**GRADIENTS, "svd": {"method": "frequent_directions", "rank": 2}}
    out = tmp / "fd"
    dirs = [str(out / "shards" / str(i)) for i in range(2)]
    for i, d in enumerate(dirs):
        extract_shard(str(tiny_model_dir), str(warmup), str(train), params, 0, i, 2, d)
    with pytest.raises(InputError, match="needs the basis"):
        merge_shards(dirs, params, 0, str(out))
    merge_basis(dirs, params, str(out / "basis.pt"))
    coords = [str(out / f"coords{i}.npy") for i in range(2)]
    for i, c in enumerate(coords):
        shard_coordinates(str(tiny_model_dir), str(warmup), str(train), params, 0, i, 2, str(out / "basis.pt"), c)
    merge_shards(dirs, params, 0, str(out), basis_file=str(out / "basis.pt"), coords_files=coords)
    # Independent reference: every normalised gradient, stacked, times the merged components.
    merged = _arrays(out / "features.npz")
    comps = np.load(out / "svd_components.npy").astype(np.float64)
    stacked = _stacked_gradients(tiny_model_dir, warmup)
    assert merged["svd_coords"].shape == (len(RECORDS), 2)
    np.testing.assert_allclose(merged["svd_coords"], stacked @ comps.T, atol=1e-5)
    # The merged sketch's shrinkage bounds the pool's covariance error (Gram of the stacked rows).
    state = torch.load(out / "basis.pt", weights_only=True)
    b = state["s"].numpy()[:, None] * state["vt"].double().numpy()
    err = np.linalg.eigvalsh(stacked.T @ stacked - b.T @ b)
    assert err.min() > -1e-6 and err.max() <= state["shrinkage"] + 1e-6


def _stacked_gradients(tiny_model_dir, warmup):
    """The reference: every normalised response gradient of the pool, stacked, by plain iteration."""
    from gs.gradients.passes import gradient_model, normalise_rows
    from gs.gradients.per_sample import iter_gradients

    model, tok = gradient_model(str(tiny_model_dir), str(warmup))
    grads = torch.cat([g for _, g in iter_gradients(model, tok, RECORDS, batch_size=16, max_length=48, progress=False)])
    return normalise_rows(grads).double().numpy()


def test_planner_finds_the_smallest_shard_count_that_fits():
    """gs.plan.cli.shard_note on rows whose time falls as ceil(n / S): 30 h of extraction in 24 h jobs
    needs S = 2; 100 h needs ceil(100 / 24) = 5; a merge over its memory stops the search."""
    from gs.plan.cli import shard_note
    from gs.plan.report import Row, check
    from gs.plan.resources import RuleResources

    def rows_for(total_h: float, merge_gb: float = 1.0):
        def rows(s: int) -> list[Row]:
            out = []
            for rule, hours, mem in (
                ("extract_gradient_shard", total_h * -(-1000 // s) / 1000, 10.0),
                ("merge_gradient_shards", 0.1, merge_gb),
            ):
                res = RuleResources(mem_mb=96000, runtime=1440, gpu=1)
                row = Row("x", rule, "", 0, 0, int(mem * 2**30), hours * 3600, 0.0, res, [])
                row.problems = check(row, "gpu", None)
                out.append(row)
            return out

        return rows

    note = shard_note(rows_for(30.0), 1, 1000, "gpu")
    assert "gradients.shards = 2 is the smallest" in note and "extract_gradient_shard 15.00 h of 1440 min" in note
    assert "does NOT fit" in note and "Not fixed" not in note
    assert "gradients.shards = 5 is the smallest" in shard_note(rows_for(100.0), 8, 1000, "gpu")
    assert "which fits" in shard_note(rows_for(100.0), 8, 1000, "gpu")
    # A memory problem does not shrink with S: named, and the runtime search goes on.
    note = shard_note(rows_for(30.0, merge_gb=200.0), 1, 1000, "gpu")
    assert "gradients.shards = 2 is the smallest" in note
    assert "Not fixed by sharding: merge_gradient_shards: host peak" in note


def test_sharded_less_influence_equals_the_single_pass(sharded, tiny_model_dir):
    from gs.selection.influence import compute_influence
    from gs.selection.influence_shards import influence_shard, merge_influence

    tmp, train, warmup = sharded
    # math's validation set has two subtasks (LESS's subtask max), code's none.
    records = {name: [r for r in RECORDS if r["domain"] == name][:2] for name in ("math", "code")}
    records["math"] = [{**r, "meta": {"subtask": f"sub{i}"}} for i, r in enumerate(records["math"])]
    targets = {}
    for name, recs in records.items():
        path = tmp / f"{name}_validation.jsonl"
        write_jsonl(path, recs)
        targets[name] = str(path)
    single = compute_influence(str(tiny_model_dir), str(warmup), RECORDS, records, GRADIENTS, 0)
    files = [str(tmp / f"influence{i}.npz") for i in range(3)]
    for i, f in enumerate(files):
        influence_shard(str(tiny_model_dir), str(warmup), str(train), targets, GRADIENTS, 0, i, 3, f)
    merged = merge_influence(files, str(tmp / "influence.npz"))
    with np.load(tmp / "influence.npz") as f:
        assert sorted(f.files) == sorted(single)
    assert merged["ids"].tolist() == single["ids"].tolist() == [r["id"] for r in RECORDS]
    assert int(merged["gradient_computations"]) == int(single["gradient_computations"])
    assert merged["per_checkpoint"].shape == single["per_checkpoint"].shape
    np.testing.assert_allclose(merged["scores"], single["scores"], atol=1e-5)
    np.testing.assert_allclose(merged["per_checkpoint"], single["per_checkpoint"], atol=1e-5)
    assert merged["subtask"].tolist() == single["subtask"].tolist() == ["", "sub0", "sub1"]  # code, then math's
    assert merged["subtask_target"].tolist() == [0, 1, 1]
    np.testing.assert_allclose(merged["subtask_per_checkpoint"], single["subtask_per_checkpoint"], atol=1e-5)
    np.testing.assert_allclose(merged["subtask_scores"], single["subtask_scores"], atol=1e-5)


def test_planner_plans_one_job_per_shard_and_the_merges(plan_inputs):
    """gs.plan's shard stages on the test config (n = 16, batch 4, two gradient passes for ELREA's
    instruction loss): a shard job of S = 3 streams the largest slice, ceil(16 / 3) = 6 samples."""
    from gs.plan.stages import Planner

    config, hf = plan_inputs
    planner = Planner(config, hf)
    assert planner.n_pool == 16
    one = planner.gradient_passes(1, 3, 2) + planner.influence_pass(1)
    assert [s.rule for s in one] == ["extract_gradient_features", "gradient_coherence", "less_influence"]
    assert one[0].work[0].repeats == {"gradient": 2 * 4}  # 2 passes x ceil(16 / 4) batches
    three = planner.gradient_passes(3, 3, 2) + planner.influence_pass(3)
    assert [s.rule for s in three] == [
        "extract_gradient_shard",
        "merge_gradient_shards",
        "gradient_coherence_shard",
        "merge_coherence_shards",
        "less_influence_shard",
        "merge_influence_shards",
    ]
    assert three[0].jobs == ["shard0", "shard1", "shard2"]
    assert three[0].work[0].repeats == {"gradient": 2 * 2}  # 2 passes x ceil(6 / 4) batches
    assert three[2].work[0].repeats == {"gradient": 2}
    # Influence: 1 warm-up checkpoint x (ceil(6 / 4) pool batches + ceil(2 / 4) per validation target).
    targets = len(config["selection"]["targets"])
    assert three[4].work[0].repeats == {"gradient": 2 + targets}
    d = three[0].work[0].trace.lora_dim
    assert three[1].host_extra["shard states"] == 4 * d * 3 * (2 + 4)  # S x (rank + oversample) float32 rows


def test_planner_keeps_coherence_sums_on_the_host_and_projects_influence_in_the_model_dtype(plan_inputs):
    """On a GPU run: the coherence shard's float64 sums are host arrays (none on the device), saved
    as float32 one method at a time; the merge holds two float32 totals; LESS influence's
    BasicProjector runs in the model's dtype (bfloat16 here), and so do gs.gradients.extraction' extraction
    projectors."""
    from gs.plan.stages import Planner

    config, hf = plan_inputs
    config["plan"] = {**config.get("plan", {}), "run_on": "gpu", "fast_jl": False}
    config["model"]["dtype"] = "bfloat16"
    config["gradients"].pop("dtype", None)
    config["gradients"]["projection"]["kind"] = "rademacher"
    config["gradients"]["influence"] = {"projection_dim": 64, "projection_kind": "rademacher"}
    planner = Planner(config, hf)
    methods, k = 3, 2
    stages = {s.rule: s for s in planner.gradient_passes(3, methods, k) + planner.influence_pass(3)}
    co, merge = stages["gradient_coherence_shard"], stages["merge_coherence_shards"]
    d = co.work[0].trace.lora_dim
    assert not any("sums" in name for name in co.device_extra)
    assert co.host_extra["cluster sums"] == 8 * methods * k * d
    assert co.host_extra["float32 copy of one method's sums (saving)"] == 4 * k * d
    assert merge.host_extra == {"cluster sums (total and one shard's)": 2 * 4 * methods * k * d}
    # host arithmetic of the largest slice, ceil(16 / 3) = 6 samples: copy to float64, one add per method
    assert co.host_bytes_streamed == 6 * d * (4 + 8 + methods * 24)
    costs = [cost for cost, _ in stages["less_influence_shard"].projector_calls.values()]
    assert [(c.backend, c.dtype, c.block) for c in costs] == [("basic", "bfloat16", 64)]  # min(128, p = 64)
    extract = [cost for cost, _ in stages["extract_gradient_shard"].projector_calls.values()]
    assert extract and all(c.dtype == "bfloat16" for c in extract)
