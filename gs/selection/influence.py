"""LESS influence of every pooled training sample on each target, with the model, in one stream.

For every warm-up checkpoint c (``results/gradients/warmup/checkpoint-<e>/``: adapter, Adam moments
and the epoch's mean learning rate), following LESS (Xia et al., ICML 2024; ``princeton-nlp/LESS``,
``less/data_selection/collect_grad_reps.py`` and ``matching.py``):

* target gradients: plain (SGD) per-sample LoRA gradients of each target's validation samples,
  projected (``gradients.influence.projection_dim`` p; ``null`` = full dimension d) and L2-normalised;
* training features: each pool sample's per-sample LoRA gradient turned into the Adam update
  direction with *that checkpoint's* moments (:func:`gs.selection.less.adam_precondition`, LESS's
  ``obtain_gradients_with_adam``: no bias correction, eps inside the square root), then projected
  with the same projector, then L2-normalised. LESS normalises *after* projecting (``collect_grads``
  projects the raw Adam/SGD vectors; ``merge_and_normalize_info`` normalises the projected rows), and
  so do we, for both sides;
* influence of sample i on target T, as LESS ``less/data_selection/matching.py`` computes it
  (lines 53-79): per checkpoint ``training_info @ validation_info.T`` (n, m) (:75-77), summed over
  checkpoints with weights proportional to their mean learning rates renormalised to sum to 1
  (:45-47, :75), *then* ``reshape(n, N_SUBTASKS[target], -1).mean(-1).max(-1)`` (:78-79): the mean
  over each subtask's validation samples, the max over the target's subtasks. ClusterUCB scores a
  draw the same way (``data_selection/cluster_ucb_select_data.py``, ``matching``, :57-59). A
  validation record's subtask is its ``meta.subtask`` (a string: MMLU subject, BBH task, TydiQA
  language; :func:`subtask_groups`); a target whose records carry none is one subtask (the max over
  one is the identity, so its score is the plain checkpoint-weighted mean). The mean is per label,
  so subtasks need not be equal-sized or contiguous (LESS's reshape needs both).

Memory: the mean over j commutes with the inner product, ``mean_j <x_i, v_j> = <x_i, mean_j v_j>``,
so each subtask s of each target is kept as one (p,) float32 vector, the mean of its normalised
projected validation gradients (exactly LESS's per-subtask mean, without storing n_val x p); the
checkpoint sum is linear too, so it is taken per subtask on the (C, S, n) scores and the max (not
linear) comes last, as in LESS. The pool is streamed window by window (:func:`gs.gradients.passes.gradient_window`
samples, batched by token length inside it, in pool order) and scored against all S subtask
directions at once, since the training features do not depend on the target. No float64 copy of a
gradient block is made; only the scores are float64. With b the gradient batch, d the LoRA dimension,
p the projection dimension (p = d without projection), T targets, S their subtasks in all (S = T
when no record carries a subtask), C checkpoints, n the pool, peak memory per pool block, beyond the
model and its activations:

* device (the model's): ``4 b d`` (the per-sample gradients :func:`gs.gradients.per_sample.iter_gradients`
  still holds) ``+ 4 b d`` (the block moved back from the host) ``+ 8 b d`` (the Adam direction and
  one temporary) ``+ 8 d`` (one checkpoint's moments) ``+ e r d`` (the projection buffer: r =
  ``gradients.projection_rows`` rows in the projector's dtype, e bytes an entry) ``+ 4 r p + 4 S p``
  plus the projector's workspace: TRAK's ``CudaProjector`` only its (16 ceil(b/16), SMs, p) float32 output; for
  ``BasicProjector`` on a GPU one generated (d, block) block in the model's dtype (e bytes an entry:
  ``e d block``, block = :func:`gs.gradients.projection.basic_block_size`, LESS's 128 where it fits
  ``GPU_BLOCK_BYTES``, 19 bfloat16 columns at d = 109M) and the block cast to that dtype (``e b d``).
  On the CPU the first two terms are one.
* host: ``4 w d`` (the window iter_gradients hands over, w = :func:`gs.gradients.passes.gradient_window`,
  at most ``max(b, r)``) ``+ 4 b d`` (a batch on its way into it) ``+ 8 n (C S + C T + S + T)`` (the per-subtask
  scores and, at the end, the per-target ones, :func:`compute_influence`) and, for the CPU Rademacher
  projector, ``d p`` int8 + ``4 d 128`` (the kept matrix and its conversion buffer).

Projector dtype: on a GPU TRAK's projector runs in the model's dtype, as LESS builds it
(``collect_grads``: ``dtype = next(model.parameters()).dtype``; :func:`gs.gradients.projection.projector_dtype`),
bfloat16 at paper scale; on the CPU in float32. As LESS buffers ``project_interval = 16`` gradients per
``project`` call, the pool's update directions go to the projector ``gradients.projection_rows`` rows at a
time (default 16; :func:`gs.gradients.projection.project_in_buffers`, a (rows, d) buffer in the
projector's dtype on the device): TRAK's ``BasicProjector`` regenerates its d x p matrix on every call, so
that cost is paid once a buffer; the gradients come in windows of ``r`` rounded down to a multiple of b
(:func:`gs.gradients.passes.gradient_window`), so a buffer holds one window. The validation gradients are
projected window by window (one call a window; device: the ``(w, d)`` window cast to the projector's dtype).

The pass costs n x C per-sample gradient computations: the "full gradient-based selection" reference
whose cost ClusterUCB reduces.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gs.data.prepare import load_records
from gs.gradients.passes import add_pass_arguments, gradient_window, normalise_rows
from gs.gradients.projection import KINDS, Projector, project_in_buffers, projection_rows, projector_dtype
from gs.io import InputError, atomic_path, parse_params, parse_target_specs, run_cli
from gs.models.load import load_model, load_tokenizer
from gs.models.lora import load_adapter, seed_everything
from gs.selection.less import adam_precondition

DEFAULT_KIND = "rademacher"  # LESS collect_grad_reps.py: TRAK's Rademacher projector


def read_checkpoints(warmup_dir: str | Path) -> list[dict[str, Any]]:
    """The warm-up checkpoints in epoch order: ``{"dir", "mean_lr"}`` (moments: :func:`load_moments`)."""
    dirs = sorted(Path(warmup_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if not dirs:
        raise InputError(f"{warmup_dir}: no checkpoint-<epoch> folders (the warm-up saves them)")
    out = []
    for d in dirs:
        for name in ("adam_moments.pt", "checkpoint.json"):
            if not (d / name).is_file():
                raise InputError(f"{d / name}: file not found (the warm-up writes it with each checkpoint)")
        meta = json.loads((d / "checkpoint.json").read_text())
        if "mean_lr" not in meta:
            raise InputError(f"{d / 'checkpoint.json'}: field 'mean_lr' missing")
        out.append({"dir": d, "mean_lr": float(meta["mean_lr"])})
    return out


def load_moments(checkpoint_dir: str | Path, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A checkpoint's Adam moments ``(exp_avg, exp_avg_sq)``, each (d,) float32 on ``device`` (one
    checkpoint at a time: 8 d bytes)."""
    path = Path(checkpoint_dir) / "adam_moments.pt"
    moments = torch.load(path, map_location=device)
    for key in ("exp_avg", "exp_avg_sq"):
        if key not in moments:
            raise InputError(f"{path}: field {key!r} missing")
    return moments["exp_avg"].float(), moments["exp_avg_sq"].float()


