"""The fair projection ablation (gs.cluster.ablation), the seed spreads (gs.spread) and the kept
gradients (gs.gradients.extraction).

Expected values come from scikit-learn, TRAK and numpy directly, never from the functions under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gs.cluster import ablation as A
from gs.io import InputError, write_jsonl
from gs.spread import fmt_spread, spread, summarise


def _blobs(n_per: int, k: int, f: int, seed: int, noise: float = 0.3) -> tuple[np.ndarray, list[str]]:
    """``k`` well-separated directions plus noise, ``(k n_per, f)``, and their domain names."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, f))
    x = np.concatenate([c + noise * rng.standard_normal((n_per, f)) for c in centers])
    return x, [f"d{i}" for i in range(k) for _ in range(n_per)]


# ------------------------------------------------------------------------------------------ spread


def test_spread_against_numpy():
    x = [0.61, 0.72, 0.55, 0.8, 0.66, float("nan")]
    s = spread(x)
    finite = np.array(x[:5])
    assert s["n"] == 5
    assert s["mean"] == pytest.approx(finite.mean())
    assert s["sd"] == pytest.approx(np.std(finite, ddof=1))
    assert (s["min"], s["max"]) == (0.55, 0.8)
    one = spread([0.5])
    assert one["mean"] == 0.5 and np.isnan(one["sd"]) and one["n"] == 1
    assert spread([None, float("nan")])["n"] == 0
    assert fmt_spread(0.5, 0.1, 0.4, 0.6) == "0.500 ± 0.100 [0.400, 0.600]"
    assert fmt_spread(0.5, float("nan"), 0.5, 0.5) == "0.500" and fmt_spread(float("nan"), 0, 0, 0) == "n/a"


def test_summarise_groups_in_order():
    frame = pd.DataFrame({"m": ["b", "b", "a", "a", "a"], "v": [1.0, 3.0, 2.0, 4.0, 6.0]})
    out = summarise(frame, ["m"], ["v"])
    assert out["m"].tolist() == ["b", "a"] and out["seeds"].tolist() == [2, 3]
    assert out["v_mean"].tolist() == [2.0, 4.0]
    assert out["v_sd"].tolist() == pytest.approx([np.std([1, 3], ddof=1), np.std([2, 4, 6], ddof=1)])


# ------------------------------------------------------------------------------------------ linear algebra


@pytest.mark.parametrize("f", [6, 300])  # f <= n (numpy SVD) and f > n (Gram eigen-decomposition)
def test_raw_kmeans_through_isometric_coordinates_equals_sklearn_on_the_rows(f):
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    x, _ = _blobs(10, 4, f, seed=f, noise=1.5)  # overlapping: k-means++ draws matter
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    coords = A.decompose(unit)
    assert coords.shape[1] <= min(unit.shape)
    d_ours = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    d_raw = np.linalg.norm(unit[:, None] - unit[None], axis=-1)
    np.testing.assert_allclose(d_ours, d_raw, atol=1e-6)
    for seed in range(5):
        direct = KMeans(n_clusters=4, n_init=3, random_state=seed, tol=0.0).fit_predict(unit)
        ours = A.kmeans(coords, 4, 3, seed)
        assert adjusted_rand_score(direct, ours) == pytest.approx(1.0)


def test_svd_features_are_the_top_r_numpy_coordinates_row_normalised():
    x, _ = _blobs(8, 3, 200, seed=1)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    expected = u[:, :3] * s[:3]
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    ours = A.svd_features(A.decompose(x), 3)
    signs = np.sign(np.sum(ours * expected, axis=0))  # singular vectors are defined up to sign
    np.testing.assert_allclose(ours * signs, expected, atol=1e-8)


def test_coherence_from_gram_is_the_mean_pairwise_cosine():
    x, _ = _blobs(5, 3, 40, seed=2)
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 0, 1, 2, 0, 1])
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = unit @ unit.T
    per, sizes = [], []
    for c in range(3):
        idx = np.flatnonzero(labels == c)
        block = cos[np.ix_(idx, idx)]
        per.append((block.sum() - len(idx)) / (len(idx) * (len(idx) - 1)))
        sizes.append(len(idx))
    expected = np.dot(per, sizes) / np.sum(sizes)
    assert A.coherence_from_gram(A.gram(unit, block=7), labels) == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------------------------------ projections


