"""Teacher-forced log-likelihood of given answers under a mixture of LoRA experts, in bounded memory.

A row's answer tokens ``t_1..t_n`` after its prompt are scored as ``sum_i log sum_e w_e p_e(t_i | ...)``
over the row's experts e (weights w_e; a single expert: its own log-softmax). Every active expert
runs ONE forward of the decoder body (no KV cache) over ``prompt + answer[:-1]`` and keeps only the
hidden states of the answer positions; the output layer (``lm_head``), the float32 log-softmax, the
mixture (a logsumexp of ``log w_e + log p_e``), the target's log-probability and the greedy check are
then computed ``chunk_tokens`` answer positions at a time. No (batch, answer tokens, vocabulary)
tensor is ever built.

Memory, for a batch of b rows, a chunk of c positions, vocabulary V, hidden size H, model dtype of
s bytes, expert e serving r_e rows, n the batch's longest scored answer:

* kept hidden states: sum_e r_e * n * H * s bytes (all experts', answer positions only);
* per chunk, one adapter for the whole batch: its logits b*c*V*s, their float32 copy (when s < 4)
  and logsumexp's float32 temporary: at most b*c*V*(s + 8) bytes;
* per chunk, an ensemble: the float32 mixture b*c*V*4, plus while expert e is added its logits
  r_e*c*V*s (and float32 copy), its float32 log-softmax r_e*c*V*4 and, when e serves only some of the
  rows, their gathered mixture r_e*c*V*4: at most b*c*V*4 + r_e*c*V*(s + 12) bytes.

Answers longer than ``max_answer_tokens`` keep their first ``max_answer_tokens`` tokens; the number
of tokens actually scored is returned with each score.

This needs ``logits == lm_head(decoder hidden states)``, true of Llama, Qwen2, Mistral and the other
plain causal LMs; :func:`check_logits_from_hidden` refuses a model that post-processes its logits
(soft-capping, scaling) rather than score it wrongly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gs.evaluation.decoding import make_streams
from gs.io import InputError


def cap_answers(targets: list[list[int]], max_answer_tokens: int | None) -> list[list[int]]:
    """Each answer's first ``max_answer_tokens`` tokens (all of them when None)."""
    if max_answer_tokens is None:
        return [list(t) for t in targets]
    return [list(t[: int(max_answer_tokens)]) for t in targets]


@torch.inference_mode()
def check_logits_from_hidden(model: Any, token_ids: list[int]) -> None:
    """Raise :class:`InputError` unless the model's logits are its output layer applied to the
    decoder's last hidden states (checked on ``token_ids``, with the model's own dtype's tolerance)."""
    ids = torch.tensor([token_ids], dtype=torch.long, device=model.device)
    ref = model(input_ids=ids, use_cache=False).logits
    ours = model.get_output_embeddings()(model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state)
    try:
        torch.testing.assert_close(ours, ref)
    except AssertionError:
        raise InputError(
            f"{type(model).__name__}: its logits are not lm_head(last hidden state) (soft-capped or scaled?); "
            "chunked likelihood scoring does not support this architecture"
        ) from None


