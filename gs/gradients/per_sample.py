"""Per-sample LoRA gradients in full dimension: one batched forward, one batched backward.

A sample's gradient is the gradient of *its own* loss (the mean token cross-entropy over its
labelled tokens, labels shifted as in causal LM training) with respect to every trainable LoRA
parameter, flattened into one vector of length ``d`` (see :func:`lora_parameters` for the order).
No random projection is applied: GradientSpace clusters these vectors in full dimension.

How (the Opacus trick, specialised to LoRA): every LoRA factor ``lora_A[adapter]`` and
``lora_B[adapter]`` is a bias-free ``nn.Linear``, so for sample ``i`` its weight gradient is
``sum_t g_{i,t}^T a_{i,t}`` where ``a`` is the layer's input (b, t, in) and ``g`` the gradient of the
batch loss with respect to the layer's output (b, t, out). A forward hook captures ``a`` and puts a
tensor hook on the output that forms the per-sample gradient as soon as ``g`` is known. Because the
backpropagated loss is the *sum* over samples of each sample's mean loss and samples never interact
in a causal LM's forward pass (right padding, causal mask), ``g_i`` is exactly the gradient of
sample ``i``'s own loss. peft multiplies the ``lora_B`` output by ``scaling`` *after* the layer, so
the gradient w.r.t. that output already carries the scaling; nothing is rescaled here.

Precision: in a bfloat16/float16 model the backward pass runs in that dtype, but each hook casts
the layer input ``a`` and output gradient ``g`` to float32 before the per-sample outer product
``sum_t g_t^T a_t`` and accumulates into a float32 ``(b, d)`` buffer, so no sum over tokens or
layers is rounded to 8 mantissa bits
(``tests/gradients/test_gradients.py::test_bfloat16_model_gives_float32_gradients``).

The batched result is checked against :func:`per_sample_lora_gradients_loop` (one forward and
backward per sample) in ``tests/gradients/test_gradients.py``; ``benchmarks/per_sample_grads.py`` times both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, overload

import numpy as np
import torch
import torch.nn.functional as F

from gs.data.prompting import IGNORE_INDEX, LossOn, collate, encode_example
from gs.io import InputError

NonFinite = Literal["raise", "zero"]


class SampleGradientError(InputError):
    """An :class:`InputError` about given samples of a batch: ``problem`` says what is wrong, ``positions`` are
    their batch indices (a caller that batched its records in another order names the records instead)."""

    def __init__(self, problem: str, positions: Sequence[int]):
        self.problem, self.positions = problem, list(positions)
        super().__init__(f"{problem}: sample(s) at batch position(s) {self.positions}")


# --------------------------------------------------------------------------- LoRA parameters


def _lora_linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """The ``lora_A``/``lora_B`` ``nn.Linear`` of every active adapter of every LoRA layer.

    Raises:
        InputError: for LoRA flavours whose gradient is not ``sum_t g^T a`` of these layers alone
            (embedding LoRA, DoRA and other variants) or for merged/disabled adapters.
    """
    from peft.tuners.lora import LoraLayer

    linears: list[torch.nn.Linear] = []
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter in module.active_adapters:
            if adapter in getattr(module, "lora_embedding_A", {}):
                raise InputError(f"{name}: LoRA on embeddings is not supported for per-sample gradients")
            if adapter not in module.lora_A:
                continue
            if adapter in getattr(module, "lora_variant", {}):
                raise InputError(f"{name}: LoRA variants (e.g. DoRA) are not supported for per-sample gradients")
            if getattr(module, "merged", False) or getattr(module, "disable_adapters", False):
                raise InputError(f"{name}: adapter {adapter!r} is merged or disabled; no gradient reaches it")
            for factor in (module.lora_A[adapter], module.lora_B[adapter]):
                if not isinstance(factor, torch.nn.Linear):
                    raise InputError(f"{name}: LoRA factor is {type(factor).__name__}, only nn.Linear is supported")
                linears.append(factor)
    return linears


def lora_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The trainable LoRA parameters of a peft model, in ``model.named_parameters()`` order.

    These are the weights (and biases, if ``lora_bias=True``) of ``lora_A[adapter]`` and
    ``lora_B[adapter]`` of every active adapter of every target module, restricted to those with
    ``requires_grad``. For peft's Llama injection the order is layer by layer, and within a layer
    module by module, ``lora_A`` before ``lora_B``. The per-sample gradient vector (length
    ``d = sum(p.numel())``) concatenates the gradients of these parameters in this order, each
    flattened row-major (``W.reshape(-1)``: ``lora_A.weight`` is (r, in), ``lora_B.weight`` (out, r)).

    Raises:
        InputError: if the model has no trainable LoRA parameter.
    """
    wanted = {id(p) for m in _lora_linears(model) for p in m.parameters(recurse=False)}
    params = [(n, p) for n, p in model.named_parameters() if id(p) in wanted and p.requires_grad]
    if not params:
        raise InputError("model has no trainable LoRA parameters (see gs.models.lora.attach_lora and load_adapter)")
    return params


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_labels(labels: torch.Tensor) -> torch.Tensor:
    """Number of labelled (shifted) tokens per sample, (b,); a sample with none is an error."""
    counts = (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise SampleGradientError("no labelled tokens to take the loss on", empty)
    return counts


def _per_sample_loss(logits: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(b,) mean next-token cross-entropy of each sample over its labelled tokens (float32)."""
    b, t, v = logits.shape
    # The logit at position s predicts the token at s + 1. Shift the labels rather than the logits
    # (as transformers does): slicing the (b, t, V) logits would copy them, V being ~50k.
    shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    token_loss = F.cross_entropy(
        logits.reshape(-1, v).float(), shifted.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(b, t)
    return token_loss.sum(dim=1) / counts.to(token_loss.dtype)


class _EvalMode:
    """Put every module in eval mode (LoRA dropout off: the gradient is deterministic and the one
    of the model as it is); restore each module's own flag on exit, even on error."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.flags: list[tuple[torch.nn.Module, bool]] = []

    def __enter__(self) -> None:
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for m, flag in self.flags:
            m.training = flag


def _check_model(model: Any) -> None:
    # transformers marks each checkpointed block with ``gradient_checkpointing = True``.
    if any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()):
        raise InputError("per-sample gradients need gradient checkpointing off (activations are hooked)")


# --------------------------------------------------------------------------- batched


def _checked_batch(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.device, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check the model and the batch's labels; return the model's device, ``input_ids``, ``labels``
    and ``attention_mask`` (all ones if absent) on it, each (b, t), and the (b,) labelled-token counts."""
    _check_model(model)
    device = _model_device(model)
    input_ids = batch["input_ids"].to(device)
    labels = batch["labels"].to(device)
    attention_mask = batch.get("attention_mask")
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
    return device, input_ids, labels, attention_mask, _check_labels(labels)


@overload
def per_sample_lora_gradients(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], *, nonfinite: Literal["raise"] = ...
) -> torch.Tensor: ...


@overload
def per_sample_lora_gradients(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], *, nonfinite: Literal["zero"]
) -> tuple[torch.Tensor, torch.Tensor]: ...


def per_sample_lora_gradients(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], *, nonfinite: NonFinite = "raise"
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-sample gradients of each sample's mean token loss w.r.t. every trainable LoRA parameter.

    Args:
        model: a peft LoRA causal LM (any device, any float dtype; gradient checkpointing off).
        batch: ``input_ids``, ``attention_mask``, ``labels``, each (b, t), right padded as
            :func:`gs.data.prompting.collate` makes them (``-100`` where no loss is taken). Moved to the
            model's device here.
        nonfinite: ``"raise"`` (default): a sample whose gradient has a NaN/inf raises
            :class:`InputError` naming its batch position. ``"zero"``: such rows are set to zero and
            a (b,) bool mask of them is returned as well.

    Returns:
        (b, d) float32 on the model's device, row ``i`` the gradient of sample ``i``'s loss,
        columns in :func:`lora_parameters` order; with ``nonfinite="zero"``, ``(grads, mask)``.

    One batched forward and one batched backward; the model runs in eval mode (LoRA dropout off)
    and each module's train/eval flag is restored afterwards. The parameters' ``.grad`` are left
    untouched. Raises :class:`InputError` if a sample has no labelled token.
    """
    if nonfinite not in ("raise", "zero"):
        raise InputError(f"nonfinite must be 'raise' or 'zero', got {nonfinite!r}")
    device, input_ids, labels, attention_mask, counts = _checked_batch(model, batch)
    params = lora_parameters(model)
    b = input_ids.shape[0]

    # Column offset of each trainable parameter in the flat vector.
    offsets: dict[int, tuple[int, int]] = {}
    d = 0
    for _, p in params:
        offsets[id(p)] = (d, p.numel())
        d += p.numel()
    grads = torch.zeros(b, d, dtype=torch.float32, device=device)
    # (b, t, 1) bool: padded positions carry no loss, so their g is zero; masking a and g there
    # anyway keeps a stray NaN in a padded activation from leaking into a sample's gradient.
    keep = attention_mask.bool().unsqueeze(-1)

    def make_tensor_hook(layer: torch.nn.Linear, a: torch.Tensor) -> Callable[[torch.Tensor], None]:
        def hook(g: torch.Tensor) -> None:
            g32 = g.detach().float().masked_fill(~keep, 0.0)
            if layer.weight.requires_grad:
                # (b, out, t) @ (b, t, in) -> (b, out, in): sum_t g_t^T a_t per sample. For lora_A
                # this is (b, r, in), for lora_B (b, out, r): both cheap next to the model.
                a32 = a.float().masked_fill(~keep, 0.0)
                gw = torch.bmm(g32.transpose(1, 2), a32)
                start, n = offsets[id(layer.weight)]
                grads[:, start : start + n] += gw.reshape(b, n)
            if layer.bias is not None and layer.bias.requires_grad:
                start, n = offsets[id(layer.bias)]
                grads[:, start : start + n] += g32.sum(dim=1)

        return hook

    def forward_hook(layer: torch.nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        if output.requires_grad:
            assert isinstance(layer, torch.nn.Linear)
            a = inputs[0].detach()
            if a.shape[:2] != keep.shape[:2]:
                raise InputError(f"LoRA layer input of shape {tuple(a.shape)} is not (b, t, in)")
            output.register_hook(make_tensor_hook(layer, a))

    trainable = {id(p) for _, p in params}
    handles = [
        layer.register_forward_hook(forward_hook)
        for layer in _lora_linears(model)
        if any(id(p) in trainable for p in layer.parameters(recurse=False))
    ]
    try:
        with _EvalMode(model), torch.enable_grad():
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            loss = _per_sample_loss(logits, labels, counts).sum()
            del logits
            # autograd.grad (not .backward) so that no parameter's .grad is touched; the tensor
            # hooks fire on the way. The summed weight gradients it returns are discarded: their
            # cost (one small matmul per LoRA factor) is negligible next to the model's backward.
            torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    finally:
        for h in handles:
            h.remove()

    bad = ~torch.isfinite(grads).all(dim=1)
    if nonfinite == "zero":
        grads[bad] = 0.0
        return grads, bad
    if bool(bad.any()):
        raise SampleGradientError("non-finite (NaN/inf) gradient", bad.nonzero().flatten().tolist())
    return grads


# --------------------------------------------------------------------------- reference


def per_sample_lora_gradients_loop(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Reference: one forward and backward per sample with plain autograd; (b, d) float32.

    Each sample is cut to its attention-mask length (right padding assumed, as :func:`gs.data.prompting.collate`
    pads), so it runs without any padding at all and this also checks the
    padding handling of :func:`per_sample_lora_gradients`. Same order, eval mode and error on
    samples without labelled tokens; non-finite values are returned as they are. Slow: for tests
    and ``benchmarks/per_sample_grads.py`` only.
    """
    _, input_ids, labels, attention_mask, counts = _checked_batch(model, batch)
    params = [p for _, p in lora_parameters(model)]
    rows = []
    with _EvalMode(model), torch.enable_grad():
        for i in range(input_ids.shape[0]):
            n = int(attention_mask[i].sum())
            ids = input_ids[i : i + 1, :n]
            logits = model(input_ids=ids, attention_mask=attention_mask[i : i + 1, :n]).logits
            loss = _per_sample_loss(logits, labels[i : i + 1, :n], counts[i : i + 1]).sum()
            gs = torch.autograd.grad(loss, params, allow_unused=True)
            rows.append(
                torch.cat(
                    [
                        (torch.zeros_like(p) if g is None else g).reshape(-1).float()
                        for p, g in zip(params, gs, strict=True)
                    ]
                )
            )
    return torch.stack(rows)


# --------------------------------------------------------------------------- datasets


def length_batches(lengths: Sequence[int], batch_size: int, window: int) -> list[np.ndarray]:
    """Batches of input positions, formed by token length inside consecutive windows.

    Positions ``0..n-1`` (``n = len(lengths)``) are split into consecutive windows of ``window``
    positions (the last may be shorter). Inside a window the positions are ordered by ``lengths``
    with a stable sort (``np.argsort(kind="stable")``: equal lengths keep input order) and that order
    is cut into batches of ``batch_size`` (the window's last batch may be shorter); each batch's
    positions are then listed in ascending order (a batch's padded width, its longest length, does
    not depend on the order of its rows). The batches come window by window, so every position of a
    window is in one of its batches before the next window starts. ``window == batch_size`` gives
    the plain consecutive batches ``[0..b-1], [b..2b-1], ...`` exactly, whatever the lengths.

    Args:
        lengths: (n,) token count of each input (``len(input_ids)`` after encoding).
        batch_size: b >= 1, positions per batch.
        window: w, a positive multiple of ``batch_size``: positions sorted together.

    Returns:
        The batches, window by window: int64 arrays of input positions, each of shape (b,) but a
        window's last (shorter when the window's size is not a multiple of b); ``w / b`` per full window.

    Raises:
        InputError: ``batch_size < 1`` or ``window`` not a positive multiple of it.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(window, bool) or not isinstance(window, int | np.integer) or window < 1 or window % batch_size:
        raise InputError(f"window must be a positive multiple of batch_size={batch_size}, got {window!r}")
    sizes = np.asarray(lengths, dtype=np.int64).reshape(-1)
    batches: list[np.ndarray] = []
    for start in range(0, sizes.size, window):
        order = start + np.argsort(sizes[start : start + window], kind="stable")
        batches.extend(np.sort(order[i : i + batch_size]) for i in range(0, order.size, batch_size))
    return batches


def iter_gradients(
    model: torch.nn.Module,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    *,
    batch_size: int,
    max_length: int,
    loss_on: LossOn = "response",
    progress: bool = True,
    on_device: bool = False,
    window: int | None = None,
) -> Iterator[tuple[list[str], torch.Tensor]]:
    """Per-sample gradients of ``records``, window by window, in input order.

    Each record is encoded with :func:`gs.data.prompting.encode_example` (``max_length``, ``loss_on``).
    ``window`` (a positive multiple of ``batch_size``; None: ``batch_size``) consecutive records form a
    window; inside it the records are batched by encoded length (:func:`length_batches`: batches of
    ``batch_size`` of similar length, so less padding), each batch padded to its longest record
    (:func:`gs.data.prompting.collate`) and run through :func:`per_sample_lora_gradients`, and its
    rows written at their input positions. Yields ``(ids, grads)`` once per window: the window's
    record ids (as ``str``, input order) and its (w, d) float32 gradients in the same order, on the
    CPU or (``on_device=True``) left on the model's device, so a consumer there (the online SVD on the
    GPU) needs no round trip. With ``window=None`` each yield is one batch of consecutive records, as
    before windows existed. A sample's gradient does not depend on its batch (padding is masked), so
    the rows equal the unwindowed ones up to float summation order. A tqdm bar (desc
    ``"per-sample gradients"``, counting samples) is shown unless ``progress=False``.

    Memory: the window's (w, d) float32 block beside the batch's (b, d) one (one block when the
    window is one batch).

    Raises:
        InputError: bad ``batch_size`` or ``window``, a record without tokens to take the loss on, or
            a sample whose gradient is not finite (the message names the record id).
    """
    from tqdm.auto import tqdm

    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    window = batch_size if window is None else window
    length_batches([], batch_size, window)  # checks window
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise InputError("tokenizer has neither a pad nor an eos token to pad with")
    with tqdm(total=len(records), desc="per-sample gradients", unit="sample", disable=not progress) as bar:
        for start in range(0, len(records), window):
            chunk = records[start : start + window]
            ids = [str(r.get("id", start + k)) for k, r in enumerate(chunk)]
            encoded = [encode_example(tokenizer, r, max_length, loss_on) for r in chunk]
            batches = length_batches([len(e["input_ids"]) for e in encoded], batch_size, window)
            out: torch.Tensor | None = None
            for rows in batches:
                try:
                    grads = per_sample_lora_gradients(model, collate([encoded[i] for i in rows.tolist()], pad_id))
                except SampleGradientError as e:  # positions in the length-sorted batch: name the records
                    named = ", ".join(repr(ids[int(rows[p])]) for p in e.positions)
                    raise InputError(f"{e.problem}: record id(s) {named}") from None
                if not on_device:
                    grads = grads.cpu()
                if len(batches) == 1:  # the whole window, in order (rows ascending): no copy
                    out = grads
                else:
                    if out is None:
                        out = torch.empty(len(chunk), grads.shape[1], dtype=torch.float32, device=grads.device)
                    out.index_copy_(0, torch.from_numpy(rows).to(out.device), grads)
                del grads
                bar.update(len(rows))
            assert out is not None
            yield ids, out
