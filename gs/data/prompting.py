"""Chat formatting of instruction records and the token masks that say which tokens carry the loss.

A record is ``{"id", "domain", "instruction", "input", "output"}`` (see :mod:`gs.data.prepare`). Every stage
that feeds text to the model (gradients, experts, inference, evaluation) formats it here, so the
prompt a gradient was computed on is the prompt the expert was trained and evaluated on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from gs.io import InputError

LossOn = Literal["response", "instruction", "all"]
IGNORE_INDEX = -100
FALLBACK_TEMPLATE = "### Instruction:\n{user}\n\n### Response:\n"


def user_message(record: dict[str, Any]) -> str:
    """The user turn: the instruction, then the input (if any) after a blank line."""
    text = record["instruction"].strip()
    extra = (record.get("input") or "").strip()
    return f"{text}\n\n{extra}" if extra else text


def format_prompt(tokenizer: Any, record: dict[str, Any]) -> str:
    """The prompt text up to where the assistant's answer starts (the generation prompt)."""
    messages = [{"role": "user", "content": user_message(record)}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return FALLBACK_TEMPLATE.format(user=user_message(record))


def encode_example(
    tokenizer: Any,
    record: dict[str, Any],
    max_length: int,
    loss_on: LossOn = "response",
) -> dict[str, list[int]]:
    """Tokenise one record into ``input_ids`` and ``labels`` (``-100`` where no loss is taken).

    ``loss_on="response"`` (default, as LESS) puts the loss on the answer tokens; ``"instruction"``
    on the prompt tokens (as ELREA does for its gradient features); ``"all"`` on both. Sequences
    longer than ``max_length`` keep the end of the prompt (its generation header) and the start of
    the answer, with the answer given at least a quarter of the budget.

    Raises:
        InputError: if the record has no answer tokens (or no prompt tokens for ``"instruction"``).
    """
    if max_length < 4:
        raise InputError(f"max_length must be at least 4, got {max_length}")
    prompt_ids = tokenizer(format_prompt(tokenizer, record), add_special_tokens=False)["input_ids"]
    answer = (record.get("output") or "").strip()
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] if answer else []
    if loss_on in ("response", "all") and not answer_ids:
        raise InputError(f"sample {record.get('id')!r}: no response tokens to take the loss on")
    if tokenizer.eos_token_id is not None and answer_ids:
        answer_ids = answer_ids + [tokenizer.eos_token_id]
    answer_budget = max(max_length - len(prompt_ids), min(len(answer_ids), max_length // 4))
    answer_ids = answer_ids[:answer_budget]
    prompt_ids = prompt_ids[-(max_length - len(answer_ids)) :] if max_length > len(answer_ids) else []
    if loss_on == "instruction" and not prompt_ids:
        raise InputError(f"sample {record.get('id')!r}: no instruction tokens to take the loss on")
    input_ids = prompt_ids + answer_ids
    if loss_on == "response":
        labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    elif loss_on == "instruction":
        labels = prompt_ids + [IGNORE_INDEX] * len(answer_ids)
    elif loss_on == "all":
        labels = list(input_ids)
    else:
        raise InputError(f"unknown loss_on {loss_on!r}; expected response, instruction or all")
    return {"input_ids": input_ids, "labels": labels}


def collate(examples: Sequence[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad encoded examples into a batch.

    Returns ``input_ids`` (b, t) long, ``attention_mask`` (b, t) long, ``labels`` (b, t) long with
    ``-100`` on padding.
    """
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
