"""Greedy decoding from a mixture of LoRA experts, one KV cache per active expert.

Decoding is written out by hand (not ``model.generate``) so that an ensemble keeps one KV cache per
active expert and advances every cache once per step: its cost is honest, about the number of
active experts times a single expert's. Every mode goes through the same loop (a single expert is a
mixture with one weight of exactly 1.0), so with one expert a uniform ensemble and a single expert
give identical tokens by construction. Batches are left padded, with position ids counted over real
tokens only.

Precision and memory (per decoding step): each stream's forward runs in the model's dtype and keeps
only the last position's logits (``logits_to_keep=1``: (r, V) in the model dtype); the softmax and
the mixture ``sum_e w_e softmax(logits_e)`` are float32 over (batch, vocabulary) only. Per step the
vocabulary-sized tensors are, for a batch of b rows and an ensemble of E streams of r_e rows each,
the logits r_e * V * s bytes (s: the model dtype's size), their float32 softmax r_e * V * 4 and the
mixture b * V * 4. The KV cache of stream e holds
2 * layers * r_e * (prompt width + step) * kv_heads * head_dim * s bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Stream:
    """One adapter's share of a batch: its rows, weights, inputs and KV cache."""

    adapter: str | None
    rows: torch.Tensor  # (r,) long: batch positions of the prompts this adapter serves
    weights: torch.Tensor  # (r, 1) float32: each row's mixture weight for this adapter
    input_ids: torch.Tensor  # (r, t) the next input tokens (the left-padded prompt, then one token)
    attention_mask: torch.Tensor  # (r, past + t)
    position_ids: torch.Tensor  # (r, t)
    cache: Any = None  # the model's KV cache for these rows (None before the prefill)


def left_pad(token_lists: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ``(input_ids, attention_mask, position_ids)``, each (n, max length) long, on the CPU.

    Positions count real tokens only, so a left-padded prompt sees the positions it would alone.
    """
    width = max(len(t) for t in token_lists)
    ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for k, tokens in enumerate(token_lists):
        n = len(tokens)
        ids[k, width - n :] = torch.tensor(tokens, dtype=torch.long)
        mask[k, width - n :] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def make_streams(
    token_lists: list[list[int]],
    groups: list[tuple[str | None, list[int], list[float]]],
    *,
    pad_id: int,
    device: torch.device,
) -> list[Stream]:
    """One :class:`Stream` per ``(adapter, rows, weights)`` group (:func:`gs.evaluation.routing.adapter_groups`),
    its rows' ``token_lists`` left padded."""
    streams = []
    for adapter, rows, weights in groups:
        ids, mask, pos = left_pad([token_lists[i] for i in rows], pad_id)
        streams.append(
            Stream(
                adapter=adapter,
                rows=torch.tensor(rows, dtype=torch.long, device=device),
                weights=torch.tensor(weights, dtype=torch.float32, device=device)[:, None],
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=pos.to(device),
            )
        )
    return streams


@torch.inference_mode()
def greedy_decode(
    model: Any,
    activate: Callable[[str | None], None],
    streams: list[Stream],
    n_rows: int,
    *,
    max_new_tokens: int,
    eos_ids: set[int],
    pad_id: int,
    decode: Callable[[list[int]], str],
    stop: list[str] | None = None,
    ignore_eos: bool = False,
    on_first_token: Callable[[], None] | None = None,
) -> tuple[list[list[int]], torch.Tensor, int]:
    """Greedy decoding of one batch of ``n_rows`` prompts split into ``streams``.

    At each step every stream activates its adapter (``activate``) and advances its own KV cache by
    one forward of ``model``; each row's next-token distribution is ``sum_e w_e softmax(logits_e)``
    over the row's streams, in float32, and the token is its argmax. A row ends at an EOS token
    (unless ``ignore_eos``) or once its decoded text (``decode``) contains a ``stop`` string; finished
    rows keep being fed padding (their outputs are ignored), so no cache surgery is needed.

    Returns the generated ids per row (EOS excluded), the step-0 mixture (n_rows, V) float32 and the
    number of model forwards.
    """
    generated: list[list[int]] = [[] for _ in range(n_rows)]
    done = [False] * n_rows
    first_mixture = torch.empty(0)
    forwards = 0
    for step in range(max_new_tokens):
        mixture: torch.Tensor | None = None
        for s in streams:
            activate(s.adapter)
            out = model(
                input_ids=s.input_ids,
                attention_mask=s.attention_mask,
                position_ids=s.position_ids,
                past_key_values=s.cache,
                use_cache=True,
                logits_to_keep=1,
            )
            forwards += 1
            s.cache = out.past_key_values
            probs = torch.softmax(out.logits[:, -1].float(), dim=-1)  # (r, V) float32
            if mixture is None:
                mixture = torch.zeros((n_rows, probs.shape[-1]), dtype=torch.float32, device=probs.device)
            mixture.index_add_(0, s.rows, probs * s.weights)
            del out, probs
        assert mixture is not None
        if step == 0:
            first_mixture = mixture
        next_ids = mixture.argmax(dim=-1).tolist()  # (n_rows,) also synchronises the device
        if step == 0 and on_first_token is not None:
            on_first_token()
        for i in range(n_rows):
            if done[i]:
                continue
            tok = int(next_ids[i])
            if tok in eos_ids and not ignore_eos:
                done[i] = True
                continue
            generated[i].append(tok)
            if stop and any(x in decode(generated[i]) for x in stop):
                done[i] = True
        if all(done) or step == max_new_tokens - 1:
            break
        feed = torch.tensor([pad_id if done[i] else next_ids[i] for i in range(n_rows)], dtype=torch.long)
        for s in streams:
            s.input_ids = feed.to(s.rows.device)[s.rows][:, None]
            s.attention_mask = torch.cat([s.attention_mask, s.attention_mask.new_ones((len(s.rows), 1))], dim=1)
            s.position_ids = s.position_ids[:, -1:] + 1
    return generated, first_mixture, forwards


def cut_at_stop(text: str, stop: list[str] | None) -> str:
    """``text`` cut before the first occurrence of any ``stop`` string."""
    if stop:
        cuts = [text.find(x) for x in stop if x and x in text]
        if cuts:
            return text[: min(cuts)]
    return text
