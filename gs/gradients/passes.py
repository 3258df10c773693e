"""A gradient pass over (a slice of) the pool: the model with the warm-up adapter, its per-sample
gradients window by window, and the pool's contiguous slices for the sharded passes.

Shared by every gradient pass: the extraction (:mod:`gs.gradients.extraction`), its shards
(:mod:`gs.gradients.shards`), the coherence pass (:mod:`gs.cluster.coherence`) and LESS's influence
shards (:mod:`gs.selection.influence_shards`).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch

from gs.gradients.svd import resolve_device
from gs.io import InputError
from gs.models.load import load_model, load_tokenizer
from gs.models.lora import load_adapter


def normalise_rows(grads: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """Rows of ``grads`` ``(b, d)`` scaled to unit L2 norm; zero rows stay zero (no NaN), as LESS's
    ``normalize``. ``inplace``: divide ``grads`` itself (no second ``(b, d)`` block)."""
    norms = grads.norm(dim=1, keepdim=True).clamp_min(torch.finfo(grads.dtype).tiny)
    return grads.div_(norms) if inplace else grads / norms


def gradient_model(model_dir: str, warmup_dir: str) -> tuple[Any, Any]:
    """The prepared model (its saved dtype and device) with the warm-up adapter, and its tokenizer."""
    model = load_adapter(load_model(model_dir), warmup_dir, trainable=True)
    return model, load_tokenizer(model_dir)


def gradient_window(params: dict[str, Any]) -> int:
    """The window of a ``gradients`` section's passes (:func:`gs.gradients.per_sample.iter_gradients`):
    ``gradients.projection_rows`` rounded down to a multiple of ``batch_size``, at least one batch,
    ``max(1, projection_rows // batch_size) * batch_size``. Records are batched by length inside a
    window (less padding) and a buffered projection (:func:`gs.gradients.projection.project_in_buffers`)
    gets one window a call."""
    from gs.checks import int_param
    from gs.gradients.projection import projection_rows

    batch_size = int_param(params["batch_size"], "gradients.batch_size", minimum=1)
    return max(1, projection_rows(params) // batch_size) * batch_size


def pool_gradients(
    model: Any,
    tok: Any,
    records: list[dict[str, Any]],
    params: dict[str, Any],
    *,
    loss_on: str | None = None,
    progress: bool = True,
    on_device: bool = False,
):
    """:func:`gs.gradients.per_sample.iter_gradients` with the ``gradients`` config's batch size, length and
    loss, window by window (:func:`gradient_window`): ``(ids, (w, d))`` blocks in input order."""
    from gs.gradients.per_sample import iter_gradients

    return iter_gradients(
        model,
        tok,
        records,
        batch_size=int(params["batch_size"]),
        max_length=int(params["max_length"]),
        loss_on=loss_on or params.get("loss_on", "response"),
        progress=progress,
        on_device=on_device,
        window=gradient_window(params),
    )


def state_device(model: Any, params: dict[str, Any]) -> tuple[torch.device, bool]:
    """The device of the streaming state (config ``svd.device``; ``auto``: the model's) and whether
    it is the model's, in which case gradients stay there."""
    model_device = next(model.parameters()).device
    name = params["svd"].get("device", "auto")
    device = model_device if name == "auto" else resolve_device(name)
    return device, device == model_device


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """``S`` contiguous ``[start, stop)`` slices of ``n`` rows, sizes differing by at most one."""
    if isinstance(shards, bool) or not isinstance(shards, int | np.integer) or shards < 1:
        raise InputError(f"gradients.shards must be an integer >= 1, got {shards!r}")
    if shards > n:
        raise InputError(f"gradients.shards={shards} is larger than the number of samples n={n}")
    return [(i * n // shards, (i + 1) * n // shards) for i in range(shards)]


def shard_records(records: list[dict[str, Any]], index: int, shards: int) -> list[dict[str, Any]]:
    """The ``index``-th of ``shards`` contiguous slices of ``records`` (pool order)."""
    bounds = shard_bounds(len(records), shards)
    if not 0 <= index < shards:
        raise InputError(f"shard index {index} is outside 0..{shards - 1}")
    start, stop = bounds[index]
    return records[start:stop]


def check_shard_field(path: Any, field: Any, index: int, shards: int) -> None:
    """A merge's check that the file at ``path`` is slice ``index`` of ``shards`` (its ``shard`` field,
    a list or array ``[index, shards]``), so that slices merge in pool order."""
    found = field.tolist() if isinstance(field, np.ndarray) else field
    if found != [index, shards]:
        raise InputError(f"{path}: field shard is {field}, expected [{index}, {shards}]")


def add_pass_arguments(parser: argparse.ArgumentParser, *, sharded: bool = False) -> None:
    """The command-line arguments of every pass over the pool through the warm-up adapter (the
    extraction, coherence and LESS influence CLIs), and with ``sharded`` the slice it runs."""
    parser.add_argument("--model-dir", required=True, help="the prepared base model folder")
    parser.add_argument("--warmup", required=True, help="the warm-up adapter folder")
    parser.add_argument("--train", required=True, help="the pooled training set (JSONL)")
    parser.add_argument("--params", required=True, help="the gradients config section as JSON")
    parser.add_argument("--seed", type=int, required=True)
    if sharded:
        parser.add_argument("--shard", type=int, required=True, help="this shard's index, 0..shards-1")
        parser.add_argument("--shards", type=int, required=True, help="the number of shards S")
