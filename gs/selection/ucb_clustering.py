"""ClusterUCB's own arms: cosine k-means of Adam-preconditioned, projected pool gradients at an early checkpoint.

Following the authors' code (``ZigeW/ClusterUCB``, read for this module, none of it copied):

* ``cluster_ucb_selection.sh`` step 1: a warm-up that saves a checkpoint every 20 steps
  (``train/scripts/warmup_train.sh``: ``--save_strategy steps --save_steps 20``), then the per-sample
  gradients of the whole pool at ``checkpoint-20`` with ``get_train_lora_grads.sh ... "adam"``: Adam
  update directions (``collect_grad_reps.py``, ``obtain_gradients_with_adam``) projected to 8192
  dimensions with TRAK's Rademacher projector and L2-normalised (``all_orig.pt``);
* ``kmeans_clustering.py``, ``KMeans_cosine``: Lloyd's algorithm for the cosine similarity, the
  initial centres ``K`` distinct pool rows drawn at random (``random.sample``; not normalised), then
  ``--iters 20`` rounds of: assign each row to the centre with the largest dot product, set each centre
  to the sum of its rows, L2-normalise the centres. An empty cluster's centre becomes the zero vector
  and stays empty.

Here the gradient side is :mod:`gs.selection.influence`'s pipeline unchanged
(:func:`gs.selection.influence.load_moments`,
its projector and normalisation, :func:`gs.selection.less.adam_precondition`), so with the influence pass's
projection settings the features are exactly the influence pass's training features at that checkpoint:
the pass also yields every sample's influence there (on each target), which the on-demand selector
reuses when the clustering checkpoint is one of the influence checkpoints (:mod:`gs.selection.accounting`).
Its Rademacher projector on a GPU runs in the model's dtype as LESS builds it, ``gradients.projection_rows``
rows a call like LESS's ``project_interval`` (:mod:`gs.selection.influence`, "Projector dtype").

Departures: the draw of initial centres uses a numpy ``Generator`` (a seed does not reproduce Python's
``random``); empty clusters are dropped and the rest relabelled ``0..K'-1`` (the bandit needs every arm
to hold a sample), ``K'`` recorded; the clustering checkpoint is the warm-up's ``step-<s>/`` folder for
the configured step when the warm-up saved one, else its earliest epoch checkpoint (the embedded
default's warm-up has 6 steps in all, fewer than 20), and the output says which.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gs.checks import int_param
from gs.io import InputError, atomic_path, parse_params, parse_target_specs, run_cli

__all__ = ["clustering_checkpoint", "clustering_pass", "kmeans_cosine"]


def kmeans_cosine(x: torch.Tensor, k: int, iters: int, seed: int) -> tuple[np.ndarray, torch.Tensor]:
    """``KMeans_cosine`` of ``kmeans_clustering.py`` on rows ``x`` (n, p); returns labels (n,) and centres (k, p).

    The labels are those of the last assignment step, the centres those of the last update (as the
    reference returns ``cl, c``). Rows are used as given (the reference clusters unit rows).
    """
    n = x.shape[0]
    k, iters = int_param(k, "k", minimum=1), int_param(iters, "iters", minimum=1)
    if k > n:
        raise InputError(f"k-means: k {k} exceeds the {n} samples")
    start = np.random.default_rng(seed).choice(n, size=k, replace=False)
    centres = x[torch.from_numpy(start)].clone()
    labels = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        labels = (x @ centres.T).argmax(dim=1)
        centres.zero_().index_add_(0, labels, x)
        centres = torch.nn.functional.normalize(centres, dim=1)
    return labels.cpu().numpy().astype(np.int64), centres


def clustering_checkpoint(warmup_dir: str | Path, step: int) -> tuple[Path, str]:
    """The warm-up folder to cluster at, and a sentence saying why (see the module docstring)."""
    from gs.selection.influence import read_checkpoints

    stepped = Path(warmup_dir) / f"step-{int(step)}"
    if (stepped / "adam_moments.pt").is_file():
        return stepped, f"step {step} checkpoint (as cluster_ucb_selection.sh: checkpoint-20)"
    first = read_checkpoints(warmup_dir)[0]["dir"]
    return first, (
        f"the warm-up saved no step-{step} checkpoint (it has fewer steps, or no step checkpoints): "
        f"clustered at its earliest checkpoint, {first.name}"
    )


def clustering_pass(
    model_dir: str,
    warmup_dir: str,
    pool: list[dict[str, Any]],
    targets: dict[str, list[dict[str, Any]]],
    gradient_params: dict[str, Any],
    cluster_params: dict[str, Any],
    seed: int,
) -> dict[str, np.ndarray]:
    """Features of every pool sample at the clustering checkpoint, k-means for each k, influences there.

    ``gradient_params``: the ``gradients`` section (``batch_size``, ``max_length``, ``influence``);
    ``cluster_params``: ``selection.ucb_clustering`` (``step``, ``k``, ``curve_k``, ``iters``).
    Returns arrays for ``clustering.npz``: ``ids`` (n,), ``targets`` (T,), ``influence`` (T, n) at the
    clustering checkpoint (the max over each target's subtasks there), ``influence_subtask`` (S, n) per
    subtask with ``subtask_target`` (S,) and ``subtask`` (S,) as in ``influence.npz``
    (:func:`gs.selection.influence.compute_influence`; the on-demand selector sums the per-subtask rows
    over checkpoints before the max), ``labels_k<K>`` (n,) for the main k and every ``curve_k``, ``ks``,
    ``checkpoint`` (folder name), ``note``, ``gradient_computations`` (n), ``validation_computations``.
    Memory: the (n, p) float32 features on the host (p = d without projection).
    """
    from tqdm.auto import tqdm

    from gs.gradients.projection import projection_rows
    from gs.models.load import load_model, load_tokenizer
    from gs.models.lora import load_adapter, seed_everything
    from gs.selection.influence import (
        ProjectedFeatures,
        influence_settings,
        load_moments,
        preconditioned_gradients,
        subtask_layout,
        target_directions,
        target_scores,
    )

    if not pool:
        raise InputError("the training pool is empty")
    dim, kind = influence_settings(gradient_params)
    names = sorted(targets)
    owner, subtasks = subtask_layout(targets, names)
    seed_everything(seed)
    ckpt, note = clustering_checkpoint(warmup_dir, int(cluster_params["step"]))
    print(note)
    tok = load_tokenizer(model_dir)
    model = load_adapter(load_model(model_dir), ckpt, trainable=True)
    first = next(model.parameters())  # LESS collect_grads: the projector's device and dtype
    device = first.device
    feats = ProjectedFeatures(dim, kind, seed, device, first.dtype)
    directions = target_directions(model, tok, targets, names, feats, gradient_params)  # (S, p)
    m, v = load_moments(ckpt, device)
    rows, ids = [], []
    pool_rows = preconditioned_gradients(model, tok, pool, gradient_params, m, v, str(ckpt), progress=False)
    for batch_ids, x in tqdm(
        feats.in_buffers(pool_rows, projection_rows(gradient_params)),
        desc="clustering pass",
        unit="batch",
        total=math.ceil(len(pool) / int(gradient_params["batch_size"])),
    ):
        rows.append(x.cpu())
        ids.extend(batch_ids)
    x = torch.cat(rows)  # (n, p) unit rows
    per_subtask = (x @ directions.cpu().T).double().numpy().T  # (S, n)
    out: dict[str, np.ndarray] = {
        "ids": np.array(ids),
        "targets": np.array(names),
        "influence": target_scores(per_subtask, owner, len(names)),
        "influence_subtask": per_subtask,
        "subtask_target": owner,
        "subtask": np.array(subtasks),
        "checkpoint": np.array(ckpt.name),
        "note": np.array(note),
        "gradient_computations": np.array(len(pool)),
        "validation_computations": np.array(sum(len(targets[t]) for t in names)),
    }
    ks = sorted({int(cluster_params["k"]), *[int(k) for k in cluster_params.get("curve_k", [])]})
    for k in ks:
        labels, _ = kmeans_cosine(x, k, int(cluster_params.get("iters", 20)), seed)
        out[f"labels_k{k}"] = np.unique(labels, return_inverse=True)[1].astype(np.int64)  # empty ones dropped
    out["ks"] = np.array(ks)
    return out


def main(argv: list[str] | None = None) -> None:
    import pandas as pd

    from gs.data.prepare import load_records

    parser = argparse.ArgumentParser(description="ClusterUCB's clustering pass and cosine k-means.")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--warmup", required=True)
    parser.add_argument("--train", required=True, help="the pooled training set")
    parser.add_argument("--targets", nargs="+", required=True, help="DOMAIN=validation.jsonl")
    parser.add_argument("--gradients", required=True, help="the gradients config section as JSON")
    parser.add_argument("--params", required=True, help="selection.ucb_clustering as JSON")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    targets = {name: load_records(path) for name, path in parse_target_specs(args.targets).items()}
    params = parse_params(args.params)
    arrays = clustering_pass(
        args.model_dir,
        args.warmup,
        load_records(args.train),
        targets,
        parse_params(args.gradients),
        params,
        args.seed,
    )
    out = Path(args.out_dir)
    with atomic_path(out, is_dir=True) as tmp:
        with open(Path(tmp) / "clustering.npz", "wb") as f:
            np.savez(f, **arrays)
        labels = arrays[f"labels_k{int(params['k'])}"]
        pd.DataFrame({"id": arrays["ids"], "cluster": labels}).to_csv(Path(tmp) / "assignments.csv", index=False)
    print(json.dumps({"checkpoint": str(arrays["checkpoint"]), "sizes": np.bincount(labels).tolist()}))


if __name__ == "__main__":
    run_cli(main)
