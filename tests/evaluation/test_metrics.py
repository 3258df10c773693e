"""Scoring rules: number extraction and comparison, finance tolerance, code extraction, ToT writing."""

from __future__ import annotations

import pytest

from gs.evaluation.metrics import (
    build_code_program,
    constraint_satisfied,
    extract_code,
    extract_final_number,
    finance_exact_match,
    math_exact_match,
    numbers_match,
    paragraph_endings_score,
    parse_number,
    split_paragraphs,
)

# --- numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 42.", "42"),
        ("She pays 3 * 4 = 12 dollars.\n#### 42", "42"),
        ("#### 1,234", "1234"),
        ("In total it costs $1,234.50.", "1234.50"),
        ("The temperature drops to -5 degrees.", "-5"),
        ("She lost -$3.25 on it", "-3.25"),
        ("He ate 3/4 of the pie", "3/4"),
        ("\\boxed{\\frac{3}{4}}", "3/4"),
        ("Step 1: 5 apples\nThe answer is 12. Step 2 was easy.", "12"),
        ("First 3, then 7, finally 10", "10"),
        ("- 5 apples", "5"),  # a bullet, not a minus
        ("x-5", "5"),
        ("H2O", None),
        ("no digits here", None),
        ("", None),
        (None, None),
        (12, None),
    ],
)
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


def test_numbers_match():
    assert numbers_match("42.0", "42")
    assert numbers_match("$1,234", "1234")
    assert numbers_match("3/4", "0.75")
    assert numbers_match("0.33333", "1/3")
    assert not numbers_match("10001", "10000")  # whole numbers are exact despite rel_tol
    assert not numbers_match("41", "42")
    assert not numbers_match(None, "42") and not numbers_match("abc", "42")
    assert not numbers_match("1e999999999", "1")  # refused, not computed
    assert parse_number("12.5%") == parse_number("12.5")


def test_math_exact_match():
    assert math_exact_match("Half of 144 is 72.\n#### 72", "Natalia sold 48 + 24 = 72 clips.\n#### 72") == 1.0
    assert math_exact_match("The answer is 72.0", "72") == 1.0
    assert math_exact_match("The answer is 71.", "72") == 0.0
    assert math_exact_match("So \\boxed{x^2 + 1}.", "x^2+1") == 1.0
    for odd in ("", None, "garbage", 3.5):
        assert math_exact_match(odd, "72") == 0.0
    assert math_exact_match("The answer is 72", None) == 0.0


def test_finance_tolerance_and_percent():
    assert finance_exact_match("The monthly rate is 4.17%.", "4.1667%") == 1.0
    assert finance_exact_match("The payment is $1,240.", "$1,234") == 1.0  # within 1 %
    assert finance_exact_match("The payment is $1,260.", "$1,234") == 0.0  # 2 % off
    assert finance_exact_match("The return is 12.5%.", "0.125") == 1.0
    assert finance_exact_match("The ratio is 0.125", "12.5%") == 1.0
    assert finance_exact_match("It is 1.05", "1.06", rel_tol=0.001) == 0.0
    assert finance_exact_match("The balance is $1,050.00.", "Balance = 1,000 x 1.05 = 1,050.00.\n#### 1050.00") == 1.0
    assert finance_exact_match("Yes.", "yes") == 1.0
    assert finance_exact_match(None, "5") == 0.0 and finance_exact_match("", "5") == 0.0


# --- code ---------------------------------------------------------------------------------------