def checkpoint_weights(mean_lrs: list[float]) -> np.ndarray:
    """LESS's checkpoint weights: the mean learning rates renormalised to sum to 1 (equal if all 0)."""
    w = np.asarray(mean_lrs, dtype=np.float64)
    if (w < 0).any() or not np.isfinite(w).all():
        raise InputError(f"checkpoint mean learning rates must be finite and >= 0, got {w.tolist()}")
    return w / w.sum() if w.sum() > 0 else np.full(len(w), 1 / len(w))


def influence_settings(params: dict[str, Any]) -> tuple[int | None, str]:
    """``(projection_dim, kind)`` from the ``gradients`` section's ``influence`` block (defaults: full
    dimension, TRAK Rademacher)."""
    cfg = params.get("influence") or {}
    dim = cfg.get("projection_dim")
    kind = cfg.get("projection_kind", DEFAULT_KIND)
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        raise InputError(f"gradients.influence.projection_dim must be a positive integer or null, got {dim!r}")
    if kind not in KINDS:
        raise InputError(f"gradients.influence.projection_kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return dim, kind


class ProjectedFeatures:
    """Projection (or none) of gradient blocks to (b, p) float32 on the model's device, then unit rows.

    Without projection the block is normalised in place (no copy when it is already float32 there).
    ``model_dtype``: the model's (LESS's projector dtype on a GPU, :func:`gs.gradients.projection.projector_dtype`).
    """

    def __init__(
        self, dim: int | None, kind: str, seed: int, device: torch.device, model_dtype: torch.dtype = torch.float32
    ) -> None:
        self.dim, self.kind, self.seed, self.device = dim, kind, seed, device
        self.dtype = projector_dtype(model_dtype, device)
        self.projector: Projector | None = None
        self.d = 0  # the gradient dimension, once a block came

    def in_buffers(self, blocks: Iterable[tuple[Any, torch.Tensor]], rows: int) -> Iterator[tuple[Any, torch.Tensor]]:
        """``self`` over a stream of ``(payload, (b, d) block)``, ``rows`` gradient rows per projector call
        (:func:`gs.gradients.projection.project_in_buffers`, buffered in the projector's dtype); each
        payload with its (b, p) unit rows, in order. Without projection each block alone, as it comes."""
        if self.dim is None:
            for payload, block in blocks:
                yield payload, self(block)
            return
        yield from project_in_buffers(blocks, self, rows, self.dtype)

    def __call__(self, grads: torch.Tensor) -> torch.Tensor:
        self.d = int(grads.shape[1])
        if self.dim is None:
            return normalise_rows(
                grads.to(self.device, torch.float32), inplace=True
            )  # in place: the block is not reused
        if self.projector is None:
            # One projector for every checkpoint and both sides: LESS builds it with the same seed each time.
            self.projector = Projector(
                self.kind, grads.shape[1], self.dim, self.seed, device=self.device, dtype=self.dtype
            )
        return normalise_rows(self.projector.project(grads).to(self.device, torch.float32), inplace=True)


def subtask_groups(records: list[dict[str, Any]], target: str) -> tuple[list[str], np.ndarray]:
    """A target's subtasks: their labels, sorted, and each validation record's index into them (int64).

    The label is the record's ``meta.subtask`` (a string). Records that carry none are one subtask,
    labelled ``""``; a target mixing records with and without a subtask is an error (which subtask the
    others belong to would be a guess). Every label comes from a record, so no subtask is empty.
    """
    if not records:
        raise InputError(f"target {target!r}: no validation samples")
    raw = []
    for r in records:
        meta = r.get("meta") or {}
        label = meta.get("subtask") if isinstance(meta, dict) else None
        if label is not None and not isinstance(label, str):
            raise InputError(f"target {target!r}: record {r.get('id')!r} has meta.subtask {label!r}, not a string")
        raw.append(label)
    missing = [r.get("id") for r, label in zip(records, raw, strict=True) if label is None]
    if missing and len(missing) < len(records):
        raise InputError(
            f"target {target!r}: record {missing[0]!r} has no meta.subtask but others of its validation set do"
        )
    if missing:
        return [""], np.zeros(len(records), dtype=np.int64)
    labels, group_of = np.unique(np.array(raw, dtype=object), return_inverse=True)
    return [str(x) for x in labels], group_of.astype(np.int64).reshape(-1)


def subtask_layout(targets: dict[str, list[dict[str, Any]]], names: list[str]) -> tuple[np.ndarray, list[str]]:
    """The rows of :func:`target_directions`: ``(owner, labels)``, the target index (into ``names``, int64)
    and the subtask label of each of the S rows, target by target, each target's subtasks sorted."""
    owner, labels = [], []
    for i, t in enumerate(names):
        sub, _ = subtask_groups(targets[t], t)
        owner.extend([i] * len(sub))
        labels.extend(sub)
    return np.array(owner, dtype=np.int64), labels


def target_directions(
    model: Any,
    tok: Any,
    targets: dict[str, list[dict[str, Any]]],
    names: list[str],
    feats: ProjectedFeatures,
    params: dict,
) -> torch.Tensor:
    """(S, p) float32: per target in ``names`` and per subtask of it (rows as :func:`subtask_layout`),
    the mean of the subtask's validation samples' normalised projected SGD gradients.

    A target without subtasks is one row, computed exactly as before subtasks existed."""
    from gs.gradients.per_sample import iter_gradients

    rows = []
    for t in names:
        labels, group_of = subtask_groups(targets[t], t)
        totals: list[torch.Tensor | None] = [None] * len(labels)
        start = 0
        for _, g in iter_gradients(
            model,
            tok,
            targets[t],
            batch_size=int(params["batch_size"]),
            max_length=int(params["max_length"]),
            loss_on="response",
            progress=False,
            window=gradient_window(params),
        ):
            f = feats(g)  # one projector call per window
            groups = group_of[start : start + f.shape[0]]
            start += f.shape[0]
            for s in np.unique(groups).tolist():
                # The whole block when it is one subtask's (always so without subtasks): the same sum.
                part = (f if (groups == s).all() else f[torch.from_numpy(np.flatnonzero(groups == s))]).sum(dim=0)
                totals[s] = part if totals[s] is None else totals[s].add_(part)
        counts = np.bincount(group_of, minlength=len(labels))
        for s, (label, total) in enumerate(zip(labels, totals, strict=True)):
            if total is None or not bool(total.abs().max() > 0):
                which = f"target {t!r}" + (f" subtask {label!r}" if len(labels) > 1 or label else "")
                raise InputError(f"{which}: every validation gradient is zero (no gradient direction)")
            rows.append(total / int(counts[s]))
    return torch.stack(rows)


def preconditioned_gradients(
    model: Any,
    tok: Any,
    records: list[dict[str, Any]],
    params: dict[str, Any],
    m: torch.Tensor,
    v: torch.Tensor,
    where: str,
    progress: bool = True,
) -> Iterator[tuple[list[str], torch.Tensor]]:
    """LESS's Adam update directions of ``records`` at one checkpoint, in input order: ``(ids, (b, d))`` on
    the moments' device (:func:`gs.selection.less.adam_precondition` of the per-sample gradients of the
    answer tokens, ``params``' batch size and length). ``where`` names the checkpoint in errors.

    The gradients come a window at a time (:func:`gs.gradients.passes.gradient_window` records, batched by
    length inside it, on the host); each window is preconditioned and yielded in consecutive chunks of
    ``batch_size`` rows, so the device holds one chunk's direction and temporary at a time, and a
    projection buffer of ``gradients.projection_rows`` rows (:meth:`ProjectedFeatures.in_buffers`) gathers
    one whole window per projector call."""
    from gs.gradients.per_sample import iter_gradients

    batch_size = int(params["batch_size"])
    for window_ids, grads in iter_gradients(
        model,
        tok,
        records,
        batch_size=batch_size,
        max_length=int(params["max_length"]),
        loss_on="response",  # LESS: the loss on the answer tokens
        progress=progress,
        window=gradient_window(params),
    ):
        if m.shape[0] != grads.shape[1]:
            raise InputError(f"{where}: Adam moments have d={m.shape[0]}, the LoRA gradients d={grads.shape[1]}")
        for start in range(0, grads.shape[0], batch_size):
            chunk = grads[start : start + batch_size]
            yield window_ids[start : start + batch_size], adam_precondition(chunk.to(m.device), m, v)


def target_scores(subtask_scores: np.ndarray, owner: np.ndarray, n_targets: int) -> np.ndarray:
    """The max over each target's subtask rows (LESS ``matching.py`` ``.max(-1)``): ``subtask_scores``
    (..., S, n) to (..., T, n); ``owner`` (S,) the target index of each row (:func:`subtask_layout`)."""
    out = np.empty((*subtask_scores.shape[:-2], n_targets, subtask_scores.shape[-1]), dtype=subtask_scores.dtype)
    for t in range(n_targets):
        out[..., t, :] = subtask_scores[..., owner == t, :].max(axis=-2)
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

    ``params`` is the ``gradients`` config section (``batch_size``, ``max_length``, ``influence``).
    Keys: ``ids`` (n,) in pool order, ``targets`` (T,) sorted, ``scores`` (T, n) the target's
    influence (the checkpoint-weighted sum per subtask, then the max over its subtasks),
    ``per_checkpoint`` (C, T, n) each checkpoint's alone (the max over subtasks at that checkpoint:
    with subtasks ``scores`` is not ``weights @ per_checkpoint``), ``weights`` (C,),
    ``gradient_computations`` (n * C), ``projection_dim`` (p; d when not projected),
    ``projection_kind`` (``"none"`` when not projected) and ``gradient_dim`` (d). Per subtask (S rows,
    :func:`subtask_layout`; S = T and the rows are the targets when no record carries a subtask):
    ``subtask_target`` (S,) int64 the row's target index, ``subtask`` (S,) its label (``""`` for a
    target without subtasks), ``subtask_per_checkpoint`` (C, S, n) and ``subtask_scores`` (S, n), the
    checkpoint-weighted sum. Files written before subtasks lack the four; their ``scores`` and
    ``per_checkpoint`` mean the same.
    """
    from tqdm.auto import tqdm

    if not pool:
        raise InputError("the training pool is empty")
    dim, kind = influence_settings(params)
    names = sorted(targets)
    owner, labels = subtask_layout(targets, names)
    seed_everything(seed)
    tok = load_tokenizer(model_dir)
    checkpoints = read_checkpoints(warmup_dir)
    per_ckpt = np.zeros((len(checkpoints), len(labels), len(pool)))
    ids: list[str] = []
    d = 0
    feats: ProjectedFeatures | None = None
    for c, ckpt in enumerate(tqdm(checkpoints, desc="influence checkpoints", unit="checkpoint")):
        model = load_adapter(load_model(model_dir), ckpt["dir"], trainable=True)
        first = next(model.parameters())  # LESS collect_grads: the projector's device and dtype
        device = first.device
        feats = feats or ProjectedFeatures(dim, kind, seed, device, first.dtype)
        directions = target_directions(model, tok, targets, names, feats, params)  # (S, p)
        m, v = load_moments(ckpt["dir"], device)
        start, batch_order = 0, []

        pool_rows = preconditioned_gradients(model, tok, pool, params, m, v, str(ckpt["dir"]))
        for batch_ids, x in feats.in_buffers(pool_rows, projection_rows(params)):  # (b, p) unit rows
            d = feats.d
            scores = (x @ directions.T).double().cpu().numpy()  # (b, S)
            per_ckpt[c, :, start : start + len(batch_ids)] = scores.T
            start += len(batch_ids)
            batch_order.extend(batch_ids)
        if ids and batch_order != ids:
            raise InputError(f"{ckpt['dir']}: the pool came back in a different order than for checkpoint 0")
        ids = batch_order
        del model, m, v, directions
    weights = checkpoint_weights([ck["mean_lr"] for ck in checkpoints])
    weighted = np.einsum("c,csn->sn", weights, per_ckpt)  # LESS: the checkpoint sum first, per subtask
    return {
        "ids": np.array(ids),
        "targets": np.array(names),
        "scores": target_scores(weighted, owner, len(names)),  # then the max over subtasks
        "per_checkpoint": target_scores(per_ckpt, owner, len(names)),
        "weights": weights,
        "gradient_computations": np.array(len(pool) * len(checkpoints)),
        "projection_dim": np.array(d if dim is None else dim),
        "projection_kind": np.array("none" if dim is None else kind),
        "gradient_dim": np.array(d),
        "subtask_target": owner,
        "subtask": np.array(labels),
        "subtask_per_checkpoint": per_ckpt,
        "subtask_scores": weighted,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="LESS influence of the pool on every target domain.")
    add_pass_arguments(parser)
    parser.add_argument("--targets", nargs="+", required=True, help="DOMAIN=validation.jsonl")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    targets = {name: load_records(path) for name, path in parse_target_specs(args.targets).items()}
    arrays = compute_influence(
        args.model_dir, args.warmup, load_records(args.train), targets, parse_params(args.params), args.seed
    )
    with atomic_path(args.out) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    print(json.dumps({t: float(arrays["scores"][i].mean()) for i, t in enumerate(arrays["targets"])}))


if __name__ == "__main__":
    run_cli(main)
