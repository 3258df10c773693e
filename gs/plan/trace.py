"""Trace one step of a stage at full size without memory or a GPU: peak tensor memory and FLOPs.

The model is built from its config inside ``torch._subclasses.fake_tensor.FakeTensorMode`` (every
tensor has a shape, dtype and device but no storage), then the step runs under
``torch.distributed._tools.mem_tracker.MemTracker`` (live tensor bytes by kind: parameters,
activations, temporaries, gradients, optimizer state) and ``torch.utils.flop_counter.FlopCounterMode``
(FLOPs per phase). The steps are the suite's own code where it runs on fake tensors:

* :func:`gradient_step`: :func:`gs.gradients.per_sample.per_sample_lora_gradients` on a peft LoRA attached by
  :func:`gs.models.lora.attach_lora` (its hooks, its ``(b, d)`` gradient buffer). Its two data-dependent
  checks (a sample without labelled tokens; a non-finite row) read values a fake tensor does not have:
  the label check is replaced by its count arithmetic and the final non-finite check, which runs after
  the backward, is skipped by catching the data-dependent error it raises.
* :func:`train_step`: the step of :func:`gs.models.lora.train_lora` (forward with labels, backward, AdamW
  step, ``zero_grad``), with transformers' gradient checkpointing when the config asks for it.
* :func:`likelihood_step`: the forward of :meth:`gs.evaluation.routed_model.RoutedLM._score_batch` (``logits_to_keep``
  answer tokens, float32 log-softmax, the mixture tensor of an ensemble).
* :func:`decode_step`: :meth:`gs.evaluation.routed_model.RoutedLM._decode_batch`'s per-expert KV caches, filled to
  the last decoding position, and one decoding step of every active expert.

Bytes are as the tracker counts them (storage sizes rounded up to 512 bytes, as the CUDA caching
allocator does); what the allocator keeps cached beyond live tensors is not counted.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import torch

IGNORE_INDEX = -100


@dataclass
class Trace:
    """What one traced step costs.

    ``peak_bytes``: the tracker's peak of live tensor bytes; ``breakdown``: bytes by kind at the peak
    (Parameter, Buffer, Gradient, Activation, Temp, Optstate, Other); ``flops``: FLOPs per phase;
    ``bytes_read``: per phase, the bytes a memory-bound phase streams (weights and KV caches);
    ``weight_bytes``: the base model's parameters; ``lora_dim``: trainable parameters of one adapter (d).
    """

    peak_bytes: int
    breakdown: dict[str, int]
    flops: dict[str, int]
    bytes_read: dict[str, int] = field(default_factory=dict)
    weight_bytes: int = 0
    lora_dim: int = 0


class _Phases:
    """Counts FLOPs per named phase of a step (one ``FlopCounterMode`` per phase)."""

    def __init__(self) -> None:
        self.flops: dict[str, int] = {}
        self.bytes_read: dict[str, int] = {}
        self.tracker: Any = None

    def next_call(self) -> None:
        """Before a further top-level model call: ``MemTracker`` keeps per-module stats of one call
        only; clearing them keeps its global peak."""
        if self.tracker is not None:
            self.tracker.reset_mod_stats()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            yield
        self.flops[name] = self.flops.get(name, 0) + int(counter.get_total_flops())


Step = Callable[[Any, _Phases], None]


def _tracker() -> Any:
    """A ``MemTracker`` that also works with frozen parameters (LoRA's base weights).

    ``MemTracker`` puts gradient hooks on every parameter of a module it enters, and torch refuses a
    hook on a tensor that does not require gradients; this subclass hooks only those that do.
    """
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

    class FrozenAwareTracker(MemTracker):
        def _track_module_params_and_buffers(self, module: torch.nn.Module, install_grad_hooks: bool = True):
            out = super()._track_module_params_and_buffers(module, install_grad_hooks=False)
            if install_grad_hooks:
                for p in module.parameters():
                    if p.requires_grad and self._param_to_grad_hook_handles.get(p, None) is None:

                        def hook(grad: torch.Tensor) -> None:
                            self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)

                        self._param_to_grad_hook_handles[p] = (
                            p.register_hook(hook),
                            p.register_post_accumulate_grad_hook(lambda q: hook(q.grad)),
                        )
            return out

    return FrozenAwareTracker()


def _dtype(name: str) -> torch.dtype:
    from gs.models.load import resolve_dtype

    return resolve_dtype(name)


def with_layers(hf_config: Any, layers: int) -> Any:
    """A copy of ``hf_config`` with ``layers`` decoder layers (per-layer lists cut to match)."""
    cfg = copy.deepcopy(hf_config)
    cfg.num_hidden_layers = int(layers)
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = cfg.layer_types[:layers]
    return cfg


def _combine(one: Trace, two: Trace, layers: int) -> Trace:
    """Extend traces at 1 and 2 layers to ``layers``: every count is a + b * layers in a stack of
    identical decoder layers (embeddings, head and loss give a; each layer adds b)."""

    def lin(a: int, b: int) -> int:
        return int(a + (layers - 1) * (b - a))

    def lin_dict(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
        return {k: lin(a.get(k, 0), b.get(k, 0)) for k in sorted(set(a) | set(b))}

    return Trace(
        lin(one.peak_bytes, two.peak_bytes),
        lin_dict(one.breakdown, two.breakdown),
        lin_dict(one.flops, two.flops),
        lin_dict(one.bytes_read, two.bytes_read),
        lin(one.weight_bytes, two.weight_bytes),
        lin(one.lora_dim, two.lora_dim),
    )


def trace_step(
    hf_config: Any,
    dtype: str,
    lora: dict[str, Any] | None,
    step: Step,
    *,
    adapters: int = 1,
    full_depth: bool = False,
) -> Trace:
    """Build the model (and ``adapters`` LoRA adapters) under fake tensors and trace ``step(model, phases)``.

    ``lora`` is a LoRA config section (rank, alpha, dropout, target_modules) or None for the bare model.
    By default the model is traced at 1 and 2 decoder layers and extended linearly to its depth
    (:func:`_combine`; exact for a stack of identical layers, checked against a full-depth trace in
    ``tests/plan/test_plan.py``): the trackers' Python dispatch costs milliseconds per op, so a 30-layer
    step takes minutes on a loaded 2-core machine. ``full_depth=True`` traces every layer.
    """
    layers = int(hf_config.num_hidden_layers)
    if not full_depth and layers > 2:
        one, two = (trace_step(with_layers(hf_config, n), dtype, lora, step, adapters=adapters) for n in (1, 2))
        return _combine(one, two, layers)
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import AutoModelForCausalLM

    with FakeTensorMode():
        # Built on the meta device and then given fake CPU storage: peft moves new adapters with
        # ``Module.to``, which cannot swap fake parameters (weak references), but skips meta ones.
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config, dtype=_dtype(dtype))
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        lora_dim = 0
        if lora is not None:
            from gs.models.lora import LoraSpec, attach_lora, trainable_parameters

            with torch.device("meta"):
                model = attach_lora(model, LoraSpec.from_config(lora), seed=0)
            lora_dim = sum(p.numel() for _, p in trainable_parameters(model))
        _materialize(model)
        # RoutedLM loads every expert into the same peft model; the other adapters' weights (same
        # shapes as the first) are kept alive as plain tensors beside it.
        others = [p.detach().clone() for _ in range(1, adapters) for p in model.parameters() if p.requires_grad]
        tracker = _tracker()
        tracker.track_external(model, *others)
        phases = _Phases()
        phases.tracker = tracker
        with tracker:
            step(model, phases)
        peak = tracker.get_tracker_snapshot("peak")
    total = sum(int(snap.get("Total", 0)) for snap in peak.values())
    breakdown: dict[str, int] = {}
    for snap in peak.values():
        for kind, n in snap.items():
            if kind != "Total":
                key = getattr(kind, "value", str(kind))
                breakdown[key] = breakdown.get(key, 0) + int(n)
    return Trace(total, breakdown, phases.flops, phases.bytes_read, weight_bytes, lora_dim)


def _materialize(model: torch.nn.Module) -> None:
    """Replace every meta parameter and buffer by a fake CPU tensor of its shape (tied weights stay tied)."""
    made: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for store, is_param in ((module._parameters, True), (module._buffers, False)):
            for name, t in list(store.items()):
                if t is None:
                    continue
                if id(t) not in made:
                    new = torch.empty_like(t, device="cpu")
                    made[id(t)] = torch.nn.Parameter(new, requires_grad=t.requires_grad) if is_param else new
                store[name] = made[id(t)]


def _batch(vocab: int, b: int, t: int) -> dict[str, torch.Tensor]:
    """A right-padded-shape batch (b, t): every position attended, the first half of each row unlabelled."""
    input_ids = torch.randint(0, vocab, (b, t))
    labels = input_ids.clone()
    labels[:, : t // 2] = IGNORE_INDEX
    return {"input_ids": input_ids, "attention_mask": torch.ones(b, t, dtype=torch.long), "labels": labels}


def gradient_step(b: int, t: int) -> Step:
    """:func:`gs.gradients.per_sample.per_sample_lora_gradients` on a (b, t) batch."""

    def step(model: Any, phases: _Phases) -> None:
        from torch._subclasses.fake_tensor import DataDependentOutputException

        from gs.gradients import per_sample as gradients

        def counts(labels: torch.Tensor) -> torch.Tensor:  # _check_labels without its value check
            return (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)

        batch = _batch(model.config.vocab_size, b, t)
        with mock.patch.object(gradients, "_check_labels", counts), phases("gradient"):
            try:
                gradients.per_sample_lora_gradients(model, batch)
            except DataDependentOutputException:
                pass  # the non-finite check after the backward: nothing is allocated after it

    return step


def train_step(b: int, t: int, *, checkpointing: bool = False, learning_rate: float = 1e-4) -> Step:
    """One step of :func:`gs.models.lora.train_lora` on a (b, t) batch."""

    def step(model: Any, phases: _Phases) -> None:
        from gs.models.lora import trainable_parameters

        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        optimizer = torch.optim.AdamW([p for _, p in trainable_parameters(model)], lr=learning_rate)
        batch = _batch(model.config.vocab_size, b, t)
        with phases("train"):
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


def _groups(b: int, streams: int) -> list[tuple[str | None, list[int], list[float]]]:
    """Adapter groups (``gs.evaluation.routing.adapter_groups``' form): every row served by ``streams`` experts."""
    return [("default", list(range(b)), [1.0 / streams] * b) for _ in range(streams)]


def likelihood_step(b: int, context: int, keep: int, streams: int = 1, chunk_tokens: int | None = None) -> Step:
    """:func:`gs.evaluation.scoring.score_batch` on ``b`` rows of ``context`` prompt and ``keep`` answer tokens,
    ``streams`` experts per row, ``chunk_tokens`` answer positions at a time (None: all at once)."""

    def step(model: Any, phases: _Phases) -> None:
        from torch._subclasses.fake_tensor import DataDependentOutputException

        from gs.evaluation.scoring import score_batch

        calls = {"n": 0}

        def activate(adapter: str | None) -> None:  # one adapter serves every stream (same shapes)
            calls["n"] += 1
            phases.next_call()

        with phases("likelihood"):
            try:
                score_batch(
                    model,
                    activate,
                    [[1] * context] * b,
                    [[2] * keep] * b,
                    _groups(b, streams),
                    pad_id=0,
                    device=torch.device("cpu"),
                    chunk_tokens=int(chunk_tokens or keep),
                )
            except DataDependentOutputException:
                pass  # the scores' .tolist() at the very end

    return step


def _cache_bytes(cache: Any) -> int:
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return sum(
            t.numel() * t.element_size()
            for layer in layers
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
            if isinstance(t, torch.Tensor)
        )
    return sum(t.numel() * t.element_size() for pair in cache for t in pair)


def decode_step(b: int, prompt: int, new_tokens: int, streams: int = 1) -> Step:
    """:func:`gs.evaluation.decoding.greedy_decode` at its last step: ``streams`` streams of ``b`` rows whose prompts
    already hold ``prompt + new_tokens - 1`` tokens (its first forward fills every KV cache to the last
    position), then one decoding forward per stream with that cache, as ``greedy_decode`` makes them."""

    def step(model: Any, phases: _Phases) -> None:
        from torch._subclasses.fake_tensor import DataDependentOutputException

        from gs.evaluation.decoding import greedy_decode, make_streams

        vocab = model.config.vocab_size
        length = prompt + max(new_tokens, 1) - 1
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        made = make_streams([[1] * length] * b, _groups(b, streams), pad_id=0, device=torch.device("cpu"))
        with phases("prefill"):
            try:
                greedy_decode(
                    model,
                    lambda adapter: phases.next_call(),
                    made,
                    b,
                    max_new_tokens=1,
                    eos_ids=set(),
                    pad_id=0,
                    decode=lambda ids: "",
                )
            except DataDependentOutputException:
                pass  # the mixture's argmax .tolist(): every cache is filled by then
        with torch.inference_mode(), phases("decode"):
            mixture = torch.zeros((b, vocab), dtype=torch.float32)
            for s in made:
                phases.next_call()
                out = model(
                    input_ids=torch.zeros(b, 1, dtype=torch.long),
                    attention_mask=torch.cat([s.attention_mask, s.attention_mask.new_ones((b, 1))], dim=1),
                    position_ids=s.position_ids[:, -1:] + 1,
                    past_key_values=s.cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                mixture.index_add_(0, s.rows, torch.softmax(out.logits[:, -1].float(), dim=-1) * s.weights)
                del out
            phases.bytes_read["decode"] = streams * weights + sum(_cache_bytes(s.cache) for s in made)

    return step
