"""Clustering methods on synthetic gradient features: recovery, k selection, errors, outputs, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import normalized_mutual_info_score as nmi

from gs.cluster import assignments as AS
from gs.cluster import features as F
from gs.cluster import methods as C
from gs.io import InputError, write_jsonl

# Three domains along three orthogonal directions u_j, unequal sizes so the (uncentred) singular
# directions are the u_j themselves (equal energies would make the singular basis arbitrary).
SIZES = {("a", +1): 54, ("b", +1): 36, ("c", +1): 22}
# For the signed rule: six groups +-u_j (a domain's gradients point both ways along its direction).
SIGNED_SIZES = {("a", +1): 30, ("a", -1): 24, ("b", +1): 20, ("b", -1): 16, ("c", +1): 12, ("c", -1): 10}
DOMAIN_DIR = {"a": 0, "b": 1, "c": 2}


def make_data(seed: int = 0, d: int = 120, r: int = 5, noise: float = 0.05, sizes=None):
    """Normalised synthetic gradients ``(n, d)``, their exact top-``r`` SVD features, domains, signs."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((d, 3)))[0].T  # (3, d) orthonormal
    rows, domains, signed = [], [], []
    for (dom, sign), m in (sizes or SIZES).items():
        j = DOMAIN_DIR[dom]
        g = sign * basis[j] + noise * rng.standard_normal((m, d))
        rows.append(g)
        domains += [dom] * m
        signed += [f"{dom}{'+' if sign > 0 else '-'}"] * m
    g = np.concatenate(rows)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    order = rng.permutation(g.shape[0])  # pool order must not reveal the groups
    g = g[order]
    domains = [domains[i] for i in order]
    signed = [signed[i] for i in order]
    _, s, vt = np.linalg.svd(g, full_matrices=False)
    coords = g @ vt[:r].T
    projected = {p: (g @ rng.standard_normal((d, p)) / np.sqrt(p)).astype(np.float32) for p in (8, 32)}
    ids = np.asarray([f"s{i}" for i in range(g.shape[0])])
    feats = F.GradientFeatures(
        ids=ids,
        svd_coords=coords,
        singular_values=s[:r],
        norms=np.ones(g.shape[0]),
        projected=projected,
        elrea_dim=32,
    )
    return feats, g, domains, signed


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture(scope="module")
def signed_data():
    return make_data(sizes=SIGNED_SIZES)


def run(method, data, **params):
    feats, g, domains, _ = data
    params = {"n_init": 3, **params}  # fewer restarts than the default 10: the tests' data are clear
    return C.cluster(method, C.ClusterInputs(feats, embeddings=g, domains=domains), params, seed=0)


@pytest.mark.parametrize("assign", ["argmax_abs", "kmeans"])
def test_gradientspace_recovers_domains(data, assign):
    res = run("gradientspace", data, k=3, assign=assign)
    assert res.labels.shape == (len(data[2]),)
    assert set(res.labels.tolist()) == {0, 1, 2}
    assert nmi(data[2], res.labels) > 0.9
    assert res.info["rule"] == assign and res.info["k"] == 3 and sum(res.info["sizes"]) == len(data[2])


def test_signed_gives_two_clusters_per_direction(signed_data, data):
    res = run("gradientspace", signed_data, k=6, assign="signed")
    assert res.info["k"] == 6 and res.info["empty_clusters"] == []
    assert nmi(signed_data[3], res.labels) > 0.95  # the six signed groups
    # argmax_abs ignores the sign: the three domains
    assert nmi(signed_data[2], run("gradientspace", signed_data, k=3, assign="argmax_abs").labels) > 0.95
    assert res.info["directions"] == [0, 0, 1, 1, 2, 2]
    assert res.info["signs"] == ["+", "-", "+", "-", "+", "-"]
    with pytest.raises(InputError, match="must be even"):
        run("gradientspace", data, k=5, assign="signed")


def test_variant_names_force_the_rule(signed_data):
    res = run("gradientspace_signed", signed_data, k=6)
    assert res.info["method"] == "gradientspace_signed" and res.info["rule"] == "signed"


