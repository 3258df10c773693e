"""Gradient coherence of every clustering: one more pass over the pool through the warm-up adapter
that sums the normalised full gradients per cluster of every method, which gives each cluster's
exact mean pairwise cosine (:func:`gs.cluster.quality.coherence_from_sums`).

``rules/cluster.smk`` runs it as one job (``single``) or, with ``gradients.shards: S > 1``, as ``S``
jobs over the pool's contiguous slices (``shard``, :func:`gs.gradients.passes.shard_bounds`) and a
``merge``: per-cluster sums of normalised gradients add across slices (``S_c = sum_i S_c^(i)``), so
the shards write their ``(k, d)`` sums and counts and the merge adds them. The sums are
``sum_m k_m d`` float32 words per shard file (summed on the host in float64), the price of the exact
``||S_c||`` (a norm of a sum is not a sum of norms).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gs.cluster.assignments import ASSIGNMENTS_CSV, read_assignments
from gs.cluster.quality import coherence_from_sums
from gs.data.prepare import load_records
from gs.gradients.passes import (
    add_pass_arguments,
    check_shard_field,
    gradient_model,
    normalise_rows,
    pool_gradients,
    shard_records,
    state_device,
)
from gs.io import InputError, atomic_path, parse_params, run_cli, write_json
from gs.models.lora import seed_everything

SUMS_ON = ("host", "device")


def coherence_sums_on(params: dict[str, Any]) -> str:
    """``gradients.coherence_sums`` of a ``gradients`` section: where the cluster sums are accumulated."""
    where = str(params.get("coherence_sums", "host"))
    if where not in SUMS_ON:
        raise InputError(f"gradients.coherence_sums: expected one of {', '.join(SUMS_ON)}, got {where!r}")
    return where


def cluster_gradient_sums(
    model_dir: str,
    warmup_dir: str,
    train_path: str,
    cluster_dirs: list[str],
    params: dict[str, Any],
    seed: int,
    shard: tuple[int, int] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per method, the sum of normalised full gradients and the size of each cluster (one pass).

    ``shard=(i, S)`` streams only the pool's ``i``-th of ``S`` contiguous slices
    (:func:`gs.gradients.passes.shard_bounds`); the sums and counts of the ``S`` slices add up to the pool's.

    Returns ``{method: {"sums": (k, d) tensor, "counts": (k,) int64, "sq_norms": (k,) float64}}``:
    ``sq_norms`` the squared norms ``||S_c||^2`` (all that :func:`gs.cluster.quality.coherence_from_sums`
    needs). Methods are named by their folder (``results/clusters/<method>``), which holds
    ``assignments.csv``. ``gradients.coherence_sums: device`` accumulates them in float32 where the gradients
    are (on a GPU: ``sum_m k_m d`` float32 words beside the step, and no host traffic; a sum of at most a
    shard's unit rows in float32 is off by ~sqrt(n) x 6e-8 relative), then hands them over in float64.
    Otherwise (``host``, the default) the sums live on the host in float64 whatever the model's device (each
    window of gradients, :func:`gs.gradients.passes.gradient_window` samples, is normalised where the
    gradients are and copied to the host a batch at a time in float64, each batch added to every method's
    sums): ``sum_m k_m * d`` float64 words, e.g. 12 clusters x 109M x 8 B = 10.5 GB per method at paper
    scale, which on a GPU would sit beside the gradient step (7 methods: 84 GiB > 80 GB).
    """

    seed_everything(seed)
    records = load_records(train_path)
    if shard is not None:
        records = shard_records(records, *shard)
    labels: dict[str, dict[str, int]] = {}
    for d in cluster_dirs:
        frame = read_assignments(Path(d) / ASSIGNMENTS_CSV)
        labels[Path(d).name] = dict(zip(frame["id"], frame["cluster"], strict=True))
    model, tok = gradient_model(model_dir, warmup_dir)
    _, on_device = state_device(model, params)
    on_gradients = coherence_sums_on(params) == "device"
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, np.ndarray] = {}
    batch = int(params["batch_size"])
    for window_ids, grads in pool_gradients(model, tok, records, params, on_device=on_device):
        normalise_rows(grads, inplace=True)
        # "host": one batch of the window at a time in float64 on the host (a whole (w, d) float64 window would
        # be 8 w d bytes beside the sums); "device": the float32 window itself, where it is.
        step = len(window_ids) if on_gradients else batch
        for start in range(0, len(window_ids), step):
            batch_ids = window_ids[start : start + step]
            rows = grads[start : start + step]
            feats = rows if on_gradients else rows.to(device="cpu", dtype=torch.float64)  # (b, d)
            for method, lab in labels.items():
                try:
                    idx = torch.tensor([lab[i] for i in batch_ids])
                except KeyError as e:
                    raise InputError(f"{method}: sample {e.args[0]!r} has no cluster assignment") from None
                k = max(lab.values()) + 1
                if method not in sums:
                    sums[method] = torch.zeros(k, feats.shape[1], dtype=feats.dtype, device=feats.device)
                    counts[method] = np.zeros(k, dtype=np.int64)
                sums[method].index_add_(0, idx.to(feats.device), feats)
                np.add.at(counts[method], idx.numpy(), 1)
    if on_gradients:  # one method at a time to the host in float64 (the device copy freed first)
        for m in list(sums):
            on_host = sums[m].to(device="cpu", dtype=torch.float64)
            sums[m] = on_host
    return {
        m: {
            "sums": sums[m],
            "counts": counts[m],
            "sq_norms": np.array([float(row.square().sum()) for row in sums[m]]),
        }
        for m in sums
    }


