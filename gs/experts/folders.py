"""An experts folder as :mod:`gs.experts.train` writes it: ``expert_<j>/`` peft adapters (or
``adapter/`` for the multi-task LoRA) and the ``experts.json`` manifest; read by the router, the
routed inference and the latency stage."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gs.io import InputError, read_json

MANIFEST = "experts.json"


MULTITASK_DIR = "adapter"


def expert_dir_name(expert: int) -> str:
    """Folder name of expert ``expert`` inside an experts folder."""
    return f"expert_{expert}"


def load_manifest(experts_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``experts_dir/experts.json``; ``cluster_to_expert`` comes back with int keys.

    Raises:
        InputError: the folder or the manifest is missing or unreadable.
    """
    d = Path(experts_dir)
    if not d.is_dir():
        raise InputError(f"{d}: experts folder not found (run the experts rule)")
    path = d / MANIFEST
    manifest = read_json(path, "experts manifest")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("experts"), list):
        raise InputError(f"{path}: not an experts manifest (no 'experts' list)")
    manifest["cluster_to_expert"] = {int(c): int(e) for c, e in manifest.get("cluster_to_expert", {}).items()}
    return manifest


def expert_dirs(experts_dir: str | os.PathLike) -> dict[int, Path]:
    """``{expert id: adapter folder}`` of an experts folder, each checked to hold a peft adapter.

    Raises:
        InputError: missing folder, manifest, or adapter (``adapter_config.json``), naming the path.
    """
    manifest = load_manifest(experts_dir)
    out: dict[int, Path] = {}
    for entry in manifest["experts"]:
        path = Path(experts_dir) / entry["dir"]
        if not (path / "adapter_config.json").is_file():
            raise InputError(f"{path}: expert {entry['expert']} adapter missing (no adapter_config.json)")
        out[int(entry["expert"])] = path
    return out
