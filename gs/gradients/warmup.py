"""The warm-up LoRA: a short LoRA on a seeded fraction of the pooled training data, with per-epoch
checkpoints and Adam moments (LESS's preconditioner, used by :mod:`gs.selection.influence`).

As LESS and ELREA do: per-sample gradients of an untrained LoRA are degenerate, its B being zero, so
every gradient pass (:mod:`gs.gradients.extraction`, :mod:`gs.cluster.coherence`, LESS's influence)
runs through this adapter (``rules/gradients.smk``, rule ``warmup_lora``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from gs.data.prepare import load_records
from gs.io import InputError, parse_params, run_cli
from gs.models.load import load_model, load_tokenizer
from gs.models.lora import LoraSpec, TrainSpec, train_lora


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
    model = load_model(model_dir)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the warm-up LoRA of the gradient passes.")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--train", required=True)
    parser.add_argument("--params", required=True, help="the gradients config section as JSON")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    run_warmup(args.model_dir, args.train, parse_params(args.params)["warmup"], args.seed, args.out)


if __name__ == "__main__":
    run_cli(main)