def test_baselines(data):
    _, _, domains, _ = data
    for method in ("elrea", "rp8", "rp32", "semantic"):
        res = run(method, data, k=3)
        assert res.info["k"] == 3 and nmi(domains, res.labels) > 0.9, method
    assert run("elrea", data, k=3).info["projection_dim"] == 32
    rnd = run("random", data, k=3)
    assert nmi(domains, rnd.labels) < 0.1
    assert max(rnd.info["sizes"]) - min(rnd.info["sizes"]) <= 1
    orc = run("oracle", data, k=7)
    assert nmi(domains, orc.labels) == pytest.approx(1.0)
    assert orc.info["k"] == 3 and orc.info["domains"] == ["a", "b", "c"] and "ignored" in orc.info["note"]
    assert np.array_equal(orc.labels, np.unique(domains, return_inverse=True)[1])


def test_only_oracle_sees_domains(data, monkeypatch):
    seen = {}

    def spy(inputs, params, seed):
        seen["domains"] = inputs.domains
        return C.Clustering(np.zeros(inputs.features.n, dtype=np.int64), {"k": 1, "sizes": [inputs.features.n]})

    monkeypatch.setitem(C.REGISTRY, "gradientspace", spy)
    run("gradientspace", data, k=3)
    assert seen["domains"] is None


def test_k_auto_silhouette_picks_true_k(data, signed_data):
    res = run("gradientspace", data, k="auto", criterion="silhouette", k_min=2, k_max=6, assign="kmeans")
    assert res.info["k"] == 3 and res.info["criterion"] == "silhouette"
    assert set(res.info["criterion_scores"]) == {"2", "3", "4", "5", "6"}
    res = run("gradientspace", signed_data, k="auto", criterion="silhouette", k_min=2, k_max=8, assign="signed")
    assert res.info["k"] == 6 and set(res.info["criterion_scores"]) == {"2", "4", "6", "8"}


def test_elbow_rules():
    spectrum = [10.0, 9.0, 8.5, 1.0, 0.9, 0.8, 0.7]
    assert C.elbow(spectrum, 1, None, "log_gap") == 3
    assert C.elbow(spectrum, 1, None, "knee") == 3
    # the range restricts the candidates: from m = 4 on, the largest gap is log(0.8 / 0.7) at m = 6
    assert C.elbow(spectrum, 4, None, "log_gap") == 6
    assert C.elbow(spectrum, 1, 2, "log_gap") == 1
    with pytest.raises(InputError, match="elbow_rule"):
        C.elbow(spectrum, rule="nope")
    with pytest.raises(InputError, match="at least 2"):
        C.elbow([3.0])


def test_k_auto_elbow_uses_gradient_spectrum(data, signed_data):
    res = run("gradientspace", data, k="auto", criterion="elbow", k_min=2, assign="argmax_abs")
    assert res.info["k"] == 3 and res.info["directions"] == [0, 1, 2]
    res = run("gradientspace", signed_data, k="auto", criterion="elbow", k_min=2, assign="signed")
    assert res.info["k"] == 6 and res.info["elbow_directions"] == 3


def test_argmax_empty_cluster_is_dropped_and_renumbered():
    coords = np.array([[1.0, 0.0, 0.1], [0.9, 0.1, 0.0], [0.1, 0.0, 1.0], [0.0, 0.2, 0.8]])
    feats = F.GradientFeatures(ids=["a", "b", "c", "d"], svd_coords=coords)
    res = C.cluster("gradientspace", C.ClusterInputs(feats), {"k": 3, "assign": "argmax_abs"}, seed=0)
    assert res.labels.tolist() == [0, 0, 1, 1]
    assert res.info["k"] == 2 and res.info["k_requested"] == 3
    assert res.info["empty_clusters"] == [1] and res.info["renumbered"] == {"0": 0, "2": 1}
    assert res.info["directions"] == [0, 2]


