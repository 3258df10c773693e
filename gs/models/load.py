"""Load a prepared model folder (:mod:`gs.models.prepare`) with its configured dtype and device.

The prepared folder holds ``gs_model.json`` with the configured ``dtype`` and ``device`` (config
``model.dtype``, ``model.device``): the ONE point through which every stage gets them.
:func:`load_model` reads it, so a stage calls ``load_model(model_dir)`` and nothing else.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from gs.io import InputError
from gs.models.dtype import AUTO  # dtype decided per machine where the model runs

DEVICES = ("auto", "cuda", "cpu")
SETTINGS_FILE = "gs_model.json"


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


def run_dtype(model_dir: str | os.PathLike, dtype: str | None = None, device: str | None = None) -> str:
    """The dtype name a stage runs this folder's model in: ``dtype`` or the folder's own, with ``auto``
    decided for the device it runs on (:func:`gs.models.dtype.resolve`: bfloat16 on a GPU that has it, the
    measured faster of float32 and bfloat16 on the CPU)."""
    from gs.models.dtype import model_shapes, resolve

    settings = model_settings(model_dir)
    name = dtype or settings["dtype"]
    if name != AUTO:
        return name
    target = resolve_device(device or settings["device"], where=str(Path(model_dir) / SETTINGS_FILE))
    return resolve(name, target, model_shapes(model_dir))


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
