"""Router: encoders, the prompt -> expert classifier, held-out accuracy, persistence, expert checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gs.io import InputError, write_json
from gs.models.embeddings import embed_prompts
from gs.router.train import Router, main, measure_latency

MATH = [
    "What is 17 plus 25?",
    "Compute 144 divided by 12.",
    "Solve for x: 3x + 5 = 20.",
    "What is the square root of 81?",
    "Calculate 15 percent of 240.",
    "If a train travels 60 km per hour for 3 hours, how far does it go?",
    "What is 9 times 14?",
    "Find the area of a rectangle with sides 7 and 9.",
    "Subtract 389 from 1000.",
    "What is the sum of the first ten positive integers?",
    "Simplify the fraction 18/24.",
    "How many minutes are there in 7 hours?",
]
POEMS = [
    "Write a poem about the ocean at night.",
    "Compose a short poem about autumn leaves.",
    "Write a haiku about a quiet mountain lake.",
    "Write a sonnet about lost love.",
    "Compose a poem celebrating the first snow of winter.",
    "Write a rhyming poem about a cat sleeping in the sun.",
    "Write a free verse poem about city lights.",
    "Compose a lullaby poem for a child.",
    "Write a poem about the smell of rain.",
    "Write a limerick about a forgetful wizard.",
    "Compose a poem about friendship and time.",
    "Write a short poem about the moon over the desert.",
]
CODE = [
    "Write a Python function that reverses a string.",
    "Write a Python function to check whether a number is prime.",
    "Implement a Python function that returns the n-th Fibonacci number.",
    "Write a Python function that sorts a list of dictionaries by a key.",
    "Write a Python function that counts the vowels in a string.",
    "Implement binary search as a Python function.",
    "Write a Python function that removes duplicates from a list while keeping order.",
    "Write a Python function that merges two sorted lists.",
    "Write a Python function that flattens a nested list.",
    "Write a Python function to compute the factorial of n recursively.",
    "Write a Python function that checks if a string is a palindrome.",
    "Implement a Python function that parses a CSV line into fields.",
]
TEXTS = MATH + POEMS + CODE
LABELS = [0] * len(MATH) + [1] * len(POEMS) + [2] * len(CODE)
NEW = ["What is 23 times 4?", "Write a poem about spring flowers.", "Write a Python function that adds two numbers."]


@pytest.fixture(scope="module")
def minilm_router():
    return Router("minilm", holdout=0.25, seed=0).fit(TEXTS, LABELS)


def test_minilm_embeddings_are_normalised():
    emb = embed_prompts(NEW, "minilm")
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_minilm_router_separates_domains(minilm_router):
    m = minilm_router.metrics
    assert m["holdout_strategy"] == "stratified" and m["n_heldout"] == 9
    assert m["heldout_accuracy"] > 0.8
    assert m["majority_baseline_accuracy"] < 0.5  # 3 balanced classes: the baseline is a third
    assert m["train_accuracy"] == 1.0
    assert minilm_router.predict(NEW).tolist() == [0, 1, 2]
    proba = minilm_router.predict_proba(NEW)
    assert proba.shape == (3, 3)
    np.testing.assert_allclose(proba.sum(1), 1.0)


def test_deterministic_under_seed(minilm_router):
    # Embeddings are recomputed (a separate encoder call) and the classifier refitted with the same seed.
    X = minilm_router.embed(TEXTS)
    again = Router("minilm", holdout=0.25, seed=0).fit_embeddings(X, LABELS)
    assert again.metrics == minilm_router.metrics
    np.testing.assert_array_equal(again.predict_proba_embeddings(X), minilm_router.predict_proba_embeddings(X))


def test_save_load_round_trip(minilm_router, tmp_path):
    minilm_router.save(tmp_path / "router", extra={"latency_ms_per_prompt": 1.0})
    loaded = Router.load(tmp_path / "router", experts=[0, 1, 2])
    assert loaded.expert_ids == [0, 1, 2] and loaded.encoder == "minilm"
    probe = NEW + TEXTS[::4]
    X = minilm_router.embed(probe)
    np.testing.assert_array_equal(loaded.predict(probe), minilm_router.predict_embeddings(X))
    np.testing.assert_array_equal(loaded.predict_proba_embeddings(X), minilm_router.predict_proba_embeddings(X))
    assert json.loads((tmp_path / "router" / "router.json").read_text())["latency_ms_per_prompt"] == 1.0


def test_unknown_expert(minilm_router, tmp_path):
    with pytest.raises(InputError, match=r"does not know expert 7; its experts are \[0, 1, 2\]"):
        minilm_router.check_expert(7)
    minilm_router.save(tmp_path / "router")
    with pytest.raises(InputError, match=r"does not know expert 3"):
        Router.load(tmp_path / "router", experts=[0, 1, 2, 3])
    with pytest.raises(InputError, match=r"expert\(s\) \[2\] that are not among the available experts \[0, 1\]"):
        Router.load(tmp_path / "router", experts=[0, 1])
    with pytest.raises(InputError, match="does not know expert 5"):
        Router("minilm").fit_embeddings(np.zeros((2, 3)), [0, 5], expert_ids=[0, 1])
    with pytest.raises(InputError, match="router file not found"):
        Router.load(tmp_path / "nowhere")


def test_single_expert_routes_everything_to_it(tmp_path):
    router = Router("minilm", seed=1).fit(TEXTS[:5], [4] * 5)
    assert router.expert_ids == [4]
    assert router.predict(NEW).tolist() == [4, 4, 4]
    np.testing.assert_array_equal(router.predict_proba(NEW), np.ones((3, 1)))
    assert router.metrics["heldout_accuracy"] == 1.0
    router.save(tmp_path / "r")
    assert Router.load(tmp_path / "r", experts=[4]).predict(["anything"]).tolist() == [4]


def test_holdout_falls_back_when_a_class_is_too_small():
    # Class 2 has one sample: a stratified split is impossible, so the split is random (seeded).
    X = np.random.default_rng(0).normal(size=(11, 4))
    router = Router("minilm", holdout=0.3, seed=0).fit_embeddings(X, [0] * 5 + [1] * 5 + [2])
    assert router.metrics["holdout_strategy"] == "random" and router.metrics["n_heldout"] == 4
    assert router.expert_ids == [0, 1, 2]
    none = Router("minilm", holdout=0.0).fit_embeddings(X, [0] * 5 + [1] * 6)
    assert none.metrics["holdout_strategy"] == "none" and none.metrics["heldout_accuracy"] is None


def _masked_mean_hidden(model_dir, texts: list[str]) -> np.ndarray:
    """Each text's mean last hidden state over its own tokens, from a plain transformers ``AutoModel``
    run on one unpadded text at a time (n, h)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    body = AutoModel.from_pretrained(model_dir).eval()  # the decoder without the LM head
    out = []
    with torch.no_grad():
        for text in texts:
            ids = tok(text, return_tensors="pt")["input_ids"]
            out.append(body(input_ids=ids).last_hidden_state[0].mean(0).numpy())
    return np.stack(out)


