"""Multiple-choice records built from a split's own records: the gold answer among honest distractors.

A multiple-choice record keeps the record format of :mod:`gs.data.prepare` and the ``id`` of the record it
was built from (the choice records live in their own file, ``<part>/<split>.jsonl``, so ids stay
traceable to the source record). It adds ``meta.choices`` (the answer texts, in a seeded order) and
``meta.gold`` (the index of the correct one); ``output`` is the gold choice, ``meta.source`` the source
kind and ``meta.source_id`` is kept when the source record had one. The lm-eval ``gs_<part>_choice``
tasks score the log-likelihood of each choice as the assistant's answer to the record's user message
(lm-eval's ``acc`` and ``acc_norm``).

Distractors are never written by hand: they are other records' real answers from the same split,
picked by the SOURCE KIND of the records (``meta.source``; :data:`DISTRACTORS`), never by part name:

* numeric answers (``gsm_symbolic``, ``finance``): the other records' computed ``meta.answer`` values,
  numerically distinct from the gold one, all written with the gold answer's number of decimals;
* programs (``humaneval``, ``codeio``): the other problems' canonical solutions (HumanEval: the
  function body after ``meta.prompt``; CodeI/O: the whole program), real code that is wrong here;
* passages (``verne_passages``): the prompt is the passage's first paragraph, the gold choice the
  real next paragraph, the distractors paragraphs of the split's other passages (none of this
  passage's own paragraphs, which overlapping windows can share).

Among the candidates, those nearest the gold answer are preferred (numbers: the same number of
decimals, then the nearest order of magnitude; texts: the nearest length), ties broken by the seed,
so no choice stands out by its form. ``max_chars`` cuts every choice text by one rule
(:func:`cut_text`), gold and distractors alike, so that the cut is no tell either and the scoring
stays cheap.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from gs.io import InputError

#: The user message of a HumanEval choice record (its ``input`` stays the function's prompt): the
#: choices are function bodies, which follow the prompt's signature and docstring.
BODY_INSTRUCTION = "Complete the following Python function. Answer with the body of the function."
#: The user message of a passage choice record; its ``input`` is the passage's first paragraph.
NEXT_PARAGRAPH_INSTRUCTION = "Continue the following passage: write the paragraph that comes next."
#: The text of a numeric choice. A full sentence rather than the bare number: an assistant turn that
#: is a lone number is a form the models never saw, so its first-token probability would weigh the
#: form more than the value; the lead-in is identical across choices, so it shifts every choice's
#: log-likelihood alike and ``acc`` compares the numbers alone.
NUMBER_CHOICE = "The answer is {}."


def cut_text(text: str, max_chars: int | None) -> str:
    """``text`` cut to at most ``max_chars`` characters at the last line break, else the last sentence
    end, else the last space within the limit (a hard cut when there is none); ``None`` keeps it whole.

    One rule for every choice of a record, gold and distractors alike.
    """
    if max_chars is None or len(text) <= max_chars:
        return text
    head = text[: max_chars + 1]
    for sep, keep in (("\n", 0), (". ", 1), (" ", 0)):
        i = head.rfind(sep)
        if i > 0:
            return text[: i + keep].rstrip()
    return text[:max_chars]


def _nearest(candidates: list[Any], key: Callable[[Any], Any], k: int, rng: random.Random) -> list[Any]:
    """The ``k`` candidates with the smallest ``key`` (their distance to the gold answer), ties broken by ``rng``."""
    shuffled = list(candidates)
    rng.shuffle(shuffled)
    return sorted(shuffled, key=key)[:k]


def _choice_record(
    record: dict[str, Any],
    kind: str,
    gold: str,
    distractors: list[str],
    rng: random.Random,
    *,
    instruction: str | None = None,
    input_text: str | None = None,
) -> dict[str, Any]:
    """The multiple-choice record: ``gold`` and ``distractors`` shuffled by ``rng``, ``meta.gold`` its index."""
    choices = [gold, *distractors]
    rng.shuffle(choices)
    meta: dict[str, Any] = {"source": kind, "choices": choices, "gold": choices.index(gold)}
    if "source_id" in (record.get("meta") or {}):
        meta["source_id"] = record["meta"]["source_id"]
    return {
        "id": record["id"],
        "domain": record.get("domain"),
        "instruction": record["instruction"] if instruction is None else instruction,
        "input": record.get("input", "") if input_text is None else input_text,
        "output": gold,
        "meta": meta,
    }


def _too_few(record: dict[str, Any], kind: str, found: int, need: int) -> InputError:
    return InputError(
        f"record {record['id']!r} ({kind}): {found} distinct distractors among the other records, {need} needed; "
        "use more records or fewer choices"
    )


def _decimals(value: str) -> int:
    return len(value.split(".", 1)[1]) if "." in value else 0


def _number(record: dict[str, Any]) -> tuple[str, Decimal]:
    """A record's ``meta.answer`` as its text (commas dropped) and its exact value."""
    answer = (record.get("meta") or {}).get("answer")
    text = str(answer).replace(",", "").strip() if answer is not None else ""
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite():
        raise InputError(f"record {record['id']!r}: meta.answer {answer!r} is not a number")
    return text, value