def coherence_shard(
    model_dir: str,
    warmup_dir: str,
    train_path: str,
    cluster_dirs: list[str],
    params: dict[str, Any],
    seed: int,
    index: int,
    shards: int,
    out_file: str,
) -> None:
    """Per method, shard ``index``'s ``(k, d)`` sums of normalised gradients per cluster and ``(k,)``
    counts (:func:`gs.cluster.coherence.cluster_gradient_sums` on its slice), saved with torch to ``out_file``.

    The sums are accumulated on the host in float64 and saved in float32 (half the file and the merge's
    memory: at paper scale 7 methods x 12 clusters x 109M words are 73 GB in float64), one method at a
    time, each float64 sum freed once its float32 copy is made: host peak ``8 sum_m k_m d + 4 k_m d``.
    float32 rounding of sums of unit rows is ~6e-8 relative, under 1e-6 in each coherence.
    """
    sums = cluster_gradient_sums(model_dir, warmup_dir, train_path, cluster_dirs, params, seed, shard=(index, shards))
    methods: dict[str, dict[str, torch.Tensor]] = {}
    for m in list(sums):
        s = sums.pop(m)
        methods[m] = {"sums": s.pop("sums").to(torch.float32), "counts": torch.from_numpy(s["counts"])}
        del s  # the float64 (k, d) sum goes before the next method's float32 copy is made
    payload = {"shard": [index, shards], "methods": methods}
    with atomic_path(Path(out_file)) as tmp:
        torch.save(payload, tmp)


def merge_coherence(shard_files: list[str], out_file: str) -> dict[str, Any]:
    """Add the shards' cluster sums and counts (one file at a time) and write each method's
    coherence (:func:`gs.cluster.quality.coherence_from_sums`), as the single pass writes it."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, np.ndarray] = {}
    for i, path in enumerate(shard_files):
        payload = torch.load(path, weights_only=True, map_location="cpu")
        check_shard_field(path, payload.get("shard"), i, len(shard_files))
        for method, part in payload["methods"].items():
            if method not in sums:
                sums[method], counts[method] = part["sums"].clone(), part["counts"].numpy().copy()
            elif part["sums"].shape != sums[method].shape:
                raise InputError(
                    f"{path}: {method} sums have shape {tuple(part['sums'].shape)}, expected "
                    f"{tuple(sums[method].shape)}"
                )
            else:
                sums[method] += part["sums"]
                counts[method] += part["counts"].numpy()
    sq_norms = {m: np.array([float(row.double().square().sum()) for row in total]) for m, total in sums.items()}
    return write_coherence(sq_norms, counts, out_file)


def write_coherence(sq_norms: dict[str, np.ndarray], counts: dict[str, np.ndarray], out_file: str) -> dict[str, Any]:
    """Each method's coherence from its clusters' ``(k,)`` squared sum norms ``||S_c||^2`` and sizes,
    written to ``out_file`` (JSON). Only ``||S_c||`` is needed: the ``(k, 1)`` norms, not the sums."""
    result = {m: coherence_from_sums(np.sqrt(sq_norms[m])[:, None], counts[m]) for m in sq_norms}
    write_json(Path(out_file), result)
    print(json.dumps(result, default=str))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Per-cluster gradient coherence of every clustering.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("single", "shard"):
        p = sub.add_parser(name)
        add_pass_arguments(p, sharded=name == "shard")
        p.add_argument("--clusters", nargs="+", required=True)
        p.add_argument("--out", required=True)
    p = sub.add_parser("merge")
    p.add_argument("--shard-files", nargs="+", required=True)
    p.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.cmd == "merge":
        merge_coherence(args.shard_files, args.out)
        return
    params = parse_params(args.params)
    if args.cmd == "shard":
        coherence_shard(
            args.model_dir, args.warmup, args.train, args.clusters, params, args.seed, args.shard, args.shards, args.out
        )
        return
    sums = cluster_gradient_sums(args.model_dir, args.warmup, args.train, args.clusters, params, args.seed)
    write_coherence({m: s["sq_norms"] for m, s in sums.items()}, {m: s["counts"] for m, s in sums.items()}, args.out)


if __name__ == "__main__":
    run_cli(main)