def test_base_encoder_on_tiny_model(tiny_model_dir):
    texts = [*NEW, "x"]  # lengths differ: in a batch of 2 the shorter prompt is padded
    emb = embed_prompts(texts, "base", model_dir=tiny_model_dir, batch_size=2)
    assert emb.shape == (4, 32) and emb.dtype == np.float32
    # The embedding is the mean of the last hidden state over the prompt's tokens, padding excluded.
    np.testing.assert_allclose(emb, _masked_mean_hidden(tiny_model_dir, texts), rtol=1e-4, atol=1e-5)
    router = Router("base", model_dir=tiny_model_dir, holdout=0.25, seed=0).fit(TEXTS, LABELS)
    assert router.metrics["embedding_dim"] == 32 and router.metrics["n_heldout"] == 9
    assert router.expert_ids == [0, 1, 2]
    proba = router.predict_proba(TEXTS)
    assert proba.shape == (len(TEXTS), 3)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
    # Each prediction is the expert of the most probable column.
    predicted = router.predict(TEXTS)
    np.testing.assert_array_equal(predicted, np.asarray(router.expert_ids)[proba.argmax(1)])
    # The reported training accuracy is that of these predictions (the final classifier is fit on all).
    assert router.metrics["train_accuracy"] == pytest.approx(float(np.mean(predicted == np.asarray(LABELS))))
    with pytest.raises(InputError, match="needs the base model folder"):
        embed_prompts(NEW, "base")


