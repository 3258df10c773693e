"""Gradient features of the training pool, computed in streaming passes that never store gradients.

Three steps (``rules/gradients.smk``):

1. ``warmup``: a short LoRA on a seeded fraction of the pooled training data (as LESS and ELREA
   do: per-sample gradients of an untrained LoRA are degenerate, its B being zero), with
   per-epoch checkpoints and Adam moments (LESS's preconditioner, used by :mod:`gs.selection`).
2. ``extract``: one pass over the pool through the warm-up adapter. Each batch of per-sample
   LoRA gradients (b, d), d the full LoRA dimension, is L2-normalised (clustering by direction,
   cosine geometry) and fed to (a) the online SVD (:mod:`gs.svd`) in full dimension and (b) the
   seeded random projectors of the ELREA baseline and the projection-size ablation
   (:mod:`gs.projection`); then the batch is dropped. Memory: O(d (r + b) + n r + n p).
3. ``coherence`` (after clustering): one more pass that sums the normalised gradients per cluster
   of every method, which gives each cluster's exact mean pairwise cosine (:mod:`gs.quality`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from gs.data import load_records
from gs.io import InputError, atomic_path, parse_params, run_cli, write_json
from gs.models import load_model, load_tokenizer
from gs.projection import Projector
from gs.svd import make_online_svd
from gs.training import LoraSpec, TrainSpec, load_adapter, seed_everything, train_lora


def warmup_subset(records: list[dict[str, Any]], fraction: float, seed: int) -> list[dict[str, Any]]:
    """A seeded random ``fraction`` of the pool (at least one sample), in pool order."""
    if not 0 < fraction <= 1:
        raise InputError(f"warm-up fraction must be in (0, 1], got {fraction}")
    n = max(1, int(round(fraction * len(records))))
    keep = set(np.random.default_rng(seed).choice(len(records), size=n, replace=False).tolist())
    return [r for i, r in enumerate(records) if i in keep]


def run_warmup(model_dir: str, train_path: str, params: dict[str, Any], seed: int, out_dir: str) -> dict[str, Any]:
    """Train the warm-up adapter with per-epoch checkpoints; returns the training summary."""
    records = load_records(train_path)
    subset = warmup_subset(records, float(params["fraction"]), seed)
    model = load_model(model_dir, params.get("dtype", "float32"))
    tok = load_tokenizer(model_dir)
    summary = train_lora(
        model,
        tok,
        subset,
        LoraSpec.from_config(params["lora"]),
        TrainSpec.from_config(params["train"]),
        out_dir,
        seed=seed,
        checkpoints=True,
        desc="warm-up LoRA",
    )
    print(json.dumps({k: summary[k] for k in ("samples", "steps", "first_loss", "last_loss")}))
    return summary


def normalise_rows(grads: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm; zero rows stay zero (no NaN)."""
    norms = grads.norm(dim=1, keepdim=True)
    return grads / norms.clamp_min(torch.finfo(grads.dtype).tiny)


def _gradient_model(model_dir: str, warmup_dir: str, dtype: str) -> tuple[Any, Any]:
    model = load_adapter(load_model(model_dir, dtype), warmup_dir, trainable=True)
    return model, load_tokenizer(model_dir)


def pool_gradients(
    model: Any,
    tok: Any,
    records: list[dict[str, Any]],
    params: dict[str, Any],
    *,
    loss_on: str | None = None,
    progress: bool = True,
):
    """:func:`gs.gradients.iter_gradients` with the ``gradients`` config's batch size, length and loss."""
    from gs.gradients import iter_gradients

    return iter_gradients(
        model,
        tok,
        records,
        batch_size=int(params["batch_size"]),
        max_length=int(params["max_length"]),
        loss_on=loss_on or params.get("loss_on", "response"),
        progress=progress,
    )


