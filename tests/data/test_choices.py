"""Multiple-choice records (gs.data.choices) and the derived splits of gs.data.prepare that hold them.

Records are built by hand, so every expected gold answer and distractor set is known independently.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gs.data.choices import (
    BODY_INSTRUCTION,
    DISTRACTORS,
    NEXT_PARAGRAPH_INSTRUCTION,
    build_choices,
    cut_text,
)
from gs.data.prepare import DOMAIN_FILES, build_domain, load_records, write_domain
from gs.io import InputError

ROOT = Path(__file__).resolve().parents[2]


def _numeric(answers: list[str], kind: str = "gsm_symbolic") -> list[dict]:
    return [
        {
            "id": f"q{i}",
            "domain": "math",
            "instruction": f"Question {i}?",
            "input": "",
            "output": f"Work.\n#### {a}",
            "meta": {"answer": a, "source": kind},
        }
        for i, a in enumerate(answers)
    ]


def _number(choice: str) -> str:
    assert choice.startswith("The answer is ") and choice.endswith(".")
    return choice.removeprefix("The answer is ").removesuffix(".")


def test_numeric_gold_is_the_own_answer_and_distractors_the_nearest_other_answers():
    records = _numeric(["12", "13", "14", "100", "1000", "12", "5000"])
    out = build_choices(records, "gsm_symbolic", 3, seed=0)
    assert [r["id"] for r in out] == [r["id"] for r in records]
    for rec, mc in zip(records, out, strict=True):
        choices, gold = mc["meta"]["choices"], mc["meta"]["gold"]
        assert len(choices) == 3 and len(set(choices)) == 3
        assert choices[gold] == f"The answer is {rec['meta']['answer']}." == mc["output"]
        others = {r["meta"]["answer"] for r in records if r["id"] != rec["id"]}
        for i, c in enumerate(choices):
            if i != gold:
                assert _number(c) in others and _number(c) != rec["meta"]["answer"]
        assert mc["instruction"] == rec["instruction"] and mc["domain"] == "math"
        assert mc["meta"]["source"] == "gsm_symbolic"
    # By hand: the nearest orders of magnitude to 12 among 13, 14, 100, 1000, 5000 (the other 12 is
    # the gold value itself) are 13 and 14; to 1000: 100 and 5000.
    assert sorted(_number(c) for c in out[0]["meta"]["choices"]) == ["12", "13", "14"]
    assert sorted(_number(c) for c in out[5]["meta"]["choices"]) == ["12", "13", "14"]
    assert sorted(_number(c) for c in out[4]["meta"]["choices"]) == ["100", "1000", "5000"]


def test_only_the_first_n_records_are_asked_but_distractors_come_from_all():
    records = _numeric(["12", "5000", "13", "14"])
    out = build_choices(records, "gsm_symbolic", 3, seed=0, n=2)
    assert [r["id"] for r in out] == ["q0", "q1"]
    assert sorted(_number(c) for c in out[0]["meta"]["choices"]) == ["12", "13", "14"]
    with pytest.raises(InputError, match="n must be an integer from 1 to 4"):
        build_choices(records, "gsm_symbolic", 3, seed=0, n=5)


def test_numeric_choices_are_written_like_the_gold_answer():
    # Gold "79" (no decimals): the one other integer first (2579), then the nearest in magnitude of
    # the decimals, written without decimals: 40.02 -> "40" (|log10 41.02 - log10 80| = 0.29, against
    # 1.04 for 869.87 and 1.45 for 1.85).
    records = _numeric(["869.87", "1.85", "79", "2579", "40.02"], kind="finance")
    out = build_choices(records, "finance", 3, seed=1)
    assert sorted(_number(c) for c in out[2]["meta"]["choices"]) == ["2579", "40", "79"]
    # Gold "1.85": the two other answers with two decimals (40.02, 869.87) come before the integers
    # (79 is nearer in magnitude than 869.87, but written differently).
    assert sorted(_number(c) for c in out[1]["meta"]["choices"]) == ["1.85", "40.02", "869.87"]
    for mc in out:
        places = {len(_number(c).partition(".")[2]) for c in mc["meta"]["choices"]}
        assert len(places) == 1


def test_choices_are_deterministic_under_a_seed_and_shuffled_by_it():
    records = _numeric([str(10 * i + 1) for i in range(12)])
    a = build_choices(records, "gsm_symbolic", 4, seed=3)
    assert a == build_choices(records, "gsm_symbolic", 4, seed=3)
    b = build_choices(records, "gsm_symbolic", 4, seed=4)
    assert [r["meta"]["gold"] for r in a] != [r["meta"]["gold"] for r in b]
    # The same choices either way: only the order depends on the seed here (no ties in distance).
    assert [sorted(r["meta"]["choices"]) for r in a] == [sorted(r["meta"]["choices"]) for r in b]
    assert len({r["meta"]["gold"] for r in a}) > 1


HEADER = 'def f{i}(x):\n    """Do thing {i}."""\n'


def _programs(bodies: list[str], *, prompt: bool = True) -> list[dict]:
    rows = []
    for i, body in enumerate(bodies):
        head = HEADER.format(i=i)
        rows.append(
            {
                "id": f"p{i}",
                "domain": "code",
                "instruction": "Complete the following Python function. Answer with the complete function.",
                "input": head if prompt else f"spec {i}",
                "output": head + body if prompt else body,
                "meta": {"prompt": head, "source": "humaneval"} if prompt else {"source": "codeio"},
            }
        )
    return rows


def test_program_gold_is_the_own_body_and_distractors_other_bodies():
    bodies = [f"    return x + {i}\n" for i in range(5)]
    records = _programs(bodies)
    out = build_choices(records, "humaneval", 4, seed=0)
    for i, mc in enumerate(out):
        choices, gold = mc["meta"]["choices"], mc["meta"]["gold"]
        assert choices[gold] == f"    return x + {i}"
        assert {c for j, c in enumerate(choices) if j != gold} <= {f"    return x + {k}" for k in range(5) if k != i}
        assert mc["instruction"] == BODY_INSTRUCTION and mc["input"] == HEADER.format(i=i)
    codeio = build_choices(_programs(bodies, prompt=False), "codeio", 2, seed=0)
    assert codeio[0]["instruction"] == records[0]["instruction"] and codeio[0]["input"] == "spec 0"
    assert codeio[0]["meta"]["choices"][codeio[0]["meta"]["gold"]] == "    return x + 0"


def test_one_cut_rule_for_gold_and_distractors():
    assert cut_text("    x = 1\n    y = 2\n    return x + y", 20) == "    x = 1\n    y = 2"
    assert cut_text("One two. Three four five.", 12) == "One two."
    assert cut_text("One two three four", 12) == "One two"
    assert cut_text("abcdefghij", 4) == "abcd"
    assert cut_text("short", 20) == "short" and cut_text("short", None) == "short"
    long_ = "    a = 1\n    b = 2\n    c = 3\n    return a"  # cut to its first two lines at 20
    short = "    return x\n"
    records = _programs([long_, short, long_.replace("a", "q"), short.replace("x", "y")])
    out = build_choices(records, "humaneval", 3, seed=0, max_chars=20)
    cut_bodies = {cut_text(b.rstrip(), 20) for b in (long_, short, long_.replace("a", "q"), short.replace("x", "y"))}
    for mc in out:
        assert all(len(c) <= 20 and c in cut_bodies for c in mc["meta"]["choices"])
    assert out[0]["meta"]["choices"][out[0]["meta"]["gold"]] == "    a = 1\n    b = 2"
    # The long gold's nearest-length distractor is the other long body, cut alike.
    assert "    q = 1\n    b = 2" in out[0]["meta"]["choices"]


def _passages() -> list[dict]:
    paras = [f"Paragraph {k} says {'more ' * k * k}things." for k in range(8)]  # 24 + 5 k^2 characters
    # Overlapping windows, as verne_passages makes them: passages 0 and 1 share paragraphs 2 and 3.
    windows = [paras[0:4], paras[2:6], paras[4:8]]
    return [
        {
            "id": f"w{i}",
            "domain": "writing",
            "instruction": "Write a coherent passage.",
            "input": "1. x",
            "output": "\n\n".join(w),
            "meta": {"end_sentences": ["x"], "source": "verne_passages"},
        }
        for i, w in enumerate(windows)
    ], paras


def test_passage_gold_is_the_real_next_paragraph_and_distractors_from_other_passages():
    records, paras = _passages()
    out = build_choices(records, "verne_passages", 3, seed=0)
    for rec, mc in zip(records, out, strict=True):
        own = rec["output"].split("\n\n")
        choices, gold = mc["meta"]["choices"], mc["meta"]["gold"]
        assert mc["instruction"] == NEXT_PARAGRAPH_INSTRUCTION and mc["input"] == own[0]
        assert choices[gold] == own[1]
        distractors = [c for j, c in enumerate(choices) if j != gold]
        assert len(distractors) == 2 and all(c in paras and c not in own for c in distractors)
        assert "end_sentences" not in mc["meta"]
    # Passage 1 (paragraphs 2-5, gold 3 of 69 characters): the others' paragraphs not its own are
    # 0, 1, 6, 7 (24, 29, 204, 269 characters); the nearest in length are 1 and 0.
    assert sorted(out[1]["meta"]["choices"]) == sorted([paras[3], paras[1], paras[0]])


def test_errors_are_one_line_and_name_the_problem():
    records = _numeric(["1", "2", "3"])
    with pytest.raises(
        InputError, match="kind 'tot_writing' has no multiple-choice distractors; kinds with them: "
    ) as e:
        build_choices(records, "tot_writing", 2, seed=0)
    assert all(k in str(e.value) for k in DISTRACTORS) and "\n" not in str(e.value)
    with pytest.raises(InputError, match="3 gsm_symbolic records for 4 choices"):
        build_choices(records, "gsm_symbolic", 4, seed=0)
    with pytest.raises(InputError, match="at least 2"):
        build_choices(records, "gsm_symbolic", 1, seed=0)
    with pytest.raises(InputError, match="record 'q1': meta.answer 'two' is not a number"):
        build_choices(_numeric(["1", "two", "3"]), "gsm_symbolic", 2, seed=0)
    with pytest.raises(InputError, match="record 'q0' is of source kind 'gsm_symbolic', not 'finance'"):
        build_choices(records, "finance", 2, seed=0)
    with pytest.raises(InputError, match=r"record 'q0' \(gsm_symbolic\): 1 distinct distractors .* 2 needed"):
        build_choices(_numeric(["1", "2", "2.0"]), "gsm_symbolic", 3, seed=0)
    with pytest.raises(InputError, match="at least two paragraphs"):
        build_choices([{**r, "output": "One paragraph."} for r in _passages()[0]], "verne_passages", 2, seed=0)


SPEC = {
    "train": {"source": "finance", "n": 4},
    "validation": {"source": "finance", "n": 2},
    "test": {"source": "finance", "n": 5},
}


def test_derived_split_is_built_from_its_split_without_changing_the_drawn_ones(tmp_path):
    plain = build_domain("finance", SPEC, seed=2)
    out = build_domain("finance", {**SPEC, "choice": {"from": "reference", "choices": 3, "n": 4}}, seed=2)
    assert {s: out[s] for s in DOMAIN_FILES} == plain
    assert [r["id"] for r in out["choice"]] == [r["id"] for r in plain["test"][:4]]
    for rec, mc in zip(plain["test"][:4], out["choice"], strict=True):
        assert mc["meta"]["choices"][mc["meta"]["gold"]] == f"The answer is {rec['meta']['answer']}."
        assert len(mc["meta"]["choices"]) == 3
    write_domain(out, tmp_path / "finance")
    assert sorted(p.stem for p in (tmp_path / "finance").iterdir()) == sorted([*DOMAIN_FILES, "choice"])
    assert load_records(tmp_path / "finance" / "choice.jsonl") == out["choice"]


@pytest.mark.parametrize(
    "derived, message",
    [
        ({"choice": {"from": "heldout", "choices": 3}}, "'from' names split 'heldout', which is not drawn"),
        ({"choice": {"from": "test", "choices": 1}}, "'choices' must be an integer of at least 2, got 1"),
        ({"choice": {"from": "test", "choices": 3, "n": 9}}, "'n' must be an integer from 1 to 5"),
        ({"choice": {"from": "test", "choices": 3, "k": 1}}, r"unknown key\(s\) \['k'\]"),
        ({"choice": {"from": "test", "choices": 6}}, "5 finance records for 6 choices"),
        ({"test": {"from": "train", "choices": 3}}, "split 'test' is drawn from a source and cannot be derived"),
    ],
)
def test_bad_derived_split_is_a_one_line_error(derived, message):
    with pytest.raises(InputError, match=message) as e:
        build_domain("finance", {**SPEC, **derived}, seed=0)
    assert "\n" not in str(e.value)


def test_bad_derived_split_fails_the_cli_with_one_line(tmp_path):
    spec = {**SPEC, "choice": {"from": "validation", "choices": 3}}
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "gs.data.prepare", "part", "--part", "finance", "--params", json.dumps(spec)]
        + ["--seed", "0", "--out-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "error: part 'finance': derived split 'choice': 2 finance records for 3 choices: distractors "
        "come from the other records, so at least 3 are needed"
    ]
    assert not out.exists()