def test_predictions_follow_the_probabilities_with_non_contiguous_experts():
    # Expert ids 3, 7, 9 (clusters merged away): columns are in expert_ids order, predictions are ids.
    rng = np.random.default_rng(0)
    centers = np.array([[4.0, 0.0], [0.0, 4.0], [-4.0, -4.0]])
    X = np.concatenate([c + rng.normal(size=(8, 2)) for c in centers])
    y = np.repeat([7, 3, 9], 8)
    router = Router("minilm", holdout=0.0, seed=0).fit_embeddings(X, y)
    assert router.expert_ids == [3, 7, 9]
    probe = np.concatenate([centers, rng.normal(size=(20, 2)) * 3])
    proba = router.predict_proba_embeddings(probe)
    np.testing.assert_array_equal(router.predict_embeddings(probe), np.array([3, 7, 9])[proba.argmax(1)])
    np.testing.assert_array_equal(router.predict_embeddings(centers), [7, 3, 9])
    assert (proba[np.arange(3), [1, 0, 2]] > 0.8).all()  # column of 7, of 3, of 9


def test_unknown_encoder():
    with pytest.raises(InputError, match="unknown router encoder 'bert'"):
        embed_prompts(NEW, "bert")


def test_latency_is_measured(minilm_router):
    latency = measure_latency(minilm_router, NEW, n=2)
    assert latency["latency_prompts"] == 2 and latency["latency_ms_per_prompt"] > 0


def test_cli(tmp_path, capsys):
    records = [
        {"id": f"s{i}", "domain": "d", "instruction": t, "input": "", "output": "x"} for i, t in enumerate(TEXTS)
    ]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in records))
    # Clusters 0, 1, 2 with cluster 3 (no samples here) merged: experts are what the manifest says.
    pd.DataFrame({"id": [r["id"] for r in records], "cluster": LABELS}).to_csv(tmp_path / "a.csv", index=False)
    experts = tmp_path / "experts"
    write_json(
        experts / "experts.json",
        {"method": "toy", "cluster_to_expert": {"0": 0, "1": 1, "2": 2}, "experts": [{"expert": j} for j in range(3)]},
    )
    out = tmp_path / "router"
    params = {"encoder": "minilm", "holdout": 0.25, "C": 1.0, "max_iter": 500, "latency_prompts": 4}
    main(
        [
            "--train",
            str(train),
            "--experts",
            str(experts),
            "--assignments",
            str(tmp_path / "a.csv"),
            "--params",
            json.dumps(params),
            "--seed",
            "0",
            "--out",
            str(out),
        ]
    )
    report = json.loads((out / "router.json").read_text())
    assert (out / "router.joblib").is_file()
    for key in ("train_accuracy", "heldout_accuracy", "n_heldout", "encoder", "majority_baseline_accuracy"):
        assert key in report
    assert report["heldout_accuracy"] > 0.8 and report["latency_ms_per_prompt"] > 0
    assert report["method"] == "toy" and report["expert_ids"] == [0, 1, 2]
    assert [r["seed"] for r in report["heldout_by_seed"]] == [0]  # eval_seeds defaults to 1 outside the config
    assert report["heldout_by_seed"][0]["heldout_accuracy"] == report["heldout_accuracy"]
    assert "held-out acc" in capsys.readouterr().out