def test_errors(data):
    feats = data[0]
    with pytest.raises(InputError, match=rf"k=500 is larger than the number of samples n={feats.n}"):
        run("gradientspace", data, k=500)
    with pytest.raises(InputError, match="k=0 must be at least 1"):
        run("random", data, k=0)
    with pytest.raises(InputError, match="unknown clustering method 'bogus'; known: gradientspace, elrea"):
        run("bogus", data, k=3)
    with pytest.raises(InputError, match="no projected_1024"):
        run("rp1024", data, k=3)
    with pytest.raises(InputError, match="unknown clustering param 'kk'"):
        run("elrea", data, kk=3)
    with pytest.raises(InputError, match="'k' is required"):
        run("elrea", data)
    with pytest.raises(InputError, match="unknown assign rule"):
        run("gradientspace", data, k=3, assign="nope")
    with pytest.raises(InputError, match="more singular directions"):
        run("gradientspace", data, k=6, assign="argmax_abs")  # r = 5


@pytest.mark.parametrize("method", ["gradientspace", "elrea", "semantic"])
def test_nan_row_names_the_id(data, method):
    feats, g, domains, _ = data
    coords = feats.svd_coords.copy()
    proj = {p: a.copy() for p, a in feats.projected.items()}
    emb = g.copy()
    coords[7, 1] = np.nan
    proj[32][7, 0] = np.inf
    emb[7, 3] = np.nan
    bad = F.GradientFeatures(ids=feats.ids, svd_coords=coords, projected=proj, elrea_dim=32)
    with pytest.raises(InputError, match=r"row 7 \(sample id 's7'\) contains NaN or inf"):
        C.cluster(method, C.ClusterInputs(bad, embeddings=emb), {"k": 3}, seed=0)


def test_determinism(data):
    for method in ("gradientspace", "elrea", "random"):
        a = run(method, data, k=3)
        b = run(method, data, k=3)
        assert np.array_equal(a.labels, b.labels), method
    feats, g, domains, _ = data
    other = C.cluster("random", C.ClusterInputs(feats), {"k": 3}, seed=1)
    assert not np.array_equal(other.labels, run("random", data, k=3).labels)


def test_method_sections_override_flat_params(data):
    params = {"k": 2, "gradientspace": {"k": 3, "assign": "argmax_abs"}, "elrea": {"k": 4}}
    feats, g, domains, _ = data
    gs_res = C.cluster("gradientspace", C.ClusterInputs(feats), params, seed=0)
    assert gs_res.info["k"] == 3 and gs_res.info["rule"] == "argmax_abs"
    assert C.cluster("rp8", C.ClusterInputs(feats), params, seed=0).info["k"] == 2


def test_workflow_config_shape(data):
    """The ``cluster`` section of config/config.yaml is accepted as is."""
    section = {
        "methods": ["gradientspace", "elrea", "semantic", "random", "oracle"],
        "ablation_dims": [8],
        "k": 4,
        "gradientspace": {"assign": "argmax_abs", "normalize": True},
        "kmeans": {"n_init": 3},
        "semantic": {"encoder": "minilm"},
        "auto_k": {"criterion": "elbow", "k_min": 2, "k_max": 8},
    }
    p = C.resolve_params("gradientspace", section)
    assert (p["k"], p["assign"], p["n_init"], p["criterion"], p["k_max"]) == (4, "argmax_abs", 3, "elbow", 8)
    assert C.resolve_params("gradientspace_kmeans", section)["assign"] == "kmeans"
    assert C.resolve_params("rp8", section)["assign"] == "kmeans"  # gradientspace's section is not read
    res = run("gradientspace", data, **{**section, "k": 3})
    assert res.info["rule"] == "argmax_abs"
    with pytest.raises(InputError, match="unknown clustering param auto_k.kmax"):
        C.resolve_params("elrea", {"auto_k": {"kmax": 3}})


def test_centroids_and_write(tmp_path, data):
    feats, g, domains, _ = data
    res = run("gradientspace", data, k=3)
    cent = C.cluster_centroids(g, res.labels)
    assert cent.shape == (3, g.shape[1])
    np.testing.assert_allclose(cent[0], g[res.labels == 0].mean(axis=0))
    with pytest.raises(InputError, match="cluster 1 is empty"):
        C.cluster_centroids(g[:2], np.array([0, 2]))
    path = AS.write_assignments(tmp_path / "m" / "assignments.csv", feats.ids, res.labels, res.info)
    frame = pd.read_csv(path, dtype={"id": str})
    assert list(frame.columns) == ["id", "cluster"]
    assert frame["id"].tolist() == feats.ids.tolist() and frame["cluster"].tolist() == res.labels.tolist()
    info = json.loads((tmp_path / "m" / "cluster_info.json").read_text())
    assert info["k"] == 3 and info["method"] == "gradientspace" and info["sizes"] == res.info["sizes"]


