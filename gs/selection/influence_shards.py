"""LESS influence in shards: the pool split into ``S`` contiguous slices (``gradients.shards: S > 1``,
:func:`gs.gradients.passes.shard_bounds`), one job each (``shard``), then a ``merge``.

A sample's influence on a target depends only on its own gradient and the target's mean directions
(one per subtask; the max over subtasks is taken per sample, so it commutes with the split), which
every shard recomputes from the same checkpoints and seeded projector; the slices' scores
concatenate and their gradient counts add.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from gs.data.prepare import load_records
from gs.gradients.passes import add_pass_arguments, check_shard_field, shard_records
from gs.io import InputError, atomic_path, parse_params, parse_target_specs, run_cli


def influence_shard(
    model_dir: str,
    warmup_dir: str,
    train_path: str,
    targets: dict[str, str],
    params: dict[str, Any],
    seed: int,
    index: int,
    shards: int,
    out_file: str,
) -> dict[str, np.ndarray]:
    """LESS influence (:func:`gs.selection.influence.compute_influence`) of shard ``index``'s slice of the pool on
    every target, written as ``influence.npz``'s arrays for that slice plus ``shard`` ``[index, shards]``.

    Every shard recomputes the targets' mean directions (same checkpoints, same seeded projector), so
    a sample's scores do not depend on the shard it falls in; the slices' arrays concatenate.
    """
    from gs.selection.influence import compute_influence  # here: the merge job does not need it

    pool = shard_records(load_records(train_path), index, shards)
    records = {name: load_records(path) for name, path in targets.items()}
    arrays = compute_influence(model_dir, warmup_dir, pool, records, params, seed)
    arrays["shard"] = np.array([index, shards])
    with atomic_path(Path(out_file)) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return arrays


# Arrays of influence.npz along the pool (concatenated), summed over the slices, and equal in every slice.
# The per-subtask arrays (subtask_per_checkpoint, subtask_scores) run along the pool too; subtask_target and
# subtask are equal in every slice. Shard files written before subtasks lack them and merge as before.
_ALONG_POOL = {"ids": 0, "scores": 1, "per_checkpoint": 2, "subtask_per_checkpoint": 2, "subtask_scores": 1}


_SUMMED = ("gradient_computations",)


def merge_influence(shard_files: list[str], out_file: str) -> dict[str, np.ndarray]:
    """``influence.npz`` of the whole pool from the shards' (:func:`influence_shard`): per-sample arrays
    concatenated in pool order, gradient counts added, the rest (targets, checkpoint weights,
    projection) checked equal."""
    parts = []
    for i, path in enumerate(shard_files):
        with np.load(path) as f:
            part = {k: f[k] for k in f.files}
        check_shard_field(path, part.get("shard"), i, len(shard_files))
        parts.append(part)
    merged: dict[str, np.ndarray] = {}
    for key, value in parts[0].items():
        if key == "shard":
            continue
        if key in _ALONG_POOL:
            merged[key] = np.concatenate([p[key] for p in parts], axis=_ALONG_POOL[key])
        elif key in _SUMMED:
            merged[key] = np.array(sum(int(p[key]) for p in parts))
        else:
            for path, p in zip(shard_files, parts, strict=True):
                if not np.array_equal(p[key], value):
                    raise InputError(f"{path}: field {key} differs from shard 0's")
            merged[key] = value
    with atomic_path(Path(out_file)) as tmp, open(tmp, "wb") as f:
        np.savez(f, **merged)
    return merged


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="LESS influence of one slice of the pool, and the merge of the slices."
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("shard")
    add_pass_arguments(p, sharded=True)
    p.add_argument("--targets", nargs="+", required=True, help="TARGET=validation.jsonl")
    p.add_argument("--out", required=True)
    p = sub.add_parser("merge")
    p.add_argument("--shard-files", nargs="+", required=True)
    p.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.cmd == "merge":
        merge_influence(args.shard_files, args.out)
        return
    influence_shard(
        args.model_dir,
        args.warmup,
        args.train,
        parse_target_specs(args.targets),
        parse_params(args.params),
        args.seed,
        args.shard,
        args.shards,
        args.out,
    )


if __name__ == "__main__":
    run_cli(main)