def test_rademacher_prefix_columns_are_trak_projections_of_the_same_seed():
    from trak.projectors import BasicProjector, ProjectionType

    rng = np.random.default_rng(0)
    g = rng.standard_normal((5, 1000)).astype(np.float32)
    out, seconds = A.project(g, 384, 7, "rademacher")
    assert out.shape == (5, 384) and seconds > 0
    for p in (128, 256, 384):  # multiples of TRAK's 128-column block: exactly TRAK's p-column projector
        trak = BasicProjector(
            grad_dim=1000, proj_dim=p, seed=7, proj_type=ProjectionType.rademacher, device="cpu", block_size=128
        )
        np.testing.assert_allclose(
            out[:, :p], trak.project(torch.from_numpy(g), model_id=0).numpy(), rtol=1e-5, atol=1e-4
        )
    # p < 128: the first p columns of TRAK's (d, 128) block of this seed, +-1 entries
    trak = BasicProjector(
        grad_dim=1000, proj_dim=128, seed=7, proj_type=ProjectionType.rademacher, device="cpu", block_size=128
    )
    block = trak.proj_matrix.numpy()
    assert set(np.unique(block)) == {-1.0, 1.0}
    np.testing.assert_allclose(out[:, :64], g @ block[:, :64], rtol=1e-4, atol=1e-3)
    other, _ = A.project(g, 128, 8, "rademacher")
    assert not np.allclose(other, out[:, :128])


