"""One LoRA training loop for every stage: the warm-up adapter, the experts, the multi-task LoRA
and the ClusterUCB fine-tunes.

Plain PyTorch with peft (AdamW, linear schedule with warm-up ratio, as LESS's warm-up: arXiv
2402.04333 §4 and princeton-nlp/LESS ``less/train/train.py``), so that the loop is small, seeded and
deterministic on CPU, and so that the Adam moments LESS needs for its preconditioned gradients can be saved per
checkpoint.

Precision: the base model stays in the dtype it was loaded in (``model.dtype``, bfloat16 at paper
scale); peft's ``autocast_adapter_dtype`` (its default, passed explicitly) keeps the LoRA weights in
float32, so their gradients and the AdamW state are float32 too (no autocast, no master copy needed:
only the adapter is trained). ``train.gradient_checkpointing`` recomputes each decoder layer in the
backward pass (transformers' ``activation_checkpointing_enable``, formerly
``gradient_checkpointing_enable``, with ``use_reentrant=False`` as peft's
``prepare_model_for_kbit_training`` sets it up; transformers adds the ``enable_input_require_grads``
hook itself). Its RNG state is replayed, so LoRA dropout draws the same masks and the losses and
gradients equal those without checkpointing.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gs.data.prompting import IGNORE_INDEX, collate, encode_example
from gs.io import InputError, atomic_path, write_json

ADAPTER_NAME = "default"


@dataclass
class LoraSpec:
    """LoRA hyper-parameters (peft ``LoraConfig``)."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> LoraSpec:
        return cls(
            rank=int(cfg["rank"]),
            alpha=int(cfg["alpha"]),
            dropout=float(cfg["dropout"]),
            target_modules=list(cfg["target_modules"]),
        )


@dataclass
class TrainSpec:
    """Optimisation settings. ``max_steps`` (if set) caps the steps, for smoke tests;
    ``gradient_checkpointing`` trades a second forward pass for activation memory. As in transformers'
    ``TrainingArguments``, an optimiser step takes ``batch_size x gradient_accumulation_steps`` samples,
    ``batch_size`` of them per forward and backward pass."""

    epochs: float = 1.0
    learning_rate: float = 2e-4
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 256
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    loss_on: str = "response"
    max_steps: int | None = None
    gradient_checkpointing: bool = False
    # Each epoch's order as transformers' Trainer(group_by_length=True) makes it (LengthGroupedSampler): a seeded
    # permutation cut into mega-batches of 50 optimiser steps, each sorted by length, so a micro-batch pads to
    # similar lengths; False: a plain seeded permutation.
    group_by_length: bool = False
    # Steps after which train_lora(checkpoints=True) also saves step-<s>/ (ClusterUCB clusters at a
    # step-20 checkpoint: ZigeW/ClusterUCB train/scripts/warmup_train.sh --save_strategy steps --save_steps 20).
    save_steps: list[int] = field(default_factory=list)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> TrainSpec:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in cfg.items() if k in known})


def epoch_order(lengths: list[int], step_samples: int, generator: torch.Generator, by_length: bool) -> list[int]:
    """One epoch's sample order: ``torch.randperm`` of ``len(lengths)`` from ``generator``, or with ``by_length``
    transformers' ``get_length_grouped_indices`` (what ``Trainer(group_by_length=True)`` samples with, its batch
    the optimiser step's ``step_samples``), which draws the same permutation and sorts it within mega-batches."""
    if not by_length:
        return torch.randperm(len(lengths), generator=generator).tolist()
    from transformers.trainer_pt_utils import get_length_grouped_indices

    return [int(i) for i in get_length_grouped_indices(lengths, step_samples, generator=generator)]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def attach_lora(model: Any, spec: LoraSpec, seed: int) -> Any:
    """Wrap ``model`` in a fresh peft LoRA adapter (``LoraConfig(task_type="CAUSAL_LM")``).

    The LoRA init (kaiming ``A``, zero ``B``) is drawn under ``torch.manual_seed(seed)`` inside a
    forked RNG, so it is deterministic and the caller's global RNG state is left as it was. The base
    model is modified in place (peft injects the LoRA layers into it); base weights are frozen.
    With ``B = 0`` every ``lora_A`` gradient is zero until the adapter has been trained.
    """
    from peft import LoraConfig, get_peft_model

    if spec.rank < 1:
        raise InputError(f"LoRA rank must be at least 1, got {spec.rank}")
    if spec.alpha <= 0:
        raise InputError(f"LoRA alpha must be positive, got {spec.alpha}")
    if not 0.0 <= spec.dropout < 1.0:
        raise InputError(f"LoRA dropout must be in [0, 1), got {spec.dropout}")
    if not spec.target_modules:
        raise InputError("LoRA target_modules is empty")
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules),
    )
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        try:
            return get_peft_model(model, config, autocast_adapter_dtype=True)
        except ValueError as e:
            raise InputError(f"cannot attach LoRA to {list(spec.target_modules)}: {e}") from None