@torch.inference_mode()
def score_batch(
    model: Any,
    activate: Callable[[str | None], None],
    contexts: list[list[int]],
    targets: list[list[int]],
    groups: list[tuple[str | None, list[int], list[float]]],
    *,
    pad_id: int,
    device: torch.device,
    chunk_tokens: int,
) -> tuple[list[tuple[float, bool, int]], int]:
    """Score one batch: per row ``(log-probability in nats, is_greedy, n_tokens)``, and the number of
    decoder forwards.

    ``contexts``/``targets``: token ids of each row's prompt and (already capped) answer, non-empty;
    ``groups``: ``(adapter, rows, weights)`` per active adapter (:func:`gs.evaluation.routing.adapter_groups`);
    ``activate(adapter)`` makes an adapter the model's active one. ``is_greedy`` says whether the
    mixture's argmax gives every answer token (lm-eval's second loglikelihood output).
    """
    b = len(targets)
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    # Inputs are left padded, so every row's answer ends at the last column of its stream.
    streams = make_streams(
        [(c + t)[:-1] for c, t in zip(contexts, targets, strict=True)], groups, pad_id=pad_id, device=device
    )
    keep = max(len(t) for t in targets)
    target = torch.full((b, keep), -1, dtype=torch.long, device=device)  # right aligned, -1: not scored
    for r, t in enumerate(targets):
        target[r, keep - len(t) :] = torch.tensor(t, dtype=torch.long)
    # per stream: (r, keep_s, H) in the model's dtype, the answer positions only. Their column chunks
    # are made contiguous before the head: on a strided (r, c, H) slice torch's matmul cannot fold the
    # batch into one mm and instead expands the (H, V) head weight into an (r, H, V) copy per chunk
    # (measured on SmolLM2: a LoRA system's likelihood 2-3x slower than the base model's).
    hidden = []
    for s, (_, rows, _) in zip(streams, groups, strict=True):
        activate(s.adapter)
        h = decoder(
            input_ids=s.input_ids, attention_mask=s.attention_mask, position_ids=s.position_ids, use_cache=False
        ).last_hidden_state
        keep_s = max(len(targets[i]) for i in rows)
        hidden.append(h[:, -keep_s:].clone())  # a copy: the (r, T, H) states are freed
        del h
    whole = len(streams) == 1 and len(streams[0].rows) == b  # one adapter for every row: no mixture tensor
    logprob = torch.zeros(b, dtype=torch.float64, device=device)
    greedy = torch.ones(b, dtype=torch.bool, device=device)
    for a in range(0, keep, chunk_tokens):
        e = min(a + chunk_tokens, keep)
        tgt = target[:, a:e]  # (b, c)
        scored = tgt >= 0
        index = tgt.clamp(min=0)[:, :, None]
        if whole:  # rows in batch order (adapter_groups lists them so), hidden covers all columns
            s = streams[0]
            activate(s.adapter)
            logits = head(hidden[0][:, a:e].contiguous()).float()  # (b, c, V)
            token_lp = (logits.gather(-1, index) - torch.logsumexp(logits, -1, keepdim=True))[..., 0]
            token_lp = token_lp + torch.log(s.weights)
            argmax = logits.argmax(dim=-1)
            del logits
        else:
            mixture: torch.Tensor | None = None  # (b, c, V) float32 log-probabilities of the mixture
            for s, h in zip(streams, hidden, strict=True):
                offset = keep - h.shape[1]  # this stream's hidden states cover columns [offset, keep)
                if e <= offset:
                    continue
                lo = max(a, offset)
                activate(s.adapter)
                lp = torch.log_softmax(head(h[:, lo - offset : e - offset].contiguous()).float(), dim=-1)  # (r, c', V)
                lp.add_(torch.log(s.weights)[:, :, None])
                if mixture is None:
                    mixture = torch.full((b, e - a, lp.shape[-1]), -torch.inf, dtype=torch.float32, device=device)
                if len(s.rows) == b:  # every row, in order (adapter_groups): update the mixture in place
                    torch.logaddexp(mixture[:, lo - a :], lp, out=mixture[:, lo - a :])
                else:
                    mixture[s.rows, lo - a :] = torch.logaddexp(mixture[s.rows, lo - a :], lp, out=lp)
                del lp
            assert mixture is not None  # the longest answer's row has an expert covering column a
            token_lp = mixture.gather(-1, index)[..., 0]
            argmax = mixture.argmax(dim=-1)
            del mixture
        logprob += torch.where(scored, token_lp, 0.0).double().sum(dim=1)
        greedy &= ((argmax == tgt) | ~scored).all(dim=1)
    scores = [(float(lp), bool(g), len(t)) for lp, g, t in zip(logprob.tolist(), greedy.tolist(), targets, strict=True)]
    return scores, len(streams)
