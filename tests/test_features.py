"""Gradient-feature stage on the tiny model: warm-up, one streaming extract pass, coherence pass."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from gs.features import cluster_gradient_sums, extract_features, run_warmup, warmup_subset
from gs.io import InputError, write_jsonl
from gs.quality import coherence_from_features, coherence_from_sums
from gs.svd import exact_top_svd, principal_angles

RECORDS = [
    {"id": f"s{i}", "domain": d, "instruction": q, "input": "", "output": a}
    for i, (d, q, a) in enumerate(
        [
            ("math", "Add 2 and 3.", "5"),
            ("math", "What is 7 times 6?", "42"),
            ("math", "Subtract 4 from 10.", "6"),
            ("writing", "Write one line about rain.", "Rain taps softly on the roof at night."),
            ("writing", "Describe the sea in a sentence.", "The sea rolls grey and wide under the clouds."),
            ("code", "Write a Python function that doubles x.", "def double(x):\n    return 2 * x"),
            ("code", "Return the length of a list in Python.", "def size(xs):\n    return len(xs)"),
            ("finance", "A $100 deposit earns 5% simple interest for 2 years. Interest?", "10.00"),
        ]
    )
]
PARAMS = {
    "warmup": {
        "fraction": 1.0,
        "lora": {"rank": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "train": {"epochs": 2, "learning_rate": 5e-2, "batch_size": 4, "max_length": 48, "warmup_ratio": 0.0},
    },
    "batch_size": 3,
    "max_length": 48,
    "loss_on": "response",
    "elrea_loss_on": "instruction",
    "normalize": True,
    "svd": {"method": "brand", "rank": 8},  # rank = n: the streamed SVD must equal the stacked one
    "projection": {"kind": "gaussian", "dims": [8], "elrea_dim": 16},
}


@pytest.fixture(scope="module")
def stage(tiny_model_dir, tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("features")
    train = tmp / "train.jsonl"
    write_jsonl(train, RECORDS)
    run_warmup(str(tiny_model_dir), str(train), PARAMS["warmup"], 0, str(tmp / "warmup"))
    extract_features(str(tiny_model_dir), str(tmp / "warmup"), str(train), PARAMS, 0, str(tmp / "grad"))
    return tmp, train


def _stacked_gradients(tiny_model_dir, warmup, loss_on="response"):
    """The reference: every normalised gradient, stacked (what the streaming pass avoids)."""
    from gs.features import _gradient_model, normalise_rows
    from gs.gradients import iter_gradients

    model, tok = _gradient_model(str(tiny_model_dir), str(warmup), "float32")
    grads = torch.cat(
        [
            g
            for _, g in iter_gradients(
                model, tok, RECORDS, batch_size=8, max_length=48, loss_on=loss_on, progress=False
            )
        ]
    )
    return normalise_rows(grads).numpy().astype(np.float64)


def test_warmup_writes_adapter_checkpoints_and_adam_moments(stage):
    tmp, _ = stage
    warm = tmp / "warmup"
    assert (warm / "adapter_config.json").is_file()
    ckpts = sorted(warm.glob("checkpoint-*"))
    assert [c.name for c in ckpts] == ["checkpoint-1", "checkpoint-2"]
    moments = torch.load(ckpts[-1] / "adam_moments.pt")
    assert moments["exp_avg_sq"].abs().sum() > 0, "Adam's second moment must hold the warm-up's gradients"
    summary = json.loads((warm / "training.json").read_text())
    assert summary["steps"] == 4


def test_extract_matches_the_stacked_svd_and_keeps_no_gradients(stage, tiny_model_dir):
    tmp, _ = stage
    with np.load(tmp / "grad" / "features.npz") as f:
        arrays = {k: f[k] for k in f.files}
    assert arrays["ids"].tolist() == [r["id"] for r in RECORDS]
    assert arrays["svd_coords"].shape == (8, 8)
    assert arrays["projected_8"].shape == (8, 8) and arrays["projected_16"].shape == (8, 16)
    assert arrays["elrea_features"].shape == (8, 16)
    assert str(arrays["elrea_loss_on"]) == "instruction"
    assert not any(a.ndim == 2 and a.shape[1] > 100 for a in arrays.values()), "no full gradients stored"
    stacked = _stacked_gradients(tiny_model_dir, tmp / "warmup")
    sv, comps = exact_top_svd(stacked, 8)
    ours = np.load(tmp / "grad" / "svd_components.npy").astype(np.float64)
    assert np.degrees(principal_angles(ours, comps)).max() < 0.5
    np.testing.assert_allclose(arrays["singular_values"], sv, rtol=1e-4)
    np.testing.assert_allclose(np.abs(arrays["svd_coords"]), np.abs(stacked @ ours.T), atol=1e-4)
    # ELREA's features are projections of the instruction-token gradients, not of the response ones.
    inst = _stacked_gradients(tiny_model_dir, tmp / "warmup", "instruction")
    from gs.projection import load_projector

    proj = load_projector(tmp / "grad" / "projector_16.joblib")
    np.testing.assert_allclose(arrays["elrea_features"], proj.transform(inst.astype(np.float32)), atol=1e-4)
    assert not np.allclose(arrays["elrea_features"], arrays["projected_16"], atol=1e-3)


def test_coherence_pass_equals_the_pairwise_mean_on_stacked_gradients(stage, tiny_model_dir):
    tmp, train = stage
    cdir = tmp / "clusters" / "toy"
    cdir.mkdir(parents=True)
    labels = [0, 0, 0, 1, 1, 2, 2, 2]
    pd.DataFrame({"id": [r["id"] for r in RECORDS], "cluster": labels}).to_csv(cdir / "assignments.csv", index=False)
    sums = cluster_gradient_sums(str(tiny_model_dir), str(tmp / "warmup"), str(train), [str(cdir)], PARAMS, 0)
    streamed = coherence_from_sums(sums["toy"]["sums"], sums["toy"]["counts"])
    direct = coherence_from_features(_stacked_gradients(tiny_model_dir, tmp / "warmup"), np.array(labels))
    assert streamed["overall"] == pytest.approx(direct["overall"], abs=1e-5)


def test_bad_inputs(stage, tiny_model_dir):
    tmp, train = stage
    with pytest.raises(InputError, match="warm-up fraction"):
        warmup_subset(RECORDS, 0.0, 0)
    too_big = {**PARAMS, "svd": {"method": "brand", "rank": 50}}
    with pytest.raises(InputError, match="rank=50 is larger than the number of samples n=8"):
        extract_features(str(tiny_model_dir), str(tmp / "warmup"), str(train), too_big, 0, str(tmp / "bad"))
    assert not (tmp / "bad").exists()
    empty_answer = tmp / "empty.jsonl"
    write_jsonl(empty_answer, [{**RECORDS[0], "output": " "}])
    with pytest.raises(InputError, match="field 'output' is empty"):
        extract_features(str(tiny_model_dir), str(tmp / "warmup"), str(empty_answer), PARAMS, 0, str(tmp / "bad2"))