def load_adapter(model: Any, adapter_dir: str | os.PathLike, trainable: bool = False) -> Any:
    """Wrap ``model`` with a saved peft adapter; a missing folder is an :class:`InputError`."""
    from peft import PeftModel

    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise InputError(f"{adapter_dir}: no peft adapter here (adapter_config.json missing)")
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)


@contextmanager
def gradient_checkpointing(model: Any, enabled: bool) -> Iterator[None]:
    """Within the block, ``model`` (a transformers model, or a peft model around one) recomputes its
    decoder layers' activations in the backward pass; afterwards it is switched off again (and the
    embedding-output ``requires_grad`` hook that goes with it removed), so a base model reused for
    the next adapter runs as loaded."""
    if not enabled:
        yield
        return
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise InputError(f"train.gradient_checkpointing: {type(base).__name__} does not support it")
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # the name from transformers 5.24 on
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    try:
        yield
    finally:
        if hasattr(base, "activation_checkpointing_disable"):
            base.activation_checkpointing_disable()
        else:
            base.gradient_checkpointing_disable()
        base.disable_input_require_grads()


def trainable_parameters(model: Any) -> list[tuple[str, torch.nn.Parameter]]:
    """The trainable (LoRA) parameters in ``named_parameters`` order: the order of every flat vector."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def adam_moments(model: Any, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Adam's first and second moments, flattened (d,) in :func:`trainable_parameters` order."""
    avg, avg_sq = [], []
    for _, p in trainable_parameters(model):
        state = optimizer.state.get(p, {})
        zeros = torch.zeros(p.numel(), dtype=torch.float32, device=p.device)
        avg.append(state["exp_avg"].flatten().float() if "exp_avg" in state else zeros)
        avg_sq.append(state["exp_avg_sq"].flatten().float() if "exp_avg_sq" in state else zeros)
    return {"exp_avg": torch.cat(avg).float().cpu(), "exp_avg_sq": torch.cat(avg_sq).float().cpu()}


def _save_checkpoint(model: Any, optimizer: torch.optim.Optimizer, ckpt: Path, meta: dict, lrs: list[float]) -> None:
    """Adapter, Adam moments and ``checkpoint.json`` (``meta`` plus the mean of ``lrs``) under ``ckpt``."""
    model.save_pretrained(ckpt)
    torch.save(adam_moments(model, optimizer), ckpt / "adam_moments.pt")
    write_json(ckpt / "checkpoint.json", {**meta, "mean_lr": float(np.mean(lrs))})


def _accumulate_gradients(model: Any, examples: list[dict[str, list[int]]], micro_batch: int, tokenizer: Any) -> float:
    """Forward and backward over ``examples`` in slices of ``micro_batch``, leaving in ``.grad`` the
    gradient of the loss over all of them at once: the mean over every labelled token (each slice's mean
    loss weighted by its share of the tokens, as transformers' Trainer does with ``num_items_in_batch``).
    Returns that loss."""
    device = next(model.parameters()).device
    slices = [examples[i : i + micro_batch] for i in range(0, len(examples), micro_batch)]
    # Labelled tokens after the causal shift (the first position predicts nothing).
    counts = [sum(sum(label != IGNORE_INDEX for label in e["labels"][1:]) for e in part) for part in slices]
    total_tokens = max(1, sum(counts))
    loss_sum = 0.0
    for part, count in zip(slices, counts, strict=True):
        batch = {k: v.to(device) for k, v in collate(part, tokenizer.pad_token_id).items()}
        loss = model(**batch, use_cache=False).loss
        if len(slices) > 1:  # one slice: the loss as it is, bit for bit
            loss = loss * (count / total_tokens)
        loss.backward()
        loss_sum += float(loss.item())
    return loss_sum