def test_cli_plans_the_experts_from_the_assignments(tmp_path):
    """--expert-params: the router learns the cluster -> expert map the experts' rule would plan (worked
    out by hand below), the same router as one given a trained experts folder with that manifest."""
    records = [{"id": f"s{i}", "instruction": t, "output": "x"} for i, t in enumerate(TEXTS)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in records))
    # Math in clusters 5 (10 prompts) and 9 (2), poems in 1 (12), code in 3 (12). min_cluster_size 3 and
    # "merge": cluster 9 goes to the largest cluster, 1 (tied with 3 at 12; the lower id wins); experts
    # are numbered over the kept clusters in ascending order: 1 -> 0, 3 -> 1, 5 -> 2, and 9 -> 0.
    clusters = [5] * 10 + [9] * 2 + [1] * len(POEMS) + [3] * len(CODE)
    pd.DataFrame({"id": [r["id"] for r in records], "cluster": clusters}).to_csv(tmp_path / "a.csv", index=False)
    hand_map = {"1": 0, "3": 1, "5": 2, "9": 0}
    experts = tmp_path / "experts"
    write_json(
        experts / "experts.json",
        {"method": "toy", "cluster_to_expert": hand_map, "experts": [{"expert": j} for j in range(3)]},
    )
    params = json.dumps({"encoder": "minilm", "holdout": 0.25, "max_iter": 500, "latency_prompts": 2})
    common = ["--train", str(train), "--assignments", str(tmp_path / "a.csv"), "--params", params, "--seed", "0"]
    expert_params = json.dumps({"min_cluster_size": 3, "small_clusters": "merge", "lora": {}})
    main([*common, "--expert-params", expert_params, "--method", "toy", "--out", str(tmp_path / "planned")])
    main([*common, "--experts", str(experts), "--out", str(tmp_path / "manifest")])
    planned = json.loads((tmp_path / "planned" / "router.json").read_text())
    assert planned["expert_ids"] == [0, 1, 2] and planned["method"] == "toy"
    assert "planned" in planned["experts_dir"]
    a = Router.load(tmp_path / "planned", experts=[0, 1, 2])
    b = Router.load(tmp_path / "manifest", experts=[0, 1, 2])
    assert a.predict(NEW).tolist() == b.predict(NEW).tolist() == [2, 0, 1]
    np.testing.assert_array_equal(a.predict(TEXTS), b.predict(TEXTS))


def test_cli_expert_params_need_assignments_and_their_keys(tmp_path, capsys):
    from gs.io import run_cli

    train = tmp_path / "train.jsonl"
    train.write_text(
        "".join(json.dumps({"id": str(i), "instruction": t, "output": "x"}) + "\n" for i, t in enumerate(NEW))
    )
    pd.DataFrame({"id": ["0", "1", "2"], "cluster": [0, 1, 1]}).to_csv(tmp_path / "a.csv", index=False)
    argv = ["--train", str(train), "--params", "{}", "--seed", "0", "--out", str(tmp_path / "r")]
    with pytest.raises(SystemExit):
        run_cli(main, [*argv, "--expert-params", '{"min_cluster_size": 1, "small_clusters": "merge"}'])
    assert "--assignments is needed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(main, [*argv, "--assignments", str(tmp_path / "a.csv"), "--expert-params", '{"min_cluster_size": 1}'])
    assert "missing key 'small_clusters'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_cli_single_expert_needs_no_assignments(tmp_path, capsys):
    from gs.io import run_cli

    train = tmp_path / "train.jsonl"
    train.write_text(
        "".join(json.dumps({"id": str(i), "instruction": t, "output": "x"}) + "\n" for i, t in enumerate(NEW))
    )
    experts = tmp_path / "multitask"
    write_json(experts / "experts.json", {"method": "multitask", "cluster_to_expert": {}, "experts": [{"expert": 0}]})
    argv = ["--train", str(train), "--experts", str(experts), "--params", "{}", "--seed", "0", "--out"]
    main([*argv, str(tmp_path / "r1")])
    assert Router.load(tmp_path / "r1", experts=[0]).predict(["anything"]).tolist() == [0]
    write_json(experts / "experts.json", {"cluster_to_expert": {}, "experts": [{"expert": 0}, {"expert": 1}]})
    with pytest.raises(SystemExit):
        run_cli(main, [*argv, str(tmp_path / "r2")])
    assert "2 experts, so --assignments is needed" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()


