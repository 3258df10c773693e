"""Chat formatting of instruction records and the token masks that say which tokens carry the loss.

A record is ``{"id", "domain", "instruction", "input", "output"}`` (see :mod:`gs.data.prepare`), optionally
with ``messages``, an open-instruct conversation (``[{"role": "system"|"user"|"assistant", "content"}]``,
the rows of princeton-nlp/less_data that LESS trains on). Every stage that feeds text to the model
(gradients, experts, inference, evaluation) formats it here, so the prompt a gradient was computed on
is the prompt the expert was trained and evaluated on.

A conversation is rendered with the tokenizer's chat template, or, for a tokenizer without one, with
:func:`fallback_render`, which extends :data:`FALLBACK_TEMPLATE` to system turns and several exchanges.
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


def prompt_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    """The conversation a record's answer replies to, contents stripped.

    For a ``messages`` record: every turn before the last assistant turn. Otherwise the one user turn
    of :func:`user_message`.
    """
    messages = record.get("messages")
    if not messages:
        return [{"role": "user", "content": user_message(record)}]
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise InputError(f"sample {record.get('id')!r}: field 'messages' has no assistant turn")
    return [{"role": m["role"], "content": m["content"].strip()} for m in messages[:last]]


def fallback_render(messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
    """A conversation in the suite's fallback format (for a tokenizer without a chat template).

    Turns are joined by a blank line: a system turn is its text, a user turn ``### Instruction:\n<text>``,
    an assistant turn ``### Response:\n<text>``; the generation prompt is a blank line and
    ``### Response:\n``. One user turn with the generation prompt is exactly :data:`FALLBACK_TEMPLATE`.
    """
    heads = {"system": "", "user": "### Instruction:\n", "assistant": "### Response:\n"}
    text = "\n\n".join(heads[m["role"]] + m["content"] for m in messages)
    return text + "\n\n### Response:\n" if add_generation_prompt else text


def render(tokenizer: Any, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
    """``messages`` as text: the tokenizer's chat template, else :func:`fallback_render`.

    Raises:
        InputError: if the chat template rejects the conversation (e.g. roles that do not alternate).
    """
    if getattr(tokenizer, "chat_template", None):
        try:
            return tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as e:  # jinja2's TemplateError (raise_exception in a template) and its kin
            raise InputError(f"the chat template cannot render the conversation: {e}") from None
    return fallback_render(messages, add_generation_prompt)


def chat_prompt(tokenizer: Any, user: str) -> str:
    """The generation prompt of one user message taken verbatim (the model's chat template, else
    :data:`FALLBACK_TEMPLATE`). lm-eval's contexts keep their whitespace (sciq's starts with a newline);
    its ``hf`` model with ``apply_chat_template`` renders them so, and so does gs-routed."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return FALLBACK_TEMPLATE.format(user=user)


def format_prompt(tokenizer: Any, record: dict[str, Any]) -> str:
    """The prompt text up to where the assistant's answer starts (the generation prompt).

    For a ``messages`` record this is the conversation up to (not including) its last assistant
    turn, so generation and routing see the real context.
    """
    if not record.get("messages"):
        return chat_prompt(tokenizer, user_message(record))
    return render(tokenizer, prompt_messages(record), add_generation_prompt=True)


def is_multi_turn(record: dict[str, Any]) -> bool:
    """Whether a record's ``messages`` hold more than ``[system], user, assistant``."""
    messages = record.get("messages") or []
    roles = [m["role"] for m in messages]
    return roles not in (["user", "assistant"], ["system", "user", "assistant"]) and bool(messages)


def _labelled(
    input_ids: list[int], is_answer: list[bool], loss_on: LossOn, record: dict[str, Any]
) -> dict[str, list[int]]:
    """Labels of ``input_ids`` by ``loss_on``: answer tokens, the others, or all (see :func:`encode_example`)."""
    if loss_on == "response":
        labels = [t if a else IGNORE_INDEX for t, a in zip(input_ids, is_answer, strict=True)]
    elif loss_on == "instruction":
        labels = [IGNORE_INDEX if a else t for t, a in zip(input_ids, is_answer, strict=True)]
    elif loss_on == "all":
        labels = list(input_ids)
    else:
        raise InputError(f"unknown loss_on {loss_on!r}; expected response, instruction or all")
    if all(label == IGNORE_INDEX for label in labels):
        what = "instruction" if loss_on == "instruction" else "response"
        raise InputError(f"sample {record.get('id')!r}: no {what} tokens to take the loss on")
    return {"input_ids": input_ids, "labels": labels}