def number_choices(
    records: Sequence[dict[str, Any]], kind: str, n_choices: int, seed: int, max_chars: int | None, n: int
) -> list[dict[str, Any]]:
    """Numeric answers: the gold ``meta.answer`` and other records' answers, ``The answer is <n>.``

    Every choice is written with the gold answer's number of decimals; a distractor equal to the gold
    (or to another distractor) once so written is dropped. ``max_chars`` does not apply (numbers are short).
    """
    numbers = [_number(r) for r in records]
    out = []
    for i, record in enumerate(records[:n]):
        text, gold = numbers[i]
        places = _decimals(text)
        step = Decimal(1).scaleb(-places)

        def written(value: Decimal, step: Decimal = step) -> str:
            return str(value.quantize(step))

        gold_text = written(gold)
        seen, candidates = {gold_text}, []
        for j, (other_text, other) in enumerate(numbers):
            w = written(other)
            if j != i and w not in seen:
                seen.add(w)
                candidates.append((w, _decimals(other_text) != places, other))

        def distance(c: tuple[str, bool, Decimal], gold: Decimal = gold) -> tuple[bool, float]:
            return c[1], abs(math.log10(1 + abs(float(c[2]))) - math.log10(1 + abs(float(gold))))

        rng = random.Random(f"{seed}:{record['id']}")
        if len(candidates) < n_choices - 1:
            raise _too_few(record, kind, len(candidates), n_choices - 1)
        picked = _nearest(candidates, distance, n_choices - 1, rng)
        out.append(
            _choice_record(
                record, kind, NUMBER_CHOICE.format(gold_text), [NUMBER_CHOICE.format(c[0]) for c in picked], rng
            )
        )
    return out


def _program(record: dict[str, Any]) -> str:
    """The record's solution: the text after ``meta.prompt`` when the output restates it (HumanEval's
    body), else the whole output; leading blank lines and trailing space dropped."""
    output, prompt = record.get("output") or "", (record.get("meta") or {}).get("prompt")
    if prompt and output.startswith(prompt):
        output = output[len(prompt) :]
    return output.lstrip("\n").rstrip()


def _text_choices(
    records: Sequence[dict[str, Any]],
    kind: str,
    n_choices: int,
    seed: int,
    max_chars: int | None,
    n: int,
    gold_of: Callable[[dict[str, Any]], str],
    pool_of: Callable[[dict[str, Any]], list[str]],
    prompt_of: Callable[[dict[str, Any]], tuple[str | None, str | None]],
) -> list[dict[str, Any]]:
    """Text answers: for each of the first ``n`` records, its gold text and texts of the other records
    (``pool_of``), the candidates nearest the gold's length first, every text cut by :func:`cut_text`."""
    out = []
    for i, record in enumerate(records[:n]):
        gold = cut_text(gold_of(record), max_chars)
        if not gold:
            raise InputError(f"record {record['id']!r} ({kind}): no answer text to offer as the gold choice")
        own = set(pool_of(record))
        seen, candidates = {gold}, []
        for j, other in enumerate(records):
            if j == i:
                continue
            for text in pool_of(other):
                text_cut = cut_text(text, max_chars)
                if text_cut and text not in own and text_cut not in seen:
                    seen.add(text_cut)
                    candidates.append(text_cut)
        if len(candidates) < n_choices - 1:
            raise _too_few(record, kind, len(candidates), n_choices - 1)
        rng = random.Random(f"{seed}:{record['id']}")
        size = len(gold)
        picked = _nearest(candidates, lambda c, size=size: abs(len(c) - size), n_choices - 1, rng)
        instruction, input_text = prompt_of(record)
        out.append(_choice_record(record, kind, gold, picked, rng, instruction=instruction, input_text=input_text))
    return out