PROMPT = 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum of xs."""\n'


def test_extract_code_fenced_and_raw():
    assert extract_code("    return sum(xs)\n") == "    return sum(xs)\n"
    fenced = "Here you go:\n```python\ndef total(xs):\n    return sum(xs)\n```\nThis sums the list."
    assert extract_code(fenced, "total") == "def total(xs):\n    return sum(xs)\n"
    # The block that defines the entry point wins over an earlier example block.
    two = "```python\nprint(total([1]))\n```\n\n```py\ndef total(xs):\n    return sum(xs)\n```\n"
    assert extract_code(two, "total").startswith("def total")
    # An unclosed fence (a cut-off generation) runs to the end.
    assert extract_code("```python\ndef total(xs):\n    return 0", "total") == "def total(xs):\n    return 0"
    # A body continuation followed by a closing fence (lm-eval's instruct handling).
    assert extract_code("    return sum(xs)\n```\nDone.") == "    return sum(xs)\n"
    assert extract_code(None) == ""


def test_build_code_program_prepends_prompt_only_for_bodies():
    body = build_code_program(PROMPT, "    return sum(xs)\n", "total")
    assert body == PROMPT + "    return sum(xs)\n"
    restated = build_code_program(PROMPT, "```python\ndef total(xs):\n    return sum(xs)\n```", "total")
    assert restated.count("def total") == 1
    assert "from typing import List" in restated  # the prompt's preamble is kept
    compile(restated, "<restated>", "exec")
    # A prompt that does not parse: only its imports are kept.
    broken = build_code_program("import math\ndef total(xs:\n", "def total(xs):\n    return 0\n", "total")
    assert broken.startswith("import math") and broken.count("def total") == 1


# --- creative writing (Tree of Thoughts) --------------------------------------------------------

ENDS = [
    "It isn't difficult to do a handstand if you just stand on your hands.",
    "It caught him off guard that space smelled of seared steak.",
    "When she didn't like a guy who was trying to pick her up, she started using sign language.",
    "Each person who knows you has a different perception of who you are.",
]


def _passage(ends):
    return "\n\n".join(f"Some opening words for paragraph {i + 1}. {e}" for i, e in enumerate(ends))


def test_constraint_all_endings_match():
    passage = _passage(ENDS)
    assert len(split_paragraphs(passage)) == 4
    assert paragraph_endings_score(passage, ENDS) == 1.0
    assert constraint_satisfied(passage, ENDS) == 1.0
    # ToT gives the sentences as one string; case, quotes and final punctuation are tolerated.
    tweaked = passage.replace("seared steak.", "Seared Steak!").replace("isn't", "isn’t")
    assert constraint_satisfied(tweaked, " ".join(ENDS)) == 1.0
    # The suite's instructions number them one per line.
    assert constraint_satisfied(passage, "\n".join(f"{i}. {e}" for i, e in enumerate(ENDS, 1))) == 1.0


def test_constraint_one_wrong_ending():
    ends = ENDS[:2] + ["Something else entirely happened."] + ENDS[3:]
    passage = _passage(ends)
    assert paragraph_endings_score(passage, ENDS) == 0.75
    assert constraint_satisfied(passage, ENDS) == 0.0


def test_constraint_paragraph_count_and_format():
    assert constraint_satisfied(_passage(ENDS) + "\n\nAn extra paragraph.", ENDS) == 0.0
    tot_format = "Plan:\nFour scenes.\n\nPassage:\n" + _passage(ENDS)
    assert constraint_satisfied(tot_format, ENDS) == 1.0
    single_newlines = "\n".join(f"Intro {i}. {e}" for i, e in enumerate(ENDS))
    assert constraint_satisfied(single_newlines, ENDS) == 1.0
    # A paragraph ending in a longer word that merely ends with the sentence's letters does not count.
    assert paragraph_endings_score("Overstand on your hands.", ["stand on your hands."]) == 0.0


@pytest.mark.parametrize("passage", ["", None, "   \n\n  ", 42])
def test_constraint_empty_or_odd(passage):
    assert paragraph_endings_score(passage, ENDS) == 0.0
    assert constraint_satisfied(passage, ENDS) == 0.0
    assert split_paragraphs(passage) == []


def test_no_sentences_scores_zero():
    assert paragraph_endings_score(_passage(ENDS), []) == 0.0
    assert constraint_satisfied(_passage(ENDS), None) == 0.0