def test_sparse_prefix_rows_are_the_first_rows_of_sklearns_matrix():
    from sklearn.random_projection import SparseRandomProjection

    rng = np.random.default_rng(1)
    g = rng.standard_normal((4, 900)).astype(np.float32)
    out, _ = A.project(g, 50, 3, "sparse")
    srp = SparseRandomProjection(n_components=50, random_state=3, dense_output=True).fit(np.zeros((1, 900)))
    full = srp.components_.toarray()
    np.testing.assert_allclose(out[:, :20], g @ full[:20].T, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ the sweep


def _spec(**kw):
    base = {"dims": (8, 16, 64), "seeds": 3, "kind": "rademacher", "k": 3, "rank": 3, "n_init": 2, "seed": 10}
    return A.AblationSpec(**{**base, **kw})


def test_run_kept_scores_every_side_and_seed_against_sklearn():
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    x, domains = _blobs(6, 3, 500, seed=3, noise=0.5)
    spec = _spec()
    per_seed, cost = A.run_kept(x.astype(np.float32), domains, spec)
    assert len(per_seed) == spec.seeds * 2 * (1 + len(spec.dims))
    assert set(per_seed["dimension"]) == {500, 8, 16, 64} and set(per_seed["features"]) == {"raw", "svd"}
    assert cost["p_max"] == 64 and len(cost["seconds_per_seed"]) == 3
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    # Full dimension, raw rows, seed 11: scikit-learn on the rows themselves.
    direct = KMeans(n_clusters=3, n_init=2, random_state=11, tol=0.0).fit_predict(unit)
    row = per_seed[(per_seed["space"] == A.FULL) & (per_seed["features"] == "raw") & (per_seed["seed"] == 11)]
    assert row["nmi"].iloc[0] == pytest.approx(normalized_mutual_info_score(domains, direct))
    # Projection to 16, raw rows, seed 12: TRAK's draw of seed 12, normalised, then scikit-learn.
    proj, _ = A.project(unit.astype(np.float32), 64, 12, "rademacher")
    p16 = proj[:, :16] / np.linalg.norm(proj[:, :16], axis=1, keepdims=True)
    direct = KMeans(n_clusters=3, n_init=2, random_state=12, tol=0.0).fit_predict(p16)
    row = per_seed[(per_seed["dimension"] == 16) & (per_seed["features"] == "raw") & (per_seed["seed"] == 12)]
    assert row["nmi"].iloc[0] == pytest.approx(normalized_mutual_info_score(domains, direct))
    # Well-separated blobs: full dimension recovers them at every seed, on both feature sets.
    full = per_seed[per_seed["space"] == A.FULL]
    assert (full["nmi"] > 0.99).all() and full["coherence"].notna().all()
    table = A.summary_table(per_seed)
    assert len(table) == 2 * (1 + len(spec.dims)) and (table["seeds"] == 3).all()
    sub = per_seed[(per_seed["dimension"] == 8) & (per_seed["features"] == "svd")]["ari"]
    got = table[(table["dimension"] == 8) & (table["features"] == "svd")]
    assert got["ari_mean"].iloc[0] == pytest.approx(sub.mean()) and got["ari_sd"].iloc[0] == pytest.approx(sub.std())
    with pytest.raises(InputError, match="above the gradient dimension"):
        A.run_kept(x[:, :32].astype(np.float32), domains, spec)


def test_spec_from_config_and_bad_values():
    spec = A.spec_from_config({"k": "auto", "kmeans": {"n_init": 4}, "ablation": {"dims": [256, 64]}}, 8, 1, 4)
    assert (spec.k, spec.n_init, spec.dims, spec.seeds, spec.kind) == (4, 4, (64, 256), 5, "rademacher")
    with pytest.raises(InputError, match="projection_kind"):
        _spec(kind="gaussian")
    with pytest.raises(InputError, match="dims"):
        _spec(dims=())


def test_cli_writes_tables_figure_and_cost(tmp_path):
    x, domains = _blobs(5, 3, 400, seed=4)
    ids = [f"s{i}" for i in range(len(domains))]
    unit = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    np.save(tmp_path / "gradients.npy", unit)
    np.savez(tmp_path / "features.npz", ids=np.array(ids), svd_coords=A.decompose(unit)[:, :3].astype(np.float32))
    write_jsonl(tmp_path / "train.jsonl", [{"id": i, "domain": d} for i, d in zip(ids, domains, strict=True)])
    params = {"k": 3, "kmeans": {"n_init": 2}, "ablation": {"dims": [8, 32], "seeds": 2}}
    A.main(
        ["--features", str(tmp_path / "features.npz"), "--gradients", str(tmp_path / "gradients.npy")]
        + ["--train", str(tmp_path / "train.jsonl"), "--params", json.dumps(params), "--rank", "3", "--seed", "0"]
        + ["--out-dir", str(tmp_path / "abl"), "--out-table", str(tmp_path / "t" / "ablation")]
        + ["--out-png", str(tmp_path / "f" / "ablation.png")]
    )
    table = pd.read_csv(tmp_path / "t" / "ablation.csv")
    per_seed = pd.read_csv(tmp_path / "abl" / "per_seed.csv")
    assert len(table) == 6 and len(per_seed) == 12
    md = (tmp_path / "t" / "ablation.md").read_text()
    assert "| full dimension | 400 | raw (normalised) rows | 2 |" in md and "TRAK" in md
    assert json.loads((tmp_path / "abl" / "cost.json").read_text())["p_max"] == 32
    assert (tmp_path / "f" / "ablation.png").stat().st_size > 5000


def test_fallback_without_kept_gradients_uses_the_extraction_projections(tmp_path):
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    from gs.cluster.features import GradientFeatures

    x, domains = _blobs(5, 3, 50, seed=5)
    feats = GradientFeatures(ids=np.array([f"s{i}" for i in range(15)]), svd_coords=x[:, :4], projected={16: x[:, :16]})
    per_seed, cost = A.run_features(feats, domains, _spec(dims=(16, 64), seeds=2, rank=4))
    assert cost["projector_seeds"] == 1 and cost["dims"] == [16]
    assert set(per_seed["space"]) == {A.FULL, A.PROJECTED} and per_seed["coherence"].isna().all()
    p16 = x[:, :16] / np.linalg.norm(x[:, :16], axis=1, keepdims=True)
    row = per_seed[(per_seed["dimension"] == 16) & (per_seed["features"] == "raw") & (per_seed["seed"] == 11)]
    direct = KMeans(n_clusters=3, n_init=2, random_state=11, tol=0.0).fit_predict(p16)
    assert row["ari"].iloc[0] == pytest.approx(adjusted_rand_score(domains, direct))


# ------------------------------------------------------------------------------------------ kept gradients


def test_extraction_keeps_the_rows_it_streamed(tiny_model_dir, tmp_path):
    """gradients.keep_gradients: gradients.npy is the stacked normalised gradients, in pool order, and the
    SVD coordinates are its projections on the components; without the flag no file."""
    from gradient_fixtures import PARAMS, RECORDS, stacked_gradients

    from gs.gradients.extraction import extract_features
    from gs.gradients.warmup import run_warmup

    torch.set_num_threads(1)
    train = tmp_path / "train.jsonl"
    write_jsonl(train, RECORDS)
    run_warmup(str(tiny_model_dir), str(train), PARAMS["warmup"], 0, str(tmp_path / "warmup"))
    params = {**PARAMS, "keep_gradients": True, "checkpoint_every": 1}
    summary = extract_features(
        str(tiny_model_dir), str(tmp_path / "warmup"), str(train), params, 0, str(tmp_path / "g")
    )
    kept = np.load(tmp_path / "g" / "gradients.npy")
    stacked = stacked_gradients(tiny_model_dir, tmp_path / "warmup")
    assert kept.dtype == np.float32 and kept.shape == stacked.shape == (8, summary["d"])
    np.testing.assert_allclose(kept, stacked, atol=1e-5)
    comps = np.load(tmp_path / "g" / "svd_components.npy")
    with np.load(tmp_path / "g" / "features.npz") as f:
        np.testing.assert_allclose(f["svd_coords"], kept @ comps.T, atol=1e-4)
    assert not (tmp_path / "g" / ".extract_state").exists() and summary["kept_gradients"] == "gradients.npy"


def test_open_kept_gradients_resume_checks(tmp_path):
    from gs.gradients.extraction import open_kept_gradients

    path = tmp_path / "state" / "gradients.npy"
    kept = open_kept_gradients(path, 4, 3, resume=False)
    kept[:2] = 1.0
    kept.flush()
    del kept
    again = open_kept_gradients(path, 4, 3, resume=True)
    assert again[:2].sum() == 6.0
    with pytest.raises(InputError, match="expected float32"):
        open_kept_gradients(path, 5, 3, resume=True)
    with pytest.raises(InputError, match="missing"):
        open_kept_gradients(Path(tmp_path / "none.npy"), 4, 3, resume=True)


@pytest.mark.slow  # two CLI subprocesses: ~30 s each on a loaded 2-core machine
def test_killed_extraction_resumes_its_kept_gradients(tiny_model_dir, tmp_path):
    """SIGKILL at the window end after batch 3 (checkpoint after batch 2), rerun: gradients.npy equals the
    stacked gradients."""
    import os
    import subprocess
    import sys

    from gradient_fixtures import PARAMS, RECORDS, stacked_gradients

    from gs.gradients.warmup import run_warmup

    train = tmp_path / "train.jsonl"
    write_jsonl(train, RECORDS)
    run_warmup(str(tiny_model_dir), str(train), PARAMS["warmup"], 0, str(tmp_path / "warmup"))
    # windows of 2 batches (projection_rows 4): the checkpoint after window 1, the kill at window 2's end
    params = {**PARAMS, "batch_size": 2, "checkpoint_every": 2, "projection_rows": 4, "keep_gradients": True}
    out = tmp_path / "killed"

    def extract(die_after: int | None) -> subprocess.CompletedProcess:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("GS_TEST_DIE_AFTER_BATCHES", None)
        if die_after is not None:
            env["GS_TEST_DIE_AFTER_BATCHES"] = str(die_after)
        cmd = [sys.executable, "-m", "gs.gradients.extraction", "--model-dir", str(tiny_model_dir)]
        cmd += ["--warmup", str(tmp_path / "warmup"), "--train", str(train), "--params", json.dumps(params)]
        cmd += ["--seed", "0", "--out-dir", str(out)]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)

    run = extract(3)
    assert run.returncode == -9, run.stderr[-2000:]
    assert (out / ".extract_state" / "gradients.npy").is_file() and not (out / "gradients.npy").exists()
    run = extract(None)
    assert run.returncode == 0 and "after 2 batches" in run.stderr, run.stderr[-2000:]
    kept = np.load(out / "gradients.npy")
    np.testing.assert_allclose(kept, stacked_gradients(tiny_model_dir, tmp_path / "warmup"), atol=1e-5)
    assert not (out / ".extract_state").exists()