def _encode_conversation(
    tokenizer: Any, record: dict[str, Any], max_length: int, loss_on: LossOn
) -> dict[str, list[int]]:
    """Tokenise a multi-turn ``messages`` record (see :func:`encode_example`).

    The text is built incrementally, as open-instruct's ``encode_with_messages_format``: for each
    assistant turn ``i``, the rendering of ``messages[:i]`` with the generation prompt ends where
    the turn's answer starts, and the rendering of ``messages[:i + 1]`` ends after it. The text
    between the previous turn's end and this answer's start is a context piece; the answer piece is
    the stripped content's tokens and EOS, as in the single-turn path. The template's own text after
    an answer (its end-of-turn marker, less a leading EOS, which the answer piece already holds) opens
    the next context piece and is dropped after the last answer. Each piece is tokenised on its own
    (no special tokens added), so the spans are exact.
    """
    messages = [{"role": m["role"], "content": m["content"].strip()} for m in record["messages"]]
    eos_text = tokenizer.eos_token or ""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    input_ids: list[int] = []
    is_answer: list[bool] = []
    done = ""  # the rendered text consumed so far
    carry = ""  # template text after the previous answer that opens the next context piece
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True)
        after = render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not before.startswith(done) or not after.startswith(before):
            raise InputError(
                f"sample {record.get('id')!r}: the chat template does not render the conversation "
                f"incrementally (turn {i}'s text does not extend the text before it)"
            )
        context = tokenizer(carry + before[len(done) :], add_special_tokens=False)["input_ids"]
        answer = tokenizer(m["content"], add_special_tokens=False)["input_ids"] if m["content"] else []
        answer = answer + eos
        input_ids += context + answer
        is_answer += [False] * len(context) + [True] * len(answer)
        rest = after[len(before) :]
        k = rest.find(m["content"])
        carry = rest[k + len(m["content"]) :] if k >= 0 else ""
        if eos_text and carry.startswith(eos_text):
            carry = carry[len(eos_text) :]
        done = after
    return _labelled(input_ids[:max_length], is_answer[:max_length], loss_on, record)


def encode_example(
    tokenizer: Any,
    record: dict[str, Any],
    max_length: int,
    loss_on: LossOn = "response",
) -> dict[str, list[int]]:
    """Tokenise one record into ``input_ids`` and ``labels`` (``-100`` where no loss is taken).

    Returns two lists of one length ``t <= max_length``: ``input_ids`` and ``labels`` (a token id, or
    ``-100``). ``loss_on="response"`` (default, as LESS) puts the loss on the answer tokens (each
    followed by EOS); ``"instruction"`` on the prompt tokens (as ELREA does for its gradient
    features); ``"all"`` on both.

    A record without ``messages``, or whose ``messages`` are ``[system], user, assistant``, is one
    prompt (:func:`format_prompt`) and one answer; sequences longer than ``max_length`` keep the end
    of the prompt (its generation header) and the start of the answer, with the answer given at
    least a quarter of the budget. A longer conversation is tokenised turn by turn
    (:func:`_encode_conversation`): ``"response"`` labels every assistant turn (as LESS and
    open-instruct), ``"instruction"`` every other token (system and user turns and the template's
    headers, the generation prompts included), ``"all"`` every token; it is cut to its first
    ``max_length`` tokens (as LESS truncates).

    Raises:
        InputError: if no token that should carry the loss is left (no answer tokens, or no prompt
            tokens for ``"instruction"``), or the chat template cannot render the conversation.
    """
    if max_length < 4:
        raise InputError(f"max_length must be at least 4, got {max_length}")
    if is_multi_turn(record):
        return _encode_conversation(tokenizer, record, max_length, loss_on)
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