def test_heldout_by_seed_against_sklearn_directly():
    """Each seed: scikit-learn's stratified split and a standardised logistic regression at that seed."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    X = (rng.standard_normal((60, 6)) + 0.9 * np.eye(6)[y]).astype(np.float32)  # overlapping classes
    router = Router("minilm", holdout=0.25, seed=0, max_iter=500).fit_embeddings(X, y)
    rows = router.heldout_by_seed(X, y, [0, 1, 2, 3, 4])
    assert [r["seed"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[0]["heldout_accuracy"] == pytest.approx(router.metrics["heldout_accuracy"])
    for r in rows:
        tr, te = train_test_split(np.arange(60), test_size=15, stratify=y, random_state=r["seed"])
        scaler = StandardScaler().fit(X[tr])
        clf = LogisticRegression(max_iter=500, random_state=r["seed"]).fit(scaler.transform(X[tr]), y[tr])
        assert r["heldout_accuracy"] == pytest.approx(np.mean(clf.predict(scaler.transform(X[te])) == y[te]))
        assert r["majority_baseline_accuracy"] == pytest.approx(5 / 15) and r["n_heldout"] == 15
    assert len({r["heldout_accuracy"] for r in rows}) > 1  # the splits differ


def test_router_table_spread(tmp_path):
    from gs.router.table import main as table_main

    accs = {"a": [0.8, 0.9, 0.85, 0.7, 0.95], "b": [0.5]}
    for method, values in accs.items():
        info = {"encoder": "minilm", "expert_ids": [0, 1], "n_heldout": 20, "train_accuracy": 1.0}
        info["latency_ms_per_prompt"] = 12.5
        info["heldout_by_seed"] = [
            {"seed": s, "heldout_accuracy": v, "majority_baseline_accuracy": 0.25} for s, v in enumerate(values)
        ]
        write_json(tmp_path / method / "router.json", info)
    write_json(tmp_path / "old" / "router.json", {"heldout_accuracy": 0.6, "majority_baseline_accuracy": 0.3})
    table_main(["--routers", *(f"{m}={tmp_path / m}" for m in ("a", "b", "old")), "--out-table", str(tmp_path / "t")])
    df = pd.read_csv(tmp_path / "t.csv").set_index("method")
    a = np.array(accs["a"])
    assert df.loc["a", "seeds"] == 5 and df.loc["a", "heldout_accuracy_mean"] == pytest.approx(a.mean())
    assert df.loc["a", "heldout_accuracy_sd"] == pytest.approx(a.std(ddof=1))
    assert (df.loc["a", "heldout_accuracy_min"], df.loc["a", "heldout_accuracy_max"]) == (a.min(), a.max())
    assert df.loc["b", "seeds"] == 1 and np.isnan(df.loc["b", "heldout_accuracy_sd"])
    assert df.loc["old", "heldout_accuracy_mean"] == 0.6 == df.loc["old", "heldout_accuracy"]
    md = (tmp_path / "t.md").read_text()
    assert f"| a | 2 | minilm | 5 | {a.mean():.3f} ± {a.std(ddof=1):.3f} [0.700, 0.950]" in md
    with pytest.raises(InputError, match="METHOD=folder"):
        table_main(["--routers", "a", "--out-table", str(tmp_path / "t")])
