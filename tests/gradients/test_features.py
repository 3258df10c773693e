"""Gradient-feature stage on the tiny model: warm-up, one streaming extract pass, coherence pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from gradient_fixtures import PARAMS, RECORDS, stacked_gradients

from gs.cluster.coherence import cluster_gradient_sums
from gs.cluster.quality import coherence_from_features, coherence_from_sums
from gs.gradients.extraction import extract_features
from gs.gradients.svd import exact_top_svd, principal_angles
from gs.gradients.warmup import run_warmup, warmup_subset
from gs.io import InputError, write_jsonl


@pytest.fixture(scope="module")
def stage(tiny_model_dir, tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("features")
    train = tmp / "train.jsonl"
    write_jsonl(train, RECORDS)
    run_warmup(str(tiny_model_dir), str(train), PARAMS["warmup"], 0, str(tmp / "warmup"))
    extract_features(str(tiny_model_dir), str(tmp / "warmup"), str(train), PARAMS, 0, str(tmp / "grad"))
    return tmp, train


def _plain_torch_warmup(tiny_model_dir) -> list[dict[str, torch.Tensor]]:
    """The warm-up redone as a plain torch loop (AdamW, transformers' linear schedule, the same seeded
    order): Adam's flattened moments after each epoch, from the optimizer itself."""
    from transformers import get_linear_schedule_with_warmup

    from gs.data.prompting import collate, encode_example
    from gs.models.load import load_model, load_tokenizer
    from gs.models.lora import LoraSpec, attach_lora, seed_everything

    w = PARAMS["warmup"]
    seed_everything(0)
    tok = load_tokenizer(tiny_model_dir)
    model = attach_lora(load_model(tiny_model_dir), LoraSpec.from_config(w["lora"]), 0)  # the warm-up's device
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=w["train"]["learning_rate"], weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=0, num_training_steps=4)
    encoded = [encode_example(tok, r, 48, "response") for r in RECORDS]
    gen = torch.Generator().manual_seed(0)
    model.train()
    moments = []
    for _ in range(2):
        order = torch.randperm(8, generator=gen).tolist()
        for start in (0, 4):
            batch = collate([encoded[i] for i in order[start : start + 4]], tok.pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            model(**batch, use_cache=False).loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
        moments.append(
            {k: torch.cat([opt.state[p][k].flatten() for p in params]).cpu() for k in ("exp_avg", "exp_avg_sq")}
        )
    return moments


def test_warmup_writes_adapter_checkpoints_and_adam_moments(stage, tiny_model_dir):
    tmp, _ = stage
    warm = tmp / "warmup"
    assert (warm / "adapter_config.json").is_file()
    ckpts = sorted(warm.glob("checkpoint-*"))
    assert [c.name for c in ckpts] == ["checkpoint-1", "checkpoint-2"]
    summary = json.loads((warm / "training.json").read_text())
    assert summary["steps"] == 4
    # LESS weights each checkpoint by its epoch's mean learning rate. 8 samples, batch 4, 2 epochs:
    # 4 steps, no warm-up; transformers' linear schedule lr * (4 - s) / 4 for s = 0..3 gives
    # epoch 1: lr * (1 + 3/4) / 2, epoch 2: lr * (2/4 + 1/4) / 2.
    lr = PARAMS["warmup"]["train"]["learning_rate"]
    mean_lrs = [json.loads((c / "checkpoint.json").read_text())["mean_lr"] for c in ckpts]
    assert mean_lrs == pytest.approx([lr * 0.875, lr * 0.375], rel=1e-12)
    # d by hand: 2 layers x (q_proj A 2x32 + B 32x2, v_proj A 2x32 + B 16x2) = 2 x 224.
    d = 448
    expected = _plain_torch_warmup(tiny_model_dir)
    for ckpt, ref in zip(ckpts, expected, strict=True):
        moments = torch.load(ckpt / "adam_moments.pt")
        for key in ("exp_avg", "exp_avg_sq"):
            assert moments[key].shape == (d,)
            assert ref[key].abs().sum() > 0
            scale = float(ref[key].abs().max())
            torch.testing.assert_close(moments[key], ref[key].float(), rtol=1e-4, atol=1e-6 * scale)


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
    stacked = stacked_gradients(tiny_model_dir, tmp / "warmup")
    sv, comps = exact_top_svd(stacked, 8)
    ours = np.load(tmp / "grad" / "svd_components.npy").astype(np.float64)
    assert np.degrees(principal_angles(ours, comps)).max() < 0.5
    np.testing.assert_allclose(arrays["singular_values"], sv, rtol=1e-4)
    # Signed comparison against the EXACT components: align each of ours to its exact counterpart
    # (singular vectors are defined up to sign), then components and coordinates must agree.
    signs = np.sign(np.sum(ours * comps, axis=1))
    np.testing.assert_allclose(ours * signs[:, None], comps, atol=1e-4)
    np.testing.assert_allclose(arrays["svd_coords"] * signs, stacked @ comps.T, atol=1e-4)
    # ELREA's features are projections of the instruction-token gradients, not of the response ones.
    inst = stacked_gradients(tiny_model_dir, tmp / "warmup", "instruction")
    from gs.gradients.projection import load_projector

    proj = load_projector(tmp / "grad" / "projector_16.joblib")
    np.testing.assert_allclose(arrays["elrea_features"], proj.transform(inst.astype(np.float32)), atol=1e-4)
    assert not np.allclose(arrays["elrea_features"], arrays["projected_16"], atol=1e-3)
    assert not (tmp / "grad" / ".extract_state").exists()


@pytest.mark.parametrize("sums_on", ["host", "device"])
def test_coherence_pass_equals_the_pairwise_mean_onstacked_gradients(stage, tiny_model_dir, sums_on):
    """Host float64 sums and the float32 sums kept where the gradients are (gradients.coherence_sums: device;
    on this CPU run, the CPU) against numpy on the stacked gradients."""
    tmp, train = stage
    cdir = tmp / "clusters" / "toy"
    cdir.mkdir(parents=True, exist_ok=True)
    labels = [0, 0, 0, 1, 1, 2, 2, 2]
    pd.DataFrame({"id": [r["id"] for r in RECORDS], "cluster": labels}).to_csv(cdir / "assignments.csv", index=False)
    params = {**PARAMS, "coherence_sums": sums_on}
    sums = cluster_gradient_sums(str(tiny_model_dir), str(tmp / "warmup"), str(train), [str(cdir)], params, 0)
    assert sums["toy"]["sums"].dtype == torch.float64
    stacked = stacked_gradients(tiny_model_dir, tmp / "warmup")
    direct = coherence_from_features(stacked, np.array(labels))
    # The CLI passes only the (k, 1) norms; the full sums must give the same answer.
    toy = sums["toy"]
    for given in (toy["sums"], np.sqrt(toy["sq_norms"])[:, None]):
        streamed = coherence_from_sums(given, toy["counts"])
        assert streamed["overall"] == pytest.approx(direct["overall"], abs=1e-5)
        assert streamed["per_cluster"] == pytest.approx(direct["per_cluster"], abs=1e-5)
    # Per-cluster mean pairwise cosine by hand, from the stacked unit rows.
    for c in range(3):
        rows = stacked[np.array(labels) == c]  # float32-normalised (batch of 8, not 3): ~1e-7 apart
        assert toy["sq_norms"][c] == pytest.approx(float(np.square(rows.sum(axis=0)).sum()), rel=1e-6)
        unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        cos = unit @ unit.T
        n = rows.shape[0]
        assert direct["per_cluster"][c] == pytest.approx((cos.sum() - n) / (n * (n - 1)), abs=1e-9)


def test_windows_give_the_features_and_coherence_sums_of_consecutive_batches(stage, tiny_model_dir):
    """projection_rows 2 with batch 2 (windows of one batch, the consecutive batches of before) against 8
    (one window of the 8 records, batched by length): every array of features.npz, the SVD components and
    the coherence sums agree (the SVD sees the same 4 batches of 2 in the same order; at rank 2 the
    truncated result depends on that order)."""
    from gs.data.prompting import encode_example
    from gs.gradients.per_sample import length_batches
    from gs.models.load import load_tokenizer

    tmp, _ = stage
    # The fixture's records come in length order; long and short alternate here, so windows re-batch them.
    pool = [RECORDS[i] for i in (7, 0, 5, 1, 4, 2, 6, 3)]
    train = tmp / "train_shuffled.jsonl"
    write_jsonl(train, pool)
    tok = load_tokenizer(str(tiny_model_dir))
    lengths = [len(encode_example(tok, r, 48, "response")["input_ids"]) for r in pool]
    assert [b.tolist() for b in length_batches(lengths, 2, 8)] != [[0, 1], [2, 3], [4, 5], [6, 7]]  # re-batched
    cdir = tmp / "clusters" / "windows"
    cdir.mkdir(parents=True)
    labels = [0, 1, 0, 1, 1, 2, 2, 0]
    pd.DataFrame({"id": [r["id"] for r in pool], "cluster": labels}).to_csv(cdir / "assignments.csv", index=False)
    got = {}
    for rows in (2, 8):
        params = {**PARAMS, "batch_size": 2, "projection_rows": rows, "svd": {"method": "brand", "rank": 2}}
        out = tmp / f"windows_{rows}"
        extract_features(str(tiny_model_dir), str(tmp / "warmup"), str(train), params, 0, str(out))
        sums = cluster_gradient_sums(str(tiny_model_dir), str(tmp / "warmup"), str(train), [str(cdir)], params, 0)
        got[rows] = (_features(out), np.load(out / "svd_components.npy"), sums["windows"])
    (a, comps_a, sums_a), (b, comps_b, sums_b) = got[2], got[8]
    assert sorted(a) == sorted(b)
    assert a["ids"].tolist() == b["ids"].tolist() == [r["id"] for r in pool]
    for key in sorted(a):
        if a[key].dtype.kind == "f":
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-5, err_msg=key)
        else:
            assert np.array_equal(a[key], b[key]), key
    np.testing.assert_allclose(comps_a, comps_b, atol=1e-5)
    assert np.array_equal(sums_a["counts"], sums_b["counts"])
    np.testing.assert_allclose(sums_a["sums"].numpy(), sums_b["sums"].numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(sums_a["sq_norms"], sums_b["sq_norms"], rtol=1e-6)


@pytest.mark.parametrize(("rows", "saved"), [(2, [1, 2, 3]), (3, [1, 2, 3]), (4, [2]), (6, [3])])
def test_checkpoints_fall_on_window_ends(stage, tiny_model_dir, monkeypatch, rows, saved):
    """checkpoint_every 1, batch 2 (4 batches): a state after every batch with windows of one batch (as
    before windows; projection_rows 3 rounds down to 2), else after each window but the last (windows
    of 2 batches; of 3 then 1 with projection_rows 6)."""
    import gs.gradients.extraction as extraction

    tmp, train = stage
    states = []
    monkeypatch.setattr(extraction, "_save_state", lambda path, payload: states.append(payload))
    params = {**PARAMS, "batch_size": 2, "checkpoint_every": 1, "projection_rows": rows}
    extract_features(str(tiny_model_dir), str(tmp / "warmup"), str(train), params, 0, str(tmp / f"every_{rows}"))
    assert [s["batches"] for s in states] == saved
    assert [len(s["ids"]) for s in states] == [2 * n for n in saved]


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


# 4 batches in windows of 2 (projection_rows 4), a checkpoint after window 1 (batch 2).
RESUME_PARAMS = {**PARAMS, "batch_size": 2, "checkpoint_every": 2, "projection_rows": 4}


def _extract_cli(tiny_model_dir, warmup, train, out, *, die_after: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("GS_TEST_DIE_AFTER_BATCHES", None)
    if die_after is not None:
        env["GS_TEST_DIE_AFTER_BATCHES"] = str(die_after)
    cmd = [
        sys.executable,
        "-m",
        "gs.gradients.extraction",
        "--model-dir",
        str(tiny_model_dir),
        "--warmup",
        str(warmup),
    ]
    cmd += ["--train", str(train), "--params", json.dumps(RESUME_PARAMS), "--seed", "0", "--out-dir", str(out)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _features(out: Path) -> dict[str, np.ndarray]:
    with np.load(out / "features.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.mark.slow  # two CLI subprocesses: ~30 s each on a loaded 2-core machine
def test_killed_extraction_resumes_with_the_same_features(stage, tiny_model_dir, capsys):
    """SIGKILL at the window end after batch 3 (batch 4; checkpoint after batch 2, window 1), rerun: the
    result equals an uninterrupted run (windows of 2 batches: the resumed run forms the same windows)."""
    tmp, train = stage
    warmup = tmp / "warmup"
    killed = tmp / "killed"
    run = _extract_cli(tiny_model_dir, warmup, train, killed, die_after=3)
    assert run.returncode == -9, run.stderr[-2000:]
    state = killed / ".extract_state" / "state.pt"
    assert state.is_file() and not (killed / "features.npz").exists()
    assert torch.load(state, weights_only=True)["batches"] == 2  # window 2's work was lost with the process
    stale = tmp / "stale"
    shutil.copytree(killed / ".extract_state", stale / ".extract_state")

    run = _extract_cli(tiny_model_dir, warmup, train, killed)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "resuming the extraction" in run.stderr and "after 2 batches" in run.stderr
    assert not (killed / ".extract_state").exists()

    whole = tmp / "whole"
    extract_features(str(tiny_model_dir), str(warmup), str(train), RESUME_PARAMS, 0, str(whole))
    a, b = _features(killed), _features(whole)
    assert sorted(a) == sorted(b)
    assert a["ids"].tolist() == b["ids"].tolist() == [r["id"] for r in RECORDS]
    for key in sorted(a):
        if a[key].dtype.kind == "f":
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
        else:
            assert np.array_equal(a[key], b[key]), key
    np.testing.assert_allclose(np.load(killed / "svd_components.npy"), np.load(whole / "svd_components.npy"), atol=1e-6)

    # A state made for other inputs (here another seed) is discarded, not resumed.
    capsys.readouterr()
    extract_features(str(tiny_model_dir), str(warmup), str(train), RESUME_PARAMS, 1, str(stale))
    err = capsys.readouterr().err
    assert "discarding the extraction state" in err and "resuming" not in err
    assert not (stale / ".extract_state").exists() and _features(stale)["ids"].shape == (8,)


def test_frequent_directions_extraction_with_checkpoints(stage, tiny_model_dir):
    """FD (second pass for the coordinates) with a checkpoint after every batch: coordinates are the
    stacked gradients projected on the saved components, and no state is left behind."""
    tmp, train = stage
    params = {**PARAMS, "checkpoint_every": 1, "svd": {"method": "frequent_directions", "rank": 4}}
    out = tmp / "fd"
    summary = extract_features(str(tiny_model_dir), str(tmp / "warmup"), str(train), params, 0, str(out))
    assert summary["second_pass"] is True and summary["svd_method"] == "frequent_directions"
    assert not (out / ".extract_state").exists()
    comps = np.load(out / "svd_components.npy").astype(np.float64)
    stacked = stacked_gradients(tiny_model_dir, tmp / "warmup")
    np.testing.assert_allclose(_features(out)["svd_coords"], stacked @ comps.T, atol=1e-5)


def test_unusable_state_is_discarded_and_nothing_of_it_survives(stage, tiny_model_dir, capsys):
    """A state with this extraction's fingerprint but a broken SVD part (half restorable) and one that
    is not a checkpoint at all: both discarded, and the result equals the stage's clean extraction."""
    from gs.gradients.extraction import extraction_fingerprint
    from gs.gradients.svd import make_online_svd

    tmp, train = stage
    svd = make_online_svd("brand", 8, device="auto")  # the tiny model sits on the default device too
    fingerprint = extraction_fingerprint(str(tiny_model_dir), str(tmp / "warmup"), str(train), PARAMS, 0, svd)
    svd.partial_fit(np.ones((3, 448)))
    broken = {k: v for k, v in svd.state_dict().items() if k != "u_rows"}  # fails after the ids are taken
    payload = {
        "fingerprint": fingerprint,
        "batches": 1,
        "d": 448,
        "ids": ["x", "y", "z"],
        "norms": torch.ones(3),
        "projected": {"8": torch.ones(3, 8), "16": torch.ones(3, 16)},
        "elrea": torch.ones(3, 16),
        "seconds": 0.0,
        "svd": broken,
    }
    with np.load(tmp / "grad" / "features.npz") as f:
        clean = {k: f[k] for k in f.files}
    for bad in (payload, "not a checkpoint"):
        out = tmp / f"broken_{type(bad).__name__}"
        (out / ".extract_state").mkdir(parents=True)
        torch.save(bad, out / ".extract_state" / "state.pt")
        capsys.readouterr()
        extract_features(str(tiny_model_dir), str(tmp / "warmup"), str(train), PARAMS, 0, str(out))
        err = capsys.readouterr().err
        assert "discarding the extraction state" in err
        if isinstance(bad, dict):  # the fingerprint matched: it failed half-way through restoring
            assert "u_rows" in err and "other inputs" not in err
        got = _features(out)
        assert got["ids"].tolist() == clean["ids"].tolist()
        np.testing.assert_allclose(got["svd_coords"], clean["svd_coords"], atol=1e-6)
        np.testing.assert_allclose(got["projected_16"], clean["projected_16"], atol=1e-6)
        assert not (out / ".extract_state").exists()


def test_coherence_sums_location_is_checked():
    from gs.cluster.coherence import coherence_sums_on
    from gs.io import InputError

    assert coherence_sums_on({}) == "host" and coherence_sums_on({"coherence_sums": "device"}) == "device"
    with pytest.raises(InputError, match="gradients.coherence_sums: expected one of host, device, got 'gpu'"):
        coherence_sums_on({"coherence_sums": "gpu"})