def extract_features(
    model_dir: str,
    warmup_dir: str,
    train_path: str,
    params: dict[str, Any],
    seed: int,
    out_dir: str,
) -> dict[str, Any]:
    """Stream the pool's per-sample gradients into the online SVD and the projectors.

    Writes ``out_dir/features.npz`` (``ids`` (n,) (no domain labels), ``norms`` (n,), ``svd_coords``
    (n, r), ``singular_values`` (r,), ``projected_<p>`` (n, p) for each size p of the same gradients,
    ``elrea_features`` (n, elrea_dim): ELREA's features, the projection of gradients taken with
    ``elrea_loss_on`` (default instruction tokens), and ``elrea_dim``), ``svd_components.npy``
    (r, d), ``projector_<p>.joblib`` and ``extract.json`` (d, n, timings, streaming state size).
    """

    seed_everything(seed)
    records = load_records(train_path)
    model, tok = _gradient_model(model_dir, warmup_dir, params.get("dtype", "float32"))
    svd_cfg, proj_cfg = params["svd"], params["projection"]
    rank = int(svd_cfg["rank"])
    if rank > len(records):
        raise InputError(f"svd rank={rank} is larger than the number of samples n={len(records)}")
    svd = make_online_svd(svd_cfg["method"], rank, **svd_cfg.get("options", {}))
    dims = sorted({int(p) for p in proj_cfg["dims"]} | {int(proj_cfg["elrea_dim"])})
    projectors: dict[int, Projector] = {}
    projected: dict[int, list[np.ndarray]] = {p: [] for p in dims}
    ids: list[str] = []
    norms: list[np.ndarray] = []
    normalise = bool(params.get("normalize", True))
    loss_on = params.get("loss_on", "response")
    # ELREA takes its gradient features on the instruction tokens (a test prompt has no answer, and
    # its routing gradient must live in the same space): a second gradient of the same batch.
    elrea_loss = params.get("elrea_loss_on", "instruction")
    elrea_dim = int(proj_cfg["elrea_dim"])
    elrea_parts: list[np.ndarray] = []
    start = time.perf_counter()
    d = None

    def stream(loss: str, progress: bool):
        return pool_gradients(model, tok, records, params, loss_on=loss, progress=progress)

    elrea_stream = stream(elrea_loss, False) if elrea_loss != loss_on else None
    for batch_ids, grads in stream(loss_on, True):
        d = grads.shape[1]
        if not projectors:
            projectors = {p: Projector(proj_cfg.get("kind", "sparse"), d, p, seed + p) for p in dims}
        ids.extend(batch_ids)
        norms.append(grads.norm(dim=1).numpy())
        feats = normalise_rows(grads) if normalise else grads
        svd.partial_fit(feats)
        for p, proj in projectors.items():
            projected[p].append(proj.transform(feats))
        if elrea_stream is None:
            elrea_parts.append(projected[elrea_dim][-1])
        else:
            _, elrea_grads = next(elrea_stream)
            elrea_parts.append(
                projectors[elrea_dim].transform(normalise_rows(elrea_grads) if normalise else elrea_grads)
            )
    coords = svd.seen_coordinates()
    if coords is None:  # methods that do not track the left factor need a second pass
        parts = [
            svd.transform(normalise_rows(g) if normalise else g) for _, g in pool_gradients(model, tok, records, params)
        ]
        coords = np.concatenate(parts)
    seconds = time.perf_counter() - start
    arrays = {
        "ids": np.array(ids),
        "norms": np.concatenate(norms).astype(np.float32),
        "svd_coords": np.asarray(coords, dtype=np.float32),
        "singular_values": np.asarray(svd.singular_values_, dtype=np.float64),
        "elrea_dim": np.array(elrea_dim),
        "elrea_features": np.concatenate(elrea_parts),
        "elrea_loss_on": np.array(elrea_loss),
        **{f"projected_{p}": np.concatenate(v) for p, v in projected.items()},
    }
    out = Path(out_dir)
    with atomic_path(out / "features.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    with atomic_path(out / "svd_components.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(svd.components_, dtype=np.float32))
    for p, proj in projectors.items():
        proj.save(out / f"projector_{p}.joblib")
    summary = {
        "n": len(ids),
        "d": int(d or 0),
        "rank": rank,
        "svd_method": svd_cfg["method"],
        "singular_values": arrays["singular_values"].tolist(),
        "projection_dims": dims,
        "seconds": round(seconds, 2),
        "second_pass": svd.seen_coordinates() is None,
        "streaming_state_mb": round(4 * (int(d or 0) * (rank + int(params["batch_size"]))) / 2**20, 1),
        "stacked_gradients_mb": round(4 * int(d or 0) * len(ids) / 2**20, 1),
    }
    write_json(out / "extract.json", summary)
    print(json.dumps(summary))
    return summary


