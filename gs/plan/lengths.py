"""Token lengths for the plan: the pool's real lengths, the padded batches the jobs run, and a step's cost
as a function of its length.

Where a job's batches come from:

* the gradient passes (:func:`gs.gradients.per_sample.length_batches`): windows of ``gradients.projection_rows``
  samples (a multiple of the batch), sorted by length inside each window, batches padded to their longest;
* training (:func:`gs.models.lora.train_lora`): a seeded ``torch.randperm`` per epoch (or, with
  ``train.group_by_length``, transformers' length-grouped order), micro-batches of ``batch_size`` padded to
  their longest.

The pool's lengths are read from the prepared pool (``results/data/pool/train.jsonl``, tokenised with the
prepared model's tokenizer as :func:`gs.data.prompting.encode_example` does) when the plan is given it, else
``plan.token_estimates`` (tokens per sample of each part, the config's stated estimate), else every sample is
taken at ``max_length`` (the upper bound the plan used before it read lengths).

A step's FLOPs and streamed bytes are a quadratic in its length ``t`` at a fixed batch (linear layers grow
with ``t``, attention with ``t^2``): :class:`LengthFit` traces a step at ``t``, ``t / 2`` and ``t / 4`` and
solves for the three coefficients, so a batch of any padded length is costed without tracing it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gs.io import InputError


def part_sizes(config: dict[str, Any], split: str) -> dict[str, int]:
    """Records per part in ``split`` (a derived split counts the records of the split it comes from)."""
    out = {}
    for part, spec in config["data"]["parts"].items():
        entry = spec.get(split)
        while entry is not None and "n" not in entry and "from" in entry:
            entry = spec.get(entry["from"])
        if entry is not None:
            out[part] = int(entry["n"])
        elif split == "reference" and "test" in spec:
            out[part] = int(spec["test"]["n"])
    return out


@dataclass(frozen=True)
class PoolLengths:
    """Tokens per pool sample, ``(n,)`` in pool order (cut at the pass's ``max_length``), and where they came from."""

    lengths: np.ndarray
    source: str

    def describe(self) -> str:
        arr = self.lengths
        return (
            f"Token lengths: {self.source}; n={arr.size}, mean {arr.mean():.0f}, median {np.median(arr):.0f}, "
            f"max {arr.max()} tokens a sample."
        )


def prepared_lengths(pool_file: str | Path, model_dir: str | Path, max_length: int, loss_on: str) -> np.ndarray:
    """Tokens of every record of the prepared pool as the gradient passes encode them (``(n,)``, pool order)."""
    from tqdm.auto import tqdm

    from gs.data.prompting import encode_example
    from gs.models.load import load_tokenizer

    tok = load_tokenizer(model_dir)
    with open(pool_file) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return np.array(
        [len(encode_example(tok, r, max_length, loss_on)["input_ids"]) for r in tqdm(records, desc="pool lengths")],
        dtype=np.int64,
    )


def estimated_lengths(config: dict[str, Any], max_length: int) -> np.ndarray | None:
    """``plan.token_estimates`` (tokens a sample, per part) laid out as the pool is (parts in config order,
    shuffled with the config's seed as :func:`gs.data.prepare.pool_splits` shuffles them; the permutation
    depends on the count alone). None when a part has no estimate."""
    estimates = (config.get("plan") or {}).get("token_estimates") or {}
    sizes = part_sizes(config, "train")
    if not sizes or any(part not in estimates for part in sizes):
        return None
    rows = [min(int(estimates[part]), max_length) for part, n in sizes.items() for _ in range(n)]
    random.Random(int(config["seed"])).shuffle(rows)
    return np.array(rows, dtype=np.int64)


def pool_lengths(
    config: dict[str, Any], *, pool_file: str | Path | None = None, model_dir: str | Path | None = None
) -> PoolLengths:
    """The pool's lengths at ``gradients.max_length``: prepared (both files given and present), else
    estimated, else all at ``max_length``.

    Raises:
        InputError: the prepared pool's size differs from the config's (a stale pool).
    """
    grads = config["gradients"]
    max_length, n = int(grads["max_length"]), sum(part_sizes(config, "train").values())
    if pool_file and model_dir and Path(pool_file).is_file() and Path(model_dir).is_dir():
        arr = prepared_lengths(pool_file, model_dir, max_length, str(grads.get("loss_on", "response")))
        if arr.size != n:
            raise InputError(f"{pool_file}: {arr.size} records, the config's parts give {n}")
        return PoolLengths(arr, f"read from {pool_file} (the prepared pool, its model's tokenizer)")
    est = estimated_lengths(config, max_length)
    if est is not None:
        return PoolLengths(est, "plan.token_estimates (the config's estimate per part; no prepared pool read)")
    return PoolLengths(
        np.full(n, max_length, dtype=np.int64),
        f"every sample at max_length {max_length} (no prepared pool, no estimates)",
    )


def window_batches(lengths: np.ndarray, batch: int, window: int) -> np.ndarray:
    """Padded length of every batch the gradient passes run over ``lengths`` (``(batches,)``):
    :func:`gs.gradients.per_sample.length_batches`' batches, each at its longest sample."""
    from gs.gradients.per_sample import length_batches

    return np.array([int(lengths[b].max()) for b in length_batches(lengths.tolist(), batch, window)], dtype=np.int64)


def shuffled_batches(
    lengths: np.ndarray, batch: int, seed: int, step_samples: int | None = None, by_length: bool = False
) -> np.ndarray:
    """Padded length of every micro-batch of one training epoch over ``lengths``: the order of
    :func:`gs.models.lora.epoch_order` (a seeded ``torch.randperm``, or with ``by_length`` transformers'
    length-grouped one), cut into optimiser steps of ``step_samples`` (default ``batch``) samples and each
    step into micro-batches of ``batch``, as :func:`gs.models.lora.train_lora` runs them."""
    import torch

    from gs.models.lora import epoch_order

    step = step_samples or batch
    order = epoch_order(lengths.tolist(), step, torch.Generator().manual_seed(seed), by_length)
    ordered = lengths[np.array(order, dtype=np.int64)]
    out = [
        int(ordered[s + m : min(s + m + batch, s + step, ordered.size)].max())
        for s in range(0, ordered.size, step)
        for m in range(0, min(step, ordered.size - s), batch)
    ]
    return np.array(out, dtype=np.int64)


def spread(padded: np.ndarray, count: int) -> np.ndarray:
    """``count`` batch lengths drawn cyclically from ``padded`` (a job that runs more or fewer batches
    than one pass: epochs, a subset of the pool)."""
    if count <= 0 or padded.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.resize(padded, count)


@dataclass(frozen=True)
class LengthFit:
    """Per phase, FLOPs and bytes streamed of one step of a fixed batch as ``c0 + c1 t + c2 t^2``."""

    flops: dict[str, tuple[float, float, float]]
    bytes_read: dict[str, tuple[float, float, float]]

    @staticmethod
    def _solve(ts: list[int], ys: list[float]) -> tuple[float, float, float]:
        if len(set(ts)) < 3:  # too short to tell t from t^2: proportional to t
            return 0.0, ys[0] / ts[0], 0.0
        c2, c1, c0 = np.polyfit(np.array(ts, dtype=float), np.array(ys, dtype=float), 2)
        return float(c0), float(c1), float(c2)

    @classmethod
    def from_traces(cls, traces: dict[int, Any]) -> LengthFit:
        """``traces``: :class:`gs.plan.trace.Trace` of the same step at three lengths."""
        ts = sorted(traces)
        phases = {p for tr in traces.values() for p in tr.flops} | {p for tr in traces.values() for p in tr.bytes_read}
        return cls(
            {p: cls._solve(ts, [traces[t].flops.get(p, 0) for t in ts]) for p in sorted(phases)},
            {p: cls._solve(ts, [traces[t].bytes_read.get(p, 0) for t in ts]) for p in sorted(phases)},
        )

    @staticmethod
    def _at(c: tuple[float, float, float], t: np.ndarray) -> np.ndarray:
        return np.maximum(0.0, c[0] + c[1] * t + c[2] * t * t)

    def flops_at(self, phase: str, t: np.ndarray) -> np.ndarray:
        return self._at(self.flops.get(phase, (0.0, 0.0, 0.0)), np.asarray(t, dtype=float))

    def bytes_at(self, phase: str, t: np.ndarray) -> np.ndarray:
        return self._at(self.bytes_read.get(phase, (0.0, 0.0, 0.0)), np.asarray(t, dtype=float))


def fit_lengths(max_length: int) -> list[int]:
    """The lengths a step is traced at for :class:`LengthFit`: ``t``, ``t / 2``, ``t / 4`` (at least 1)."""
    return sorted({max(1, max_length // k) for k in (1, 2, 4)}, reverse=True)


def fit_step(trace_at: Callable[[int], Any], max_length: int) -> LengthFit:
    """:class:`LengthFit` of the step ``trace_at(t)`` traces."""
    return LengthFit.from_traces({t: trace_at(t) for t in fit_lengths(max_length)})
