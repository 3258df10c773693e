"""Fluency of generated passages: the base model's perplexity of each passage (lm-eval has no task
for it), added to the writing task's report by :func:`gs.evaluation.run.evaluate_system`."""

from __future__ import annotations

import gc
import logging
import math
import os
import statistics
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)


def free_memory() -> None:
    """Release a model's memory before loading the next (matters on a GPU at paper scale)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def passage_nll(model: Any, tokenizer: Any, text: str, *, max_length: int | None = None) -> tuple[float, int]:
    """Negative log-likelihood (nats) of ``text`` under ``model`` and its number of tokens.

    Unconditioned: the text is scored after only a prefix token (BOS, else EOS), not after the
    prompt. Conditioning on the prompt would make copying the given end sentences, which the prompt
    contains, look fluent; fluency should be a property of the passage. Texts longer than the
    context are scored in disjoint rolling windows, as lm-eval's ``loglikelihood_rolling`` does
    (``get_rolling_token_windows`` with ``context_len=1``). An empty text gives ``(0.0, 0)``.
    """
    import torch
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        return 0.0, 0
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if max_length is None:
        max_length = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    device = next(model.parameters()).device
    nll = 0.0
    windows = map(make_disjoint_window, get_rolling_token_windows(ids, prefix, max_length, 1))
    with torch.inference_mode():
        for context, continuation in windows:
            inputs = torch.tensor([(context + continuation)[:-1]], device=device)
            logits = model(input_ids=inputs).logits[0, -len(continuation) :].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            target = torch.tensor(continuation, device=device)
            nll -= float(logprobs.gather(1, target[:, None]).sum())
    return nll, len(ids)


def fluency_scores(
    model_dir: str | os.PathLike, passages: Sequence[str], *, dtype: str | None = None, device: str | None = None
) -> tuple[list[float | None], dict[str, Any]]:
    """Each passage's perplexity under the base model (``None`` if empty) and their summary.

    The summary has ``fluency_perplexity`` (token-weighted: exp of total NLL over total tokens, the
    aggregation of lm-eval's perplexity metrics), ``fluency_perplexity_median`` (over passages),
    ``n_passages``, ``n_empty`` and the ``prefix_token`` the passages were scored after.
    """
    from gs.models.load import load_model, load_tokenizer

    model = load_model(model_dir, dtype=dtype, device=device).eval()
    tokenizer = load_tokenizer(model_dir)
    max_length = min(
        int(getattr(model.config, "max_position_embeddings", 2048) or 2048),
        int(tokenizer.model_max_length) if 0 < tokenizer.model_max_length < 10**7 else 10**7,
    )
    per_passage: list[float | None] = []
    total_nll, total_tokens = 0.0, 0
    for passage in passages:
        nll, n = passage_nll(model, tokenizer, (passage or "").strip(), max_length=max_length)
        per_passage.append(math.exp(nll / n) if n else None)
        total_nll, total_tokens = total_nll + nll, total_tokens + n
    scored = [p for p in per_passage if p is not None]
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    summary = {
        "prefix_token": tokenizer.convert_ids_to_tokens(prefix),
        "fluency_perplexity": math.exp(total_nll / total_tokens) if total_tokens else None,
        "fluency_perplexity_median": statistics.median(scored) if scored else None,
        "n_passages": len(scored),
        "n_empty": len(per_passage) - len(scored),
    }
    del model
    free_memory()
    return per_passage, summary