def cluster_gradient_sums(
    model_dir: str,
    warmup_dir: str,
    train_path: str,
    cluster_dirs: list[str],
    params: dict[str, Any],
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Per method, the sum of normalised full gradients and the size of each cluster (one pass).

    Returns ``{method: {"sums": (k, d) float64, "counts": (k,)}}``; methods are named by their
    folder (``results/clusters/<method>``), which holds ``assignments.csv``.
    """

    seed_everything(seed)
    records = load_records(train_path)
    labels: dict[str, dict[str, int]] = {}
    for d in cluster_dirs:
        path = Path(d) / "assignments.csv"
        if not path.is_file():
            raise InputError(f"{path}: assignments file not found")
        frame = pd.read_csv(path, dtype={"id": str})
        labels[Path(d).name] = dict(zip(frame["id"], frame["cluster"].astype(int), strict=True))
    model, tok = _gradient_model(model_dir, warmup_dir, params.get("dtype", "float32"))
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, np.ndarray] = {}
    for batch_ids, grads in pool_gradients(model, tok, records, params):
        feats = normalise_rows(grads).double()
        for method, lab in labels.items():
            try:
                idx = torch.tensor([lab[i] for i in batch_ids])
            except KeyError as e:
                raise InputError(f"{method}: sample {e.args[0]!r} has no cluster assignment") from None
            k = max(lab.values()) + 1
            if method not in sums:
                sums[method] = torch.zeros(k, feats.shape[1], dtype=torch.float64)
                counts[method] = np.zeros(k, dtype=np.int64)
            sums[method].index_add_(0, idx, feats)
            np.add.at(counts[method], idx.numpy(), 1)
    return {m: {"sums": sums[m].numpy(), "counts": counts[m]} for m in sums}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Warm-up LoRA and streaming gradient features.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("warmup", "extract", "coherence"):
        p = sub.add_parser(name)
        p.add_argument("--model-dir", required=True)
        p.add_argument("--train", required=True)
        p.add_argument("--params", required=True, help="the gradients config section as JSON")
        p.add_argument("--seed", type=int, required=True)
        if name != "warmup":
            p.add_argument("--warmup", required=True)
        if name == "coherence":
            p.add_argument("--clusters", nargs="+", required=True)
            p.add_argument("--out", required=True)
        else:
            p.add_argument("--out-dir" if name == "extract" else "--out", required=True)
    args = parser.parse_args(argv)
    params = parse_params(args.params)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.cmd == "warmup":
        run_warmup(args.model_dir, args.train, params["warmup"], args.seed, args.out)
    elif args.cmd == "extract":
        extract_features(args.model_dir, args.warmup, args.train, params, args.seed, args.out_dir)
    else:
        from gs.quality import coherence_from_sums

        result = {}
        for method, s in cluster_gradient_sums(
            args.model_dir, args.warmup, args.train, args.clusters, params, args.seed
        ).items():
            result[method] = coherence_from_sums(s["sums"], s["counts"])
        write_json(args.out, result)
        print(json.dumps(result, default=str))


if __name__ == "__main__":
    run_cli(main)
