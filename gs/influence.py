"""LESS influence of every pooled training sample on each target domain, with the model.

For every warm-up checkpoint c (``results/gradients/warmup/checkpoint-<e>/``: adapter, Adam moments
and the epoch's mean learning rate), following LESS (Xia et al., ICML 2024; ``../shared/papers.md``):

* target gradients: plain (SGD) per-sample LoRA gradients of the target domain's validation samples;
* training features: each pool sample's per-sample LoRA gradient turned into the Adam update
  direction with that checkpoint's moments (:func:`gs.selection.adam_precondition`);
* influence: :func:`gs.selection.influence_scores`, summed over checkpoints with weights
  proportional to their mean learning rates.

The gradients are full-dimensional (no random projection: at this suite's LoRA size the exact cosine
is affordable), computed in one streaming pass per checkpoint that scores every target at once, since
the training features do not depend on the target. This pass is the "full gradient-based selection"
reference (n x checkpoints per-sample gradient computations) whose cost ClusterUCB reduces.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gs.data import load_records
from gs.io import InputError, atomic_path, parse_params, run_cli
from gs.models import load_model, load_tokenizer
from gs.selection import adam_precondition, influence_scores
from gs.training import load_adapter, seed_everything


def read_checkpoints(warmup_dir: str | Path) -> list[dict[str, Any]]:
    """The warm-up checkpoints in epoch order: ``{"dir", "exp_avg", "exp_avg_sq", "mean_lr"}``."""
    dirs = sorted(Path(warmup_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if not dirs:
        raise InputError(f"{warmup_dir}: no checkpoint-<epoch> folders (the warm-up saves them)")
    out = []
    for d in dirs:
        moments = torch.load(d / "adam_moments.pt")
        meta = json.loads((d / "checkpoint.json").read_text())
        out.append(
            {
                "dir": d,
                "exp_avg": moments["exp_avg"].numpy(),
                "exp_avg_sq": moments["exp_avg_sq"].numpy(),
                "mean_lr": float(meta["mean_lr"]),
            }
        )
    return out


def compute_influence(
    model_dir: str,
    warmup_dir: str,
    pool: list[dict[str, Any]],
    targets: dict[str, list[dict[str, Any]]],
    params: dict[str, Any],
    seed: int,
) -> dict[str, np.ndarray]:
    """Influence of each pool sample on each target; returns arrays for ``influence.npz``.

    Keys: ``ids`` (n,), ``targets`` (T,), ``scores`` (T, n) checkpoint-weighted influence,
    ``per_checkpoint`` (C, T, n), ``weights`` (C,), ``gradient_computations`` (n * C).
    """
    from gs.gradients import iter_gradients

    seed_everything(seed)
    batch, length = int(params["batch_size"]), int(params["max_length"])
    tok = load_tokenizer(model_dir)
    names = sorted(targets)
    checkpoints = read_checkpoints(warmup_dir)
    per_ckpt = np.zeros((len(checkpoints), len(names), len(pool)))
    ids: list[str] = []
    for c, ckpt in enumerate(checkpoints):
        model = load_adapter(load_model(model_dir, params.get("dtype", "float32")), ckpt["dir"], trainable=True)
        target_grads = {
            t: torch.cat(
                [
                    g
                    for _, g in iter_gradients(
                        model, tok, targets[t], batch_size=batch, max_length=length, loss_on="response", progress=False
                    )
                ]
            ).numpy()
            for t in names
        }
        start, ids = 0, []
        for batch_ids, grads in iter_gradients(
            model, tok, pool, batch_size=batch, max_length=length, loss_on="response"
        ):
            feats = adam_precondition(grads.numpy(), ckpt["exp_avg"], ckpt["exp_avg_sq"])
            for t_i, t in enumerate(names):
                per_ckpt[c, t_i, start : start + len(batch_ids)] = influence_scores(feats, target_grads[t])
            start += len(batch_ids)
            ids.extend(batch_ids)
        del model
    weights = np.array([ck["mean_lr"] for ck in checkpoints], dtype=np.float64)
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(checkpoints), 1 / len(checkpoints))
    return {
        "ids": np.array(ids),
        "targets": np.array(names),
        "scores": np.einsum("c,ctn->tn", weights, per_ckpt),
        "per_checkpoint": per_ckpt,
        "weights": weights,
        "gradient_computations": np.array(len(pool) * len(checkpoints)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="LESS influence of the pool on every target domain.")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--warmup", required=True)
    parser.add_argument("--train", required=True, help="the pooled training set")
    parser.add_argument("--targets", nargs="+", required=True, help="DOMAIN=validation.jsonl")
    parser.add_argument("--params", required=True, help="the gradients config section as JSON")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    targets = {}
    for spec in args.targets:
        name, _, path = spec.partition("=")
        if not path:
            raise InputError(f"--targets expects DOMAIN=path, got {spec!r}")
        targets[name] = load_records(path)
    arrays = compute_influence(
        args.model_dir, args.warmup, load_records(args.train), targets, parse_params(args.params), args.seed
    )
    with atomic_path(args.out) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    print(json.dumps({t: float(arrays["scores"][i].mean()) for i, t in enumerate(arrays["targets"])}))


if __name__ == "__main__":
    run_cli(main)