def write_inputs(tmp_path, data, *, shuffle_train=True):
    feats, g, domains, _ = data
    arrays = {
        "ids": feats.ids,
        "norms": feats.norms,
        "svd_coords": feats.svd_coords,
        "singular_values": feats.singular_values,
        "elrea_dim": np.asarray(32),
        **{f"projected_{p}": a for p, a in feats.projected.items()},
    }
    np.savez(tmp_path / "features.npz", **arrays)
    recs = [
        {"id": i, "domain": d, "instruction": f"task {i}", "input": "", "output": "x", "meta": {}}
        for i, d in zip(feats.ids.tolist(), domains, strict=True)
    ]
    if shuffle_train:
        recs = recs[::-1]  # the CLI must align the pool to the features' order
    write_jsonl(tmp_path / "train.jsonl", recs)
    np.save(tmp_path / "emb.npy", g.astype(np.float32))
    return tmp_path / "features.npz", tmp_path / "train.jsonl"


def test_cli(tmp_path, data, capsys):
    features, train = write_inputs(tmp_path, data)
    base = ["--features", str(features), "--train", str(train), "--seed", "3"]
    for method, extra in [
        ("gradientspace", []),
        ("oracle", []),
        ("semantic", ["--embeddings", str(tmp_path / "emb.npy")]),
    ]:
        out = tmp_path / "clusters" / method
        C.main(["--method", method, *base, *extra, "--params", json.dumps({"k": 3}), "--out-dir", str(out)])
        frame = pd.read_csv(out / "assignments.csv", dtype={"id": str})
        assert frame["id"].tolist() == data[0].ids.tolist()
        assert nmi(data[2], frame["cluster"]) > 0.9
        info = json.loads((out / "cluster_info.json").read_text())
        assert info["method"] == method and info["seed"] == 3 and info["params"]["k"] == 3
    assert "k=3" in capsys.readouterr().out


def test_cli_errors(tmp_path, data, capsys):
    features, train = write_inputs(tmp_path, data)
    with pytest.raises(SystemExit) as e:
        C.run_cli(C.main, ["--method", "kmeans", "--features", str(features), "--seed", "0", "--out-dir", "x"])
    assert e.value.code == 1
    assert "unknown clustering method 'kmeans'" in capsys.readouterr().err
    with pytest.raises(InputError, match="needs --train"):
        C.main(["--method", "oracle", "--features", str(features), "--seed", "0", "--out-dir", str(tmp_path / "o")])
    recs = [{"id": "zz", "domain": "a", "instruction": "x", "input": "", "output": "y"}]
    write_jsonl(tmp_path / "bad.jsonl", recs)
    with pytest.raises(InputError, match="sample id 's0' of the features is not in the training pool"):
        C.main(
            ["--method", "random", "--features", str(features), "--train", str(tmp_path / "bad.jsonl")]
            + ["--params", '{"k": 2}', "--seed", "0", "--out-dir", str(tmp_path / "r")]
        )
    with pytest.raises(InputError, match="features file not found"):
        F.load_features(tmp_path / "none.npz")


