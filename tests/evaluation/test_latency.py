"""Latency benchmark: synthetic artifacts, honest ensemble cost (forward passes), the table and figure."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gs.evaluation.latency import COLUMNS, LATENCY_MODES, main, make_synthetic_suite, measure
from gs.evaluation.routed_model import RoutedLM
from gs.io import InputError

LORA = {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


# Tiny matmuls on a shared 2-core machine: thread hand-offs cost ~50x the work itself.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_ensemble_runs_one_forward_per_expert_per_step(tiny_model_dir, tmp_path):
    from gs.models.lora import LoraSpec

    suite = make_synthetic_suite(
        tiny_model_dir, [3], tmp_path, lora=LoraSpec.from_config(LORA), router_encoder="base", projection_dim=8
    )
    p = suite[3]
    elrea_paths = {k: p[k] for k in ("warmup_dir", "features_path", "projector_path", "assignments_path")}
    systems = {
        "single": RoutedLM(tiny_model_dir, mode="single", experts_dir=p["experts_dir"], router_dir=p["router_dir"]),
        "uniform": RoutedLM(tiny_model_dir, mode="uniform", experts_dir=p["experts_dir"]),
        "elrea": RoutedLM(tiny_model_dir, mode="elrea", experts_dir=p["experts_dir"], **elrea_paths),
        "elrea_top2": RoutedLM(
            tiny_model_dir, mode="elrea", experts_dir=p["experts_dir"], params={"top_m": 2}, **elrea_paths
        ),
    }
    tokens = 4
    # Decoding forwards per token; ELREA adds one (batched) forward for the prompt's gradient.
    expected = {"single": (1, 0), "uniform": (3, 0), "elrea": (3, 1), "elrea_top2": (2, 1)}
    for name, lm in systems.items():
        calls: list[int] = []
        # Count forward passes of the decoder itself (the module every step goes through).
        handle = lm.model.register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        try:
            lm.generate(["What is 2 + 2?"], max_new_tokens=tokens, ignore_eos=True, batch_size=1)
        finally:
            handle.remove()
        per_step, extra = expected[name]
        assert len(calls) == per_step * tokens + extra, name
        assert lm.last_timing["forward_calls"] == per_step * tokens
        assert lm.last_timing["new_tokens"] == tokens
    assert systems["elrea"].last_timing["gradient_s"] > 0


def test_measure_table_figure_and_cli(tiny_model_dir, tmp_path):
    out_csv, out_png = tmp_path / "latency.csv", tmp_path / "fig" / "latency.png"
    params = {
        "lora": LORA,
        "router_encoder": "base",
        "projection_dim": 8,
        "n_experts": [1, 2],
        "max_new_tokens": 3,
        "repeats": 1,
        "throughput_batch": 2,
        "inference": {"temperature": 0.1},
    }
    main(
        [
            "--model-dir",
            str(tiny_model_dir),
            "--params",
            json.dumps(params),
            "--seed",
            "1",
            "--device",
            "cpu",
            "--out-csv",
            str(out_csv),
            "--out-png",
            str(out_png),
        ]
    )
    df = pd.read_csv(out_csv)
    assert list(df.columns) == COLUMNS
    assert sorted(zip(df["mode"], df["n_experts"], strict=True)) == sorted(
        (m, n) for m in LATENCY_MODES for n in (1, 2)
    )
    assert (df["artifacts"] == "synthetic").all()
    for col in ("ttft_s", "per_token_s", "tokens_per_s", "forwards_per_token"):
        assert np.isfinite(df[col]).all() and (df[col] > 0).all(), col
    assert (df["router_s"] >= 0).all() and (df["gradient_s"] >= 0).all()
    assert (df.loc[df["mode"] == "elrea", "gradient_s"] > 0).all()
    assert (df.loc[df["mode"] != "elrea", "gradient_s"] == 0).all()
    # Robust on any machine: an n-expert ensemble runs n forwards per token, single and base one.
    fwd = df.set_index(["mode", "n_experts"])["forwards_per_token"]
    for n in (1, 2):
        assert fwd[("uniform", n)] == n and fwd[("elrea", n)] == n
        assert fwd[("single", n)] == 1 and fwd[("base", n)] == 1
    single = df[df["mode"] == "single"]
    np.testing.assert_allclose(single["per_token_vs_single"], 1.0)
    u = df[(df["mode"] == "uniform") & (df["n_experts"] == 2)].iloc[0]
    s = df[(df["mode"] == "single") & (df["n_experts"] == 2)].iloc[0]
    np.testing.assert_allclose(u["per_token_vs_single"], u["per_token_s"] / s["per_token_s"])
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert df["device"].str.contains("CPU").all()


def test_measure_rejects_bad_settings(tiny_model_dir):
    with pytest.raises(InputError, match="latency mode"):
        measure(tiny_model_dir, modes=["oracle"])
    with pytest.raises(InputError, match="n_experts_list"):
        measure(tiny_model_dir, n_experts_list=[0])


def test_synthetic_suite_loads_the_model_in_its_own_dtype_on_the_device(tiny_model_dir, tmp_path, monkeypatch):
    """No float32 host copy: the base model is loaded once, in the prepared folder's dtype, on the device."""
    import torch

    import gs.models.load
    from gs.models.lora import LoraSpec

    bf16 = tmp_path / "bf16"
    gs.models.load.load_model(tiny_model_dir, device="cpu").to(torch.bfloat16).save_pretrained(bf16)
    gs.models.load.load_tokenizer(tiny_model_dir).save_pretrained(bf16)
    loaded, real = [], gs.models.load.load_model

    def spy(model_dir, *args, **kwargs):
        model = real(model_dir, *args, **kwargs)
        loaded.append((args, kwargs, model.dtype, model.device.type))
        return model

    monkeypatch.setattr(gs.models.load, "load_model", spy)
    suite = make_synthetic_suite(
        bf16, [2], tmp_path / "work", lora=LoraSpec.from_config(LORA), modes=("uniform",), device="cpu"
    )
    assert loaded == [((), {"device": "cpu"}, torch.bfloat16, "cpu")]
    # The adapters it wrote are usable by a model in that dtype.
    lm = RoutedLM(bf16, mode="uniform", experts_dir=suite[2]["experts_dir"], device="cpu")
    assert lm.model.dtype == torch.bfloat16
    assert len(lm.generate(["What is 2 + 2?"], max_new_tokens=2, ignore_eos=True)) == 1