def program_choices(
    records: Sequence[dict[str, Any]], kind: str, n_choices: int, seed: int, max_chars: int | None, n: int
) -> list[dict[str, Any]]:
    """Programs: the record's own solution against the other problems' solutions.

    A record with ``meta.prompt`` (HumanEval) is asked for the function body (:data:`BODY_INSTRUCTION`,
    input the prompt); one without (CodeI/O) keeps its instruction and input, the choices whole programs.
    """

    def prompt_of(record: dict[str, Any]) -> tuple[str | None, str | None]:
        prompt = (record.get("meta") or {}).get("prompt")
        return (BODY_INSTRUCTION, prompt) if prompt else (None, None)

    return _text_choices(
        records,
        kind,
        n_choices,
        seed,
        max_chars,
        n,
        _program,
        lambda r: [_program(r)] if _program(r) else [],
        prompt_of,
    )


def _paragraphs(record: dict[str, Any]) -> list[str]:
    return [p.strip() for p in (record.get("output") or "").split("\n\n") if p.strip()]


def passage_choices(
    records: Sequence[dict[str, Any]], kind: str, n_choices: int, seed: int, max_chars: int | None, n: int
) -> list[dict[str, Any]]:
    """Passages: the first paragraph is the prompt (:data:`NEXT_PARAGRAPH_INSTRUCTION`), the real second
    paragraph the gold choice, paragraphs of the other passages (none of this one's) the distractors.

    The prompt paragraph is cut by the same :func:`cut_text` rule as the choices.
    """
    for record in records[:n]:
        if len(_paragraphs(record)) < 2:
            raise InputError(f"record {record['id']!r} ({kind}): a passage of at least two paragraphs is needed")
    return _text_choices(
        records,
        kind,
        n_choices,
        seed,
        max_chars,
        n,
        lambda r: _paragraphs(r)[1],
        _paragraphs,
        lambda r: (NEXT_PARAGRAPH_INSTRUCTION, cut_text(_paragraphs(r)[0], max_chars)),
    )


#: ``(records, kind, n_choices, seed, max_chars, n) -> the choice records of the first n records``.
ChoiceBuilder = Callable[[Sequence[dict[str, Any]], str, int, int, "int | None", int], list[dict[str, Any]]]

#: Source kind -> how its records' distractors are drawn (by the records' kind, never a part's name).
DISTRACTORS: dict[str, ChoiceBuilder] = {
    "gsm_symbolic": number_choices,
    "finance": number_choices,
    "humaneval": program_choices,
    "codeio": program_choices,
    "verne_passages": passage_choices,
}


def build_choices(
    records: list[dict[str, Any]],
    kind: str,
    n_choices: int,
    seed: int,
    *,
    n: int | None = None,
    max_chars: int | None = None,
) -> list[dict[str, Any]]:
    """One multiple-choice record per record of ``records`` (a split of source kind ``kind``), or
    per record of its first ``n`` only: the questions; distractors come from all of ``records``.

    Each keeps the record's ``id``, has ``n_choices`` choices in ``meta.choices`` (shuffled with
    ``seed`` and the id: deterministic) and the gold index in ``meta.gold``; distractors come from the
    other records (:data:`DISTRACTORS`). ``max_chars`` cuts every text choice by one rule.

    Raises:
        InputError: an unknown kind (naming the kinds with distractors), ``n_choices`` below 2, ``n``
            not from 1 to the number of records, fewer records than ``n_choices``, a record of another
            kind, or too few distinct distractors.
    """
    if kind not in DISTRACTORS:
        raise InputError(
            f"source kind {kind!r} has no multiple-choice distractors; kinds with them: {', '.join(DISTRACTORS)}"
        )
    if isinstance(n_choices, bool) or not isinstance(n_choices, int) or n_choices < 2:
        raise InputError(f"choices must be an integer of at least 2, got {n_choices!r}")
    if max_chars is not None and (isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1):
        raise InputError(f"max_chars must be a positive integer, got {max_chars!r}")
    n = len(records) if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(records):
        raise InputError(f"n must be an integer from 1 to {len(records)} (the records), got {n!r}")
    if len(records) < n_choices:
        raise InputError(
            f"{len(records)} {kind} records for {n_choices} choices: distractors come from the other records, "
            f"so at least {n_choices} are needed"
        )
    for record in records:
        other = (record.get("meta") or {}).get("source")
        if other is not None and other != kind:
            raise InputError(f"record {record['id']!r} is of source kind {other!r}, not {kind!r}")
    return DISTRACTORS[kind](records, kind, n_choices, seed, max_chars, n)
