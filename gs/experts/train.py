"""One LoRA expert per cluster (GradientSpace, arXiv 2512.06678), and the multi-task LoRA reference.

Inputs: the pooled training records (JSONL ``{"id", "domain", "instruction", "input", "output"}``)
and a cluster assignment (CSV ``id,cluster``, one row per training sample, from any clustering
method: gradient, semantic, random-projection...). Output: a folder

* ``expert_<j>/``: one peft adapter per expert (``save_pretrained`` format, so a plain
  ``PeftModel.from_pretrained(base, folder)`` loads it), with its ``training.json``;
* ``experts.json``: the manifest (method, cluster -> expert map, merged clusters, per-expert
  ``n_train``, domain histogram, training summaries).

The multi-task reference (one LoRA on all the data, same LoRA and training settings) writes the same
manifest shape with one expert whose adapter is ``adapter/``, so inference handles both uniformly.

Budget: every expert is trained on its own cluster's samples for the configured number of epochs
with the configured batch size, so the experts together make as many sample-updates (samples x
epochs) as the multi-task LoRA does on the pooled data: the two are compared under the same training
budget. Only ``train.max_steps`` (a smoke-test cap applied per adapter) breaks that equality.

Small clusters (fewer than ``min_cluster_size`` samples) are handled by a documented rule, see
:func:`plan_experts`.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from gs.cluster.assignments import read_assignments, validate_assignments
from gs.experts.folders import MANIFEST, MULTITASK_DIR, expert_dir_name
from gs.experts.plan import cluster_sizes, expert_labels, plan_experts_from_params, small_cluster_merges
from gs.io import InputError, atomic_path, parse_params, read_jsonl, run_cli, write_json

# --------------------------------------------------------------------------------------------------
# Assignments and the cluster -> expert plan
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def _specs(params: dict[str, Any]) -> tuple[Any, Any]:
    from gs.models.lora import LoraSpec, TrainSpec

    for key in ("lora", "train"):
        if not isinstance(params.get(key), dict):
            raise InputError(f"params: missing section {key!r}")
    try:
        return LoraSpec.from_config(params["lora"]), TrainSpec.from_config(params["train"])
    except KeyError as e:
        raise InputError(f"params.lora: missing key {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise InputError(f"params: bad LoRA/training setting ({e})") from None


def _domains(records: list[dict[str, Any]]) -> dict[str, int]:
    # For the report only: domains never influence which expert a sample trains.
    return dict(sorted(Counter(str(r.get("domain", "unknown")) for r in records).items()))


def _load_base(model_dir: str | os.PathLike) -> tuple[Any, Any]:
    """The base model in the dtype and on the device it was prepared for (``gs_model.json``)."""
    from gs.models.load import load_model, load_tokenizer

    return load_model(model_dir), load_tokenizer(model_dir)


def train_experts(
    model_dir: str | os.PathLike,
    records: list[dict[str, Any]],
    assignments: pd.DataFrame,
    params: dict[str, Any],
    out_dir: str | os.PathLike,
    seed: int,
    *,
    method: str = "unknown",
) -> dict[str, Any]:
    """Train one LoRA expert per expert of :func:`plan_experts` and write ``out_dir`` atomically.

    The base model is loaded once and reused: :func:`gs.models.lora.train_lora` unloads its adapter at
    the end, leaving the base weights untouched for the next expert. Every expert starts from the
    same seeded LoRA initialisation (``seed``), so experts differ only by their data.

    Budget: each expert sees its cluster's samples for ``params.train.epochs`` epochs, so the total
    sample-updates equal those of :func:`train_multitask` on the pooled data (same budget).

    ``params``: ``lora`` {rank, alpha, dropout, target_modules}, ``train`` {epochs, learning_rate,
    batch_size, max_length, warmup_ratio, loss_on, max_steps?}, ``min_cluster_size``,
    ``small_clusters`` ("error" | "merge"). The base model's dtype and device are the prepared
    folder's (:func:`gs.models.load.load_model`). Returns the manifest.
    """
    if not records:
        raise InputError("no training records")
    lora, train = _specs(params)
    frame = validate_assignments(assignments)
    mapping = plan_experts_from_params(frame, params)
    labels = expert_labels(records, frame, mapping)
    expert_ids = sorted(set(mapping.values()))
    from gs.models.lora import train_lora

    model, tokenizer = _load_base(model_dir)
    experts = []
    with atomic_path(out_dir, is_dir=True) as tmp:
        for j in expert_ids:
            subset = [r for r, e in zip(records, labels, strict=True) if e == j]
            name = expert_dir_name(j)
            summary = train_lora(
                model,
                tokenizer,
                subset,
                lora,
                train,
                Path(tmp) / name,
                seed=seed,
                desc=f"{method} expert {j + 1}/{len(expert_ids)}",
            )
            experts.append(
                {
                    "expert": j,
                    "dir": name,
                    "clusters": sorted(c for c, e in mapping.items() if e == j),
                    "n_train": len(subset),
                    "domains": _domains(subset),
                    "training": summary,
                }
            )
        manifest = {
            "kind": "experts",
            "method": method,
            "seed": seed,
            "n_train": len(records),
            "n_clusters": len(mapping),
            "n_experts": len(expert_ids),
            "min_cluster_size": int(params["min_cluster_size"]),
            "small_clusters": str(params["small_clusters"]),
            "cluster_sizes": {str(c): n for c, n in cluster_sizes(frame).items()},
            # JSON keys are strings; load_manifest turns them back into ints.
            "cluster_to_expert": {str(c): e for c, e in mapping.items()},
            "merged": small_cluster_merges(frame, mapping),
            "lora": lora.__dict__,
            "train": train.__dict__,
            "experts": experts,
        }
        write_json(Path(tmp) / MANIFEST, manifest)
    return manifest


def train_multitask(
    model_dir: str | os.PathLike,
    records: list[dict[str, Any]],
    params: dict[str, Any],
    out_dir: str | os.PathLike,
    seed: int,
    *,
    method: str = "multitask",
) -> dict[str, Any]:
    """Train the single-LoRA-on-all-data reference (same LoRA/training settings as the experts).

    Writes ``out_dir/adapter/`` and a manifest of the experts' shape with one expert (id 0) and an
    empty cluster map, so inference and routing treat it as a one-expert system. Returns the manifest.
    """
    if not records:
        raise InputError("no training records")
    lora, train = _specs(params)
    ids = [str(r.get("id")) for r in records]
    dup = [i for i, n in Counter(ids).items() if n > 1]
    if dup:
        raise InputError(f"sample id {dup[0]!r} appears more than once in the records")
    from gs.models.lora import train_lora

    model, tokenizer = _load_base(model_dir)
    with atomic_path(out_dir, is_dir=True) as tmp:
        summary = train_lora(
            model,
            tokenizer,
            records,
            lora,
            train,
            Path(tmp) / MULTITASK_DIR,
            seed=seed,
            desc="multitask LoRA",
        )
        manifest = {
            "kind": "multitask",
            "method": method,
            "seed": seed,
            "n_train": len(records),
            "n_clusters": 0,
            "n_experts": 1,
            "min_cluster_size": params.get("min_cluster_size"),
            "small_clusters": params.get("small_clusters"),
            "cluster_sizes": {},
            "cluster_to_expert": {},
            "merged": [],
            "lora": lora.__dict__,
            "train": train.__dict__,
            "experts": [
                {
                    "expert": 0,
                    "dir": MULTITASK_DIR,
                    "clusters": [],
                    "n_train": len(records),
                    "domains": _domains(records),
                    "training": summary,
                }
            ],
        }
        write_json(Path(tmp) / MANIFEST, manifest)
    return manifest


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train one LoRA expert per cluster, or the multi-task LoRA.")
    parser.add_argument("--model-dir", required=True, help="prepared base model folder")
    parser.add_argument("--train", required=True, help="pooled training records (JSONL)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--assignments", help="cluster assignments CSV (id,cluster)")
    group.add_argument("--multitask", action="store_true", help="train one LoRA on all the data")
    parser.add_argument("--params", required=True, help="experts config section as JSON")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--method", help="clustering method name for the manifest")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    params = parse_params(args.params)
    records = read_jsonl(args.train)
    if args.multitask:
        manifest = train_multitask(
            args.model_dir, records, params, args.out, args.seed, method=args.method or "multitask"
        )
    else:
        method = args.method or params.get("method") or Path(args.assignments).stem
        manifest = train_experts(
            args.model_dir,
            records,
            read_assignments(args.assignments),
            params,
            args.out,
            args.seed,
            method=str(method),
        )
    sizes = ", ".join(f"{e['expert']}:{e['n_train']}" for e in manifest["experts"])
    print(f"wrote {args.out}: {manifest['n_experts']} expert(s) (expert:n_train {sizes})")


if __name__ == "__main__":
    run_cli(main)