def test_elrea_clusters_its_own_features_when_present(data):
    """ELREA's branch: ``elrea_features`` (instruction-token gradients) replace ``projected_<elrea_dim>``
    when their width is elrea_dim; the labels equal sklearn's k-means of the row-normalised features."""
    from sklearn.cluster import KMeans

    feats, _, domains, _ = data
    rng = np.random.default_rng(7)
    own = rng.standard_normal((feats.n, 32))
    # Domain-free noise in the projected features, domain structure only in ELREA's own features.
    noise = {p: rng.standard_normal((feats.n, p)).astype(np.float32) for p in feats.projected}
    signal = np.eye(32)[[DOMAIN_DIR[d] for d in domains]] * 5.0 + 0.1 * own
    with_own = F.GradientFeatures(
        ids=feats.ids,
        svd_coords=feats.svd_coords,
        singular_values=feats.singular_values,
        projected=noise,
        elrea_dim=32,
        elrea_features=signal,
    )
    res = C.cluster("elrea", C.ClusterInputs(with_own), {"k": 3, "n_init": 4}, 5)
    assert res.info["feature"] == "elrea_features" and nmi(domains, res.labels) == pytest.approx(1.0)
    unit = signal / np.linalg.norm(signal, axis=1, keepdims=True)
    expected = KMeans(n_clusters=3, n_init=4, random_state=5).fit_predict(unit)
    assert nmi(expected, res.labels) == pytest.approx(1.0)
    # Features of another width are not ELREA's: the projection of elrea_dim is used instead.
    other = F.GradientFeatures(
        ids=feats.ids,
        svd_coords=feats.svd_coords,
        singular_values=feats.singular_values,
        projected=noise,
        elrea_dim=32,
        elrea_features=signal[:, :8],
    )
    fallback = C.cluster("elrea", C.ClusterInputs(other), {"k": 3, "n_init": 4}, 5)
    assert fallback.info["feature"] == "projected_32" and nmi(domains, fallback.labels) < 0.2


def test_random_with_k_auto_takes_the_matched_methods_k(tmp_path, data):
    features, train = write_inputs(tmp_path, data)
    info = tmp_path / "gs_info.json"
    info.write_text(json.dumps({"k": 5}))
    out = tmp_path / "clusters" / "random"
    args = ["--method", "random", "--features", str(features), "--train", str(train), "--seed", "1"]
    C.main([*args, "--params", json.dumps({"k": "auto"}), "--match-k", str(info), "--out-dir", str(out)])
    frame = pd.read_csv(out / "assignments.csv", dtype={"id": str})
    assert frame["cluster"].nunique() == 5
    with pytest.raises(InputError, match="k must be an integer"):
        C.main([*args, "--params", json.dumps({"k": "auto"}), "--out-dir", str(tmp_path / "r2")])


def test_cli_seed_labels_are_the_method_rerun_at_each_seed(tmp_path, data):
    """--seeds 5: seed_labels.csv holds seeds 3..7; seed 3 is assignments.csv, each column is scikit-learn's
    k-means on the row-normalised projection at that random_state (ELREA's rp rule)."""
    from sklearn.cluster import KMeans

    features, train = write_inputs(tmp_path, data)
    out = tmp_path / "clusters" / "rp8"
    params = {"k": 3, "kmeans": {"n_init": 2}, "quality_seeds": 5, "ablation": {"dims": [8]}}
    C.main(
        ["--method", "rp8", "--features", str(features), "--train", str(train), "--seed", "3"]
        + ["--seeds", "5", "--params", json.dumps(params), "--out-dir", str(out)]
    )
    feats = data[0]
    by_seed = AS.read_seed_labels(out / AS.SEED_LABELS_CSV, feats.ids)
    assert sorted(by_seed) == [3, 4, 5, 6, 7]
    assigned = pd.read_csv(out / "assignments.csv", dtype={"id": str})["cluster"].to_numpy()
    assert np.array_equal(by_seed[3], assigned)
    x = feats.projected[8] / np.linalg.norm(feats.projected[8], axis=1, keepdims=True)
    for seed, labels in by_seed.items():
        direct = KMeans(n_clusters=3, n_init=2, random_state=seed).fit_predict(x)
        assert nmi(direct, labels) == pytest.approx(1.0), seed
    with pytest.raises(InputError, match="--seeds must be >= 1"):
        C.main(["--method", "rp8", "--features", str(features), "--seed", "3", "--seeds", "0", "--out-dir", str(out)])
    pd.DataFrame({"id": feats.ids[:-1], "seed_1": 0}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputError, match="ids differ"):
        AS.read_seed_labels(tmp_path / "bad.csv", feats.ids)