def train_lora(
    model: Any,
    tokenizer: Any,
    records: list[dict[str, Any]],
    lora: LoraSpec,
    train: TrainSpec,
    out_dir: str | os.PathLike,
    *,
    seed: int,
    checkpoints: bool = False,
    desc: str = "LoRA training",
) -> dict[str, Any]:
    """Train a fresh LoRA adapter on ``records`` and save it to ``out_dir`` (peft format).

    With ``checkpoints=True`` the adapter and Adam moments are also saved after every epoch under
    ``out_dir/checkpoint-<epoch>/`` with the epoch's mean learning rate (LESS weights checkpoints
    by it), and after every step in ``train.save_steps`` under ``out_dir/step-<step>/`` (adapter, Adam
    moments, ``checkpoint.json`` with the step and the mean learning rate so far). Everything is
    written atomically: ``out_dir`` appears only when training finished.

    Returns the training summary written to ``out_dir/training.json`` (steps, losses, seconds).
    """
    if not records:
        raise InputError(f"{out_dir}: no training samples")
    seed_everything(seed)
    encoded = [encode_example(tokenizer, r, train.max_length, train.loss_on) for r in records]
    peft_model = attach_lora(model, lora, seed)
    params = [p for _, p in trainable_parameters(peft_model)]
    # float32 LoRA weights (attach_lora), so float32 gradients and AdamW moments.
    optimizer = torch.optim.AdamW(params, lr=train.learning_rate, weight_decay=train.weight_decay)
    step_samples = train.batch_size * train.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(encoded) / step_samples)
    total = max(1, math.ceil(steps_per_epoch * train.epochs))
    if train.max_steps:
        total = min(total, train.max_steps)
    warmup = int(round(train.warmup_ratio * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup)),
    )
    generator = torch.Generator().manual_seed(seed)
    peft_model.train()
    losses: list[float] = []
    epoch_lrs: list[float] = []
    all_lrs: list[float] = []
    step = 0
    with atomic_path(out_dir, is_dir=True) as tmp, gradient_checkpointing(peft_model, train.gradient_checkpointing):
        bar = tqdm(total=total, desc=desc, mininterval=2.0)
        epoch = 0
        while step < total:
            order = epoch_order([len(e["input_ids"]) for e in encoded], step_samples, generator, train.group_by_length)
            for start in range(0, len(order), step_samples):
                if step >= total:
                    break
                loss = _accumulate_gradients(
                    peft_model, [encoded[i] for i in order[start : start + step_samples]], train.batch_size, tokenizer
                )
                if not math.isfinite(loss):
                    raise InputError(f"{out_dir}: training loss became {loss} at step {step}")
                epoch_lrs.append(scheduler.get_last_lr()[0])
                all_lrs.append(epoch_lrs[-1])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss)
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                if checkpoints and step in train.save_steps:
                    _save_checkpoint(peft_model, optimizer, Path(tmp) / f"step-{step}", {"step": step}, all_lrs)
            epoch += 1
            if checkpoints:
                _save_checkpoint(peft_model, optimizer, Path(tmp) / f"checkpoint-{epoch}", {"epoch": epoch}, epoch_lrs)
                epoch_lrs = []
        bar.close()
        peft_model.save_pretrained(tmp)
        summary = {
            "samples": len(records),
            "steps": step,
            "epochs": epoch,
            "first_loss": losses[0],
            "last_loss": losses[-1],
            "mean_loss_last_epoch": float(np.mean(losses[-steps_per_epoch:])),
            "lora": lora.__dict__,
            "train": train.__dict__,
            "seed": seed,
        }
        write_json(Path(tmp) / "training.json", summary)
    # Leave the caller's base model unwrapped so it can be reused for the next adapter.
    peft_model.unload()
    return summary
