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

from gs.io import InputError, atomic_path, parse_params, read_json, read_jsonl, run_cli, write_json

MANIFEST = "experts.json"
SMALL_CLUSTER_RULES = ("error", "merge")
MULTITASK_DIR = "adapter"


def expert_dir_name(expert: int) -> str:
    """Folder name of expert ``expert`` inside an experts folder."""
    return f"expert_{expert}"


# --------------------------------------------------------------------------------------------------
# Assignments and the cluster -> expert plan
# --------------------------------------------------------------------------------------------------


def read_assignments(path: str | os.PathLike) -> pd.DataFrame:
    """Read a cluster-assignment CSV (``id,cluster``) and validate it (see :func:`validate_assignments`)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: assignments file not found")
    try:
        # ids stay strings: a numeric-looking id must not turn into an int (or lose leading zeros).
        frame = pd.read_csv(p, dtype={"id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: not a readable CSV ({str(e).splitlines()[0] if str(e) else e})") from None
    return validate_assignments(frame, source=str(p))


def validate_assignments(assignments: pd.DataFrame, *, source: str = "assignments") -> pd.DataFrame:
    """Check an ``id,cluster`` frame and return a copy with ``id`` as str and ``cluster`` as int.

    Raises:
        InputError: no rows, a missing column, an empty/duplicate id, or a cluster that is not a
            non-negative integer.
    """
    missing = [c for c in ("id", "cluster") if c not in assignments.columns]
    if missing:
        raise InputError(f"{source}: missing column(s) {missing}; expected columns id,cluster")
    if len(assignments) == 0:
        raise InputError(f"{source}: no cluster assignments (empty)")
    frame = assignments[["id", "cluster"]].copy()
    if frame["id"].isna().any():
        row = int(frame.index[frame["id"].isna()][0])
        raise InputError(f"{source}: row {row} has no id")
    frame["id"] = frame["id"].astype(str)
    dup = frame["id"][frame["id"].duplicated()]
    if len(dup):
        raise InputError(f"{source}: sample id {dup.iloc[0]!r} is assigned more than once")
    clusters = pd.to_numeric(frame["cluster"], errors="coerce")
    bad = clusters.isna() | (clusters < 0) | (clusters != clusters.round())
    if bad.any():
        i = bad.to_numpy().nonzero()[0][0]
        raise InputError(
            f"{source}: sample {frame['id'].iloc[i]!r} has cluster {frame['cluster'].iloc[i]!r}; "
            "expected a non-negative integer"
        )
    frame["cluster"] = clusters.astype(int)
    return frame.reset_index(drop=True)


def plan_experts(assignments: pd.DataFrame, *, min_cluster_size: int, small_clusters: str) -> dict[int, int]:
    """Map every cluster present in ``assignments`` to an expert id.

    Clusters with at least ``min_cluster_size`` samples each get their own expert, numbered
    ``0..m-1`` in ascending cluster order. A cluster with fewer samples follows ``small_clusters``:

    * ``"error"``: :class:`InputError` naming each small cluster and its size;
    * ``"merge"``: its samples go to the expert of the LARGEST cluster (ties: lowest cluster id).
      Why the largest cluster rather than the nearest one: the suite compares clustering methods
      that live in different spaces (gradients, text embeddings, projections, random), so there is
      no common geometry in which "nearest" means the same thing for all of them; "the largest
      cluster" is a rule that applies identically to every method, and it is the expert whose
      training distribution is already the broadest. The merges are recorded in the manifest.

    If every cluster is small under ``"merge"``, the largest one still gets its expert (there must be
    at least one). Returns ``{cluster: expert}``; :func:`small_cluster_merges` lists the merges.
    """
    if small_clusters not in SMALL_CLUSTER_RULES:
        raise InputError(f"small_clusters must be one of {SMALL_CLUSTER_RULES}, got {small_clusters!r}")
    if int(min_cluster_size) < 1:
        raise InputError(f"min_cluster_size must be at least 1, got {min_cluster_size}")
    frame = validate_assignments(assignments)
    sizes = cluster_sizes(frame)
    small = {c: n for c, n in sizes.items() if n < min_cluster_size}
    if small and small_clusters == "error":
        listed = ", ".join(f"cluster {c} has {n} sample(s)" for c, n in small.items())
        raise InputError(
            f"{listed}: fewer than min_cluster_size={min_cluster_size} "
            "(set small_clusters: merge to fold small clusters into the largest one)"
        )
    largest = max(sizes, key=lambda c: (sizes[c], -c))
    kept = [c for c in sizes if c not in small or c == largest]
    mapping = {c: j for j, c in enumerate(sorted(kept))}
    for c in small:
        if c not in mapping:
            mapping[c] = mapping[largest]
    return dict(sorted(mapping.items()))


def cluster_sizes(assignments: pd.DataFrame) -> dict[int, int]:
    """``{cluster: number of samples}`` in ascending cluster order."""
    counts = assignments["cluster"].astype(int).value_counts()
    return {int(c): int(counts[c]) for c in sorted(counts.index)}


def small_cluster_merges(assignments: pd.DataFrame, mapping: dict[int, int]) -> list[dict[str, int]]:
    """The clusters that share an expert with a larger cluster: ``[{cluster, size, expert}]``."""
    sizes = cluster_sizes(validate_assignments(assignments))
    owner: dict[int, int] = {}
    for c in sorted(mapping, key=lambda c: (-sizes[c], c)):
        owner.setdefault(mapping[c], c)
    return [
        {"cluster": c, "size": sizes[c], "expert": e, "into_cluster": owner[e]}
        for c, e in mapping.items()
        if owner[e] != c
    ]


def expert_labels(records: list[dict[str, Any]], assignments: pd.DataFrame, mapping: dict[int, int]) -> list[int]:
    """The expert id of each record, in ``records`` order (length n).

    Raises:
        InputError: a record id without an assignment, an assigned id with no record, a duplicate
            record id, or a cluster absent from ``mapping``.
    """
    frame = validate_assignments(assignments)
    by_id = dict(zip(frame["id"], frame["cluster"], strict=True))
    seen: set[str] = set()
    labels = []
    for r in records:
        rid = str(r.get("id"))
        if rid in seen:
            raise InputError(f"sample id {rid!r} appears more than once in the records")
        seen.add(rid)
        if rid not in by_id:
            raise InputError(f"sample id {rid!r} is in the records but has no cluster assignment")
        cluster = int(by_id[rid])
        if cluster not in mapping:
            raise InputError(f"cluster {cluster} (sample {rid!r}) has no expert in the plan")
        labels.append(mapping[cluster])
    extra = [i for i in frame["id"] if i not in seen]
    if extra:
        raise InputError(f"sample id {extra[0]!r} is in the assignments but not in the records")
    return labels


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def _specs(params: dict[str, Any]) -> tuple[Any, Any]:
    from gs.training import LoraSpec, TrainSpec

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
    from gs.models import load_model, load_tokenizer

    return load_model(model_dir), load_tokenizer(model_dir)


def plan_experts_from_params(assignments: pd.DataFrame, params: dict[str, Any]) -> dict[int, int]:
    """:func:`plan_experts` with the experts config section's ``min_cluster_size`` and ``small_clusters``
    (the map :func:`train_experts` trains by, and the router learns without the trained experts)."""
    for key in ("min_cluster_size", "small_clusters"):
        if key not in params:
            raise InputError(f"params: missing key {key!r}")
    return plan_experts(
        assignments, min_cluster_size=int(params["min_cluster_size"]), small_clusters=str(params["small_clusters"])
    )


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

    The base model is loaded once and reused: :func:`gs.training.train_lora` unloads its adapter at
    the end, leaving the base weights untouched for the next expert. Every expert starts from the
    same seeded LoRA initialisation (``seed``), so experts differ only by their data.

    Budget: each expert sees its cluster's samples for ``params.train.epochs`` epochs, so the total
    sample-updates equal those of :func:`train_multitask` on the pooled data (same budget).

    ``params``: ``lora`` {rank, alpha, dropout, target_modules}, ``train`` {epochs, learning_rate,
    batch_size, max_length, warmup_ratio, loss_on, max_steps?}, ``min_cluster_size``,
    ``small_clusters`` ("error" | "merge"). The base model's dtype and device are the prepared
    folder's (:func:`gs.models.load_model`). Returns the manifest.
    """
    if not records:
        raise InputError("no training records")
    lora, train = _specs(params)
    frame = validate_assignments(assignments)
    mapping = plan_experts_from_params(frame, params)
    labels = expert_labels(records, frame, mapping)
    expert_ids = sorted(set(mapping.values()))
    from gs.training import train_lora

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
    from gs.training import train_lora

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
# Reading an experts folder
# --------------------------------------------------------------------------------------------------


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
