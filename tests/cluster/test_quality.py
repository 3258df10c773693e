"""Cluster quality: external scores, the coherence identity, the table, the plot and the CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import normalized_mutual_info_score

from gs.cluster import assignments as AS
from gs.cluster import features as F
from gs.cluster import methods as C
from gs.cluster import quality as Q
from gs.io import InputError, write_jsonl


def test_purity_hand_computed():
    labels = [0, 0, 0, 1, 1, 2]
    domains = ["a", "a", "b", "b", "b", "c"]
    # cluster 0: majority a (2), cluster 1: b (2), cluster 2: c (1) -> 5/6
    assert Q.purity(labels, domains) == pytest.approx(5 / 6)
    s = Q.external_scores(labels, domains)
    assert set(s) == {"nmi", "ari", "purity"} and s["purity"] == pytest.approx(5 / 6)
    perfect = Q.external_scores([2, 2, 0, 0, 1], ["x", "x", "y", "y", "z"])
    assert perfect == pytest.approx({"nmi": 1.0, "ari": 1.0, "purity": 1.0})
    with pytest.raises(InputError, match="same length"):
        Q.external_scores([0, 1], ["a"])


def per(res) -> np.ndarray:
    """``per_cluster`` as floats, ``None`` -> NaN."""
    return np.array([np.nan if v is None else v for v in res["per_cluster"]])


def direct_pairwise(x: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    out = {}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        pairs = [float(u[i] @ u[j]) for i, j in itertools.permutations(idx, 2)]
        out[int(c)] = float(np.mean(pairs)) if pairs else float("nan")
    return out


def test_coherence_identity_and_singletons():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((13, 9)) * rng.uniform(0.1, 5.0, size=(13, 1))  # arbitrary norms
    labels = np.array([0] * 5 + [1] * 4 + [2] + [3] * 3)  # cluster 2 is a singleton
    direct = direct_pairwise(x, labels)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    sums = np.stack([u[labels == c].sum(axis=0) for c in range(4)])
    counts = np.bincount(labels)
    from_sums = Q.coherence_from_sums(sums, counts)
    from_feats = Q.coherence_from_features(x, labels)
    for c in (0, 1, 3):
        assert from_sums["per_cluster"][c] == pytest.approx(direct[c], abs=1e-12)
    assert from_sums["per_cluster"][2] is None and from_feats["per_cluster"][2] is None
    np.testing.assert_allclose(per(from_feats), per(from_sums), equal_nan=True)
    assert from_sums["counts"] == [5, 4, 1, 3] and from_sums["weights"] == "samples"
    json.dumps(from_sums, allow_nan=False)  # JSON-ready as is
    w = np.array([5, 4, 3])
    expected = float(np.sum(w * np.array([direct[0], direct[1], direct[3]])) / w.sum())
    assert from_sums["overall"] == pytest.approx(expected) and from_feats["overall"] == pytest.approx(expected)
    # pair weights = the mean over all within-cluster ordered pairs
    all_pairs = [
        float(u[i] @ u[j]) for c in (0, 1, 3) for i, j in itertools.permutations(np.flatnonzero(labels == c), 2)
    ]
    assert Q.coherence_from_sums(sums, counts, weights="pairs")["overall"] == pytest.approx(np.mean(all_pairs))


def test_coherence_streaming_and_checks():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20, 6))
    labels = rng.integers(0, 3, size=20)
    acc = Q.ClusterSums(3, 6)
    for start in range(0, 20, 7):
        acc.add(x[start : start + 7], labels[start : start + 7])
    np.testing.assert_allclose(per(acc.coherence()), per(Q.coherence_from_features(x, labels)))
    only_singletons = Q.coherence_from_sums(np.eye(2), [1, 1])
    assert only_singletons["overall"] is None and only_singletons["per_cluster"] == [None, None]
    with pytest.raises(InputError, match="L2-normalised"):
        Q.coherence_from_sums(np.array([[3.0, 0.0]]), [2])  # ||S||^2 = 9 > n^2 = 4
    with pytest.raises(InputError, match="row 1 is zero"):
        Q.ClusterSums(1, 2).add(np.array([[1.0, 0.0], [0.0, 0.0]]), [0, 0])
    # identical directions: coherence 1; opposite pair: -1
    same = Q.coherence_from_features(np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, -3.0]]), [0, 0, 1, 1])
    assert same["per_cluster"] == pytest.approx([1.0, -1.0]) and same["overall"] == pytest.approx(0.0)


def test_quality_table():
    domains = ["a"] * 4 + ["b"] * 4
    methods = {"oracle": ([0] * 4 + [1] * 4, None), "mixed": ([0, 1] * 4, {"k": 2}), "one": ([0] * 8, None)}
    table = Q.quality_table(methods, domains, {"oracle": 0.5, "mixed": None})
    assert list(table.columns) == list(Q.QUALITY_COLUMNS)
    assert table["method"].tolist() == ["oracle", "mixed", "one"]
    assert table["k"].tolist() == [2, 2, 1] and table["sizes"].tolist() == ["4/4", "4/4", "8"]
    assert table.loc[0, "nmi"] == pytest.approx(1.0) and table.loc[0, "coherence"] == 0.5
    assert np.isnan(table.loc[1, "coherence"]) and np.isnan(table.loc[2, "coherence"])
    assert table.loc[1, "nmi"] == pytest.approx(0.0, abs=1e-12)
    md = Q.table_markdown(table)
    assert md.startswith("| method | k | nmi |") and "n/a" in md


def test_plot_written(tmp_path):
    rng = np.random.default_rng(0)
    coords = rng.standard_normal((40, 3))
    domains = ["a", "b", "c", "d"] * 10
    path = Q.plot_clusters(
        coords, {"m1": rng.integers(0, 3, 40), "m2": np.arange(40) % 25}, domains, tmp_path / "fig" / "c.png"
    )
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["c.png"]  # no temporary left behind
    Q.plot_clusters(coords[:, :1], {}, domains, tmp_path / "one.png")  # r = 1 works too
    with pytest.raises(InputError, match="labels for 40 samples"):
        Q.plot_clusters(coords, {"bad": [0, 1]}, domains, tmp_path / "bad.png")


def test_cli(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 30
    ids = np.asarray([f"id{i}" for i in range(n)])
    domains = ["math", "code", "finance"] * 10
    coords = rng.standard_normal((n, 4))
    np.savez(tmp_path / "features.npz", ids=ids, svd_coords=coords, singular_values=np.array([4.0, 3, 2, 1]))
    write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"id": i, "domain": d, "instruction": "q", "input": "", "output": "a"}
            for i, d in zip(ids, domains, strict=True)
        ][::-1],
    )
    feats = F.load_features(tmp_path / "features.npz")
    dirs = []
    for method, params in [("oracle", {}), ("random", {"k": 3})]:
        res = C.cluster(method, C.ClusterInputs(feats, domains=domains), params, seed=0)
        out = tmp_path / "clusters" / method
        AS.write_assignments(out / "assignments.csv", ids, res.labels, res.info)
        dirs.append(str(out))
    (tmp_path / "coh.json").write_text(json.dumps({"oracle": 0.4, "random": {"overall": 0.1}}))
    out_csv, out_md, out_png = tmp_path / "q.csv", tmp_path / "q.md", tmp_path / "figs" / "c.png"
    Q.main(
        ["--features", str(tmp_path / "features.npz"), "--train", str(tmp_path / "train.jsonl")]
        + ["--clusters", *dirs, "--coherence", str(tmp_path / "coh.json")]
        + ["--out-csv", str(out_csv), "--out-md", str(out_md), "--out-png", str(out_png)]
    )
    table = pd.read_csv(out_csv)
    assert table["method"].tolist() == ["oracle", "random"]
    assert table.loc[0, "nmi"] == pytest.approx(1.0) and table.loc[0, "purity"] == pytest.approx(1.0)
    assert table["coherence"].tolist() == pytest.approx([0.4, 0.1])
    assert "| oracle |" in out_md.read_text() and out_png.stat().st_size > 1000
    assert "2 clustering(s)" in capsys.readouterr().out
    # an assignment file missing a sample is a one-line error
    pd.DataFrame({"id": ids[:-1], "cluster": 0}).to_csv(
        tmp_path / "clusters" / "random" / "assignments.csv", index=False
    )
    with pytest.raises(InputError, match="sample 'id29' has no cluster"):
        Q.main(
            ["--features", str(tmp_path / "features.npz"), "--train", str(tmp_path / "train.jsonl")]
            + ["--clusters", *dirs, "--out-csv", str(out_csv), "--out-md", str(out_md), "--out-png", str(out_png)]
        )


def test_seed_quality_and_summary_against_numpy():
    rng = np.random.default_rng(4)
    g = rng.standard_normal((12, 30))
    unit = g / np.linalg.norm(g, axis=1, keepdims=True)
    domains = ["a", "b", "c"] * 4
    by_seed = {"m": {0: np.arange(12) % 3, 1: np.array([0] * 6 + [1] * 6), 2: np.arange(12) % 2}}
    per_seed = Q.seed_quality(by_seed, domains, gram=unit @ unit.T)
    assert per_seed["seed"].tolist() == [0, 1, 2] and per_seed["k"].tolist() == [3, 2, 2]
    np.testing.assert_allclose(Q.unit_gram(g * np.arange(1, 13)[:, None], block=7), unit @ unit.T, atol=1e-12)
    for row, labels in zip(per_seed.itertuples(), by_seed["m"].values(), strict=True):
        cos = unit @ unit.T
        per, sizes = [], []
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            per.append((cos[np.ix_(idx, idx)].sum() - len(idx)) / (len(idx) * (len(idx) - 1)))
            sizes.append(len(idx))
        assert row.coherence == pytest.approx(np.dot(per, sizes) / np.sum(sizes))
        assert row.nmi == pytest.approx(normalized_mutual_info_score(domains, labels))
    assert per_seed.loc[0, "nmi"] == pytest.approx(1.0)
    # Without the Gram matrix: the coherence pass's value where the labels are the measured clustering.
    fallback = Q.seed_quality(by_seed, domains, main_labels={"m": by_seed["m"][1]}, main_coherence={"m": 0.25})
    assert fallback["coherence"].isna().tolist() == [True, False, True] and fallback.loc[1, "coherence"] == 0.25
    table = Q.seed_summary(per_seed)
    assert table.loc[0, "k"] == "2-3" and table.loc[0, "seeds"] == 3
    assert table.loc[0, "ari_mean"] == pytest.approx(per_seed["ari"].mean())
    assert table.loc[0, "ari_sd"] == pytest.approx(np.std(per_seed["ari"], ddof=1))
    assert (table.loc[0, "nmi_min"], table.loc[0, "nmi_max"]) == (per_seed["nmi"].min(), per_seed["nmi"].max())
    md = Q.seed_summary_markdown(table, "from kept gradients.")
    assert "| m | 2-3 | 3 |" in md and "±" in md


def test_cli_over_seeds_with_kept_gradients(tmp_path):
    rng = np.random.default_rng(5)
    n = 24
    ids = np.asarray([f"id{i}" for i in range(n)])
    domains = ["math", "code", "finance"] * 8
    g = rng.standard_normal((n, 50)).astype(np.float32)
    np.save(tmp_path / "gradients.npy", g)
    np.savez(tmp_path / "features.npz", ids=ids, svd_coords=g[:, :3])
    write_jsonl(tmp_path / "train.jsonl", [{"id": i, "domain": d} for i, d in zip(ids, domains, strict=True)])
    feats = F.load_features(tmp_path / "features.npz")
    out = tmp_path / "clusters" / "random"
    labels = {s: C.cluster("random", C.ClusterInputs(feats), {"k": 3}, seed=s).labels for s in range(5)}
    AS.write_assignments(out / "assignments.csv", ids, labels[0], {"k": 3})
    AS.write_seed_labels(out / AS.SEED_LABELS_CSV, ids, labels)
    Q.main(
        ["--features", str(tmp_path / "features.npz"), "--train", str(tmp_path / "train.jsonl")]
        + ["--clusters", str(out), "--gradients", str(tmp_path / "gradients.npy")]
        + [
            "--out-csv",
            str(tmp_path / "q.csv"),
            "--out-md",
            str(tmp_path / "q.md"),
            "--out-png",
            str(tmp_path / "c.png"),
        ]
        + ["--out-seeds", str(tmp_path / "s.csv"), "--out-table", str(tmp_path / "t" / "cluster_quality")]
    )
    per_seed = pd.read_csv(tmp_path / "s.csv")
    table = pd.read_csv(tmp_path / "t" / "cluster_quality.csv")
    assert per_seed["seed"].tolist() == [0, 1, 2, 3, 4] and table.loc[0, "seeds"] == 5
    unit = g.astype(np.float64) / np.linalg.norm(g, axis=1, keepdims=True)
    for s in range(5):
        expected = Q.coherence_from_features(unit, labels[s])["overall"]
        assert per_seed.loc[s, "coherence"] == pytest.approx(expected, abs=1e-6)
    assert table.loc[0, "nmi_mean"] == pytest.approx(
        np.mean([normalized_mutual_info_score(domains, labels[s]) for s in range(5)])
    )
    assert "kept full gradients" in (tmp_path / "t" / "cluster_quality.md").read_text()
