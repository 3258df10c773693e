"""The ``less_eval`` source against texts written by hand from ClusterUCB's get_validation_dataset.py.

A tiny folder in princeton-nlp/less_data's ``eval/`` layout is written in ``tmp_path``; the expected
prompts follow the reference's formatting code (its huggingface chat path: user content, then the
answer prefix and the answer the loss is on).
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

from gs.data.sources import LICENSES, SOURCE_IMPORTS, SOURCES, load_source
from gs.io import InputError

BBH_LOGIC = (
    "Evaluate logic.\n\n"
    "Q: Is A true?\nA: Let's think. So the answer is Yes.\n\n"
    "Q: Is B true?\nA: Let's think. So the answer is No.\n\n"
    "Q: Is C true?\nA: Let's think. So the answer is Yes."
)
BBH_DATES = (
    "Infer the date.\n\nUse the calendar.\n\n"
    "Q: Day after Monday?\nA: Tuesday.\n\n"
    "Q: Day before Monday?\nA: Sunday.\n\n"
    "Q: Two days after Monday?\nA: Wednesday."
)


def write_less_eval(root: Path) -> Path:
    """2 mmlu subjects (2 dev rows each), 2 bbh tasks, 2 tydiqa languages, 3 gsm test rows."""
    mmlu = root / "eval" / "mmlu"
    (mmlu / "dev").mkdir(parents=True)
    (mmlu / "test").mkdir()
    (mmlu / "dev" / "high_school_physics_dev.csv").write_text(
        "What is the SI unit of force?,joule,newton,watt,pascal,B\n"
        '"Speed of light, roughly?",3e8 m/s,340 m/s,1 m/s,0,A\n'
    )
    (mmlu / "dev" / "anatomy_dev.csv").write_text(
        "Which organ pumps blood?,lung,liver,heart,kidney,C\nHow many bones?,206,12,1,3,A\n"
    )
    for subject in ("high_school_physics", "anatomy"):
        (mmlu / "test" / f"{subject}_test.csv").write_text("q,a,b,c,d,A\n")
    (mmlu / "test" / "README.txt").write_text("not a subject\n")
    (root / "eval" / "bbh").mkdir(parents=True)
    (root / "eval" / "bbh" / "bbh-three-shot.json").write_text(json.dumps({"logic": BBH_LOGIC, "dates": BBH_DATES}))
    (root / "eval" / "tydiqa").mkdir(parents=True)
    one_shot = {
        "finnish": [
            {
                "context": "Helsinki on Suomen pääkaupunki.",
                "question": "Mikä on pääkaupunki?",
                "answers": [{"text": "Helsinki", "answer_start": 0}],
            }
        ],
        "english": [
            {
                "context": "Paris is in France.",
                "question": "Where is Paris?",
                "answers": [{"text": "France", "answer_start": 12}],
            },
            {"context": "unused", "question": "unused?", "answers": [{"text": "x", "answer_start": 0}]},
        ],
    }
    (root / "eval" / "tydiqa" / "tydiqa-one-shot.json").write_text(json.dumps(one_shot, ensure_ascii=False))
    (root / "eval" / "gsm").mkdir(parents=True)
    gsm = [{"question": f"What is {i}+{i}?", "answer": f"It is {2 * i}.\n#### {2 * i}"} for i in range(3)]
    (root / "eval" / "gsm" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gsm))
    return root


@pytest.fixture
def less_dir(tmp_path: Path) -> Path:
    return write_less_eval(tmp_path / "less_data")


def test_registered_with_imports_and_license():
    assert SOURCES["less_eval"].__name__ == "less_eval"
    assert "less_eval" in SOURCE_IMPORTS and "less_eval" in LICENSES


def test_mmlu_subjects_sorted_zero_shot_prompts(less_dir):
    items = load_source("less_eval", None, 0, {"path": str(less_dir), "task": "mmlu"})
    assert [i["meta"]["subtask"] for i in items] == ["anatomy"] * 2 + ["high_school_physics"] * 2
    assert items[0]["instruction"] == (
        "The following are multiple choice questions (with answers) about  anatomy.\n\n"
        "Which organ pumps blood?\nA. lung\nB. liver\nC. heart\nD. kidney\nAnswer:"
    )
    assert items[3]["instruction"] == (
        "The following are multiple choice questions (with answers) about  high school physics.\n\n"
        "Speed of light, roughly?\nA. 3e8 m/s\nB. 340 m/s\nC. 1 m/s\nD. 0\nAnswer:"
    )
    assert [i["output"] for i in items] == [
        "The answer is: C",
        "The answer is: A",
        "The answer is: B",
        "The answer is: A",
    ]
    assert all(i["input"] == "" and i["meta"]["source"] == "less_eval" for i in items)
    assert items[0]["meta"]["answer_prefix"] == "The answer is:"


def test_bbh_each_example_in_turn_with_the_other_two_as_demonstrations(less_dir):
    items = load_source("less_eval", None, 0, {"path": str(less_dir), "task": "bbh"})
    assert [i["meta"]["subtask"] for i in items] == ["logic"] * 3 + ["dates"] * 3
    assert items[1]["instruction"] == (
        "Evaluate logic.\n\n"
        "Q: Is A true?\nA: Let's think. So the answer is Yes.\n\n"
        "Q: Is C true?\nA: Let's think. So the answer is Yes.\n\n"
        "Q: Is B true?"
    )
    assert items[1]["output"] == "A: Let's think. So the answer is No."
    assert items[3]["instruction"] == (
        "Infer the date.\n\nUse the calendar.\n\n"
        "Q: Day before Monday?\nA: Sunday.\n\nQ: Two days after Monday?\nA: Wednesday.\n\n"
        "Q: Day after Monday?"
    )
    assert items[3]["output"] == "A: Tuesday."


def test_tydiqa_first_example_per_language_in_file_order(less_dir):
    items = load_source("less_eval", None, 0, {"path": str(less_dir), "task": "tydiqa"})
    assert [i["meta"]["subtask"] for i in items] == ["finnish", "english"]
    assert items[0]["instruction"] == (
        "Vastaa seuraavaan kysymykseen annetun kappaleen tiedon perusteella.Kappale: Helsinki on Suomen pääkaupunki.\n"
        "Kysymys: Mikä on pääkaupunki?\n"
    )
    assert items[0]["output"] == "Vastaus: Helsinki"
    assert items[1]["instruction"] == (
        "Answer the following question based on the information in the given passage.Passage: Paris is in France.\n"
        "Question: Where is Paris?\n"
    )
    assert items[1]["output"] == "Answer: France"


def test_n_all_when_none_or_larger_and_a_seeded_subset_in_order(less_dir):
    opts = {"path": str(less_dir), "task": "bbh"}
    every = load_source("less_eval", None, 0, opts)
    assert load_source("less_eval", 100, 0, opts) == every
    some = load_source("less_eval", 2, 7, opts)
    keep = sorted(random.Random(7).sample(range(6), 2))
    assert some == [every[i] for i in keep]


def test_gsm_is_the_reference_seed_42_sample(less_dir):
    items = load_source("less_eval", 2, 0, {"path": str(less_dir), "task": "gsm"})
    rows = [json.loads(x) for x in (less_dir / "eval" / "gsm" / "test.jsonl").read_text().splitlines()]
    random.seed(42)
    expected = random.sample(rows, 2)
    assert [i["instruction"] for i in items] == [
        f"Answer the following question.\n\nQuestion: {r['question']}\n" for r in expected
    ]
    assert [i["output"] for i in items] == ["Answer:" + r["answer"] for r in expected]
    assert len(load_source("less_eval", None, 0, {"path": str(less_dir), "task": "gsm"})) == 3


def test_humaneval_uses_humanevalpack_instructions(tmp_path):
    base = tmp_path / "eval" / "codex-humaneval"
    base.mkdir(parents=True)
    probs = [
        {"task_id": f"HumanEval/{i}", "prompt": f"def f{i}():\n", "canonical_solution": f"    return {i}\n"}
        for i in range(3)
    ]
    with gzip.open(base / "HumanEval.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(p) + "\n" for p in probs)
    pack = [{"task_id": f"Python/{i}", "instruction": f"Write f{i}."} for i in range(3)]
    (base / "humanevalpack.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pack))
    items = load_source("less_eval", None, 0, {"path": str(tmp_path), "task": "humaneval"})
    random.seed(42)
    order = [p["task_id"] for p in random.sample(probs, 3)]
    assert [i["meta"]["task_id"] for i in items] == order
    first = int(order[0].split("/")[1])
    assert items[0]["instruction"] == f"Write f{first}."
    assert items[0]["output"] == f"Here is the function:\n\n```python\ndef f{first}():\n    return {first}\n\n```"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"task": "mmlu"}, "needs 'path'"),
        ({"path": "nowhere", "task": "mmlu"}, "is not a folder"),
        ({"path": ".", "task": "arc"}, "unknown task 'arc'"),
        ({"path": ".", "task": "humaneval"}, "HumanEval.jsonl.gz is not a file"),
        ({"path": ".", "task": "bbh"}, "bbh-three-shot.json is not a file"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, options, message):
    opts = {**options, "path": str(tmp_path / options["path"])} if "path" in options else options
    with pytest.raises(InputError, match=message) as e:
        load_source("less_eval", None, 0, opts)
    assert "\n" not in str(e.value)


def test_a_subtask_without_examples_or_a_missing_dev_file_fails(less_dir):
    (less_dir / "eval" / "mmlu" / "dev" / "anatomy_dev.csv").write_text("")
    with pytest.raises(InputError, match="mmlu subject 'anatomy' has no examples"):
        load_source("less_eval", None, 0, {"path": str(less_dir), "task": "mmlu"})
    (less_dir / "eval" / "mmlu" / "dev" / "anatomy_dev.csv").unlink()
    with pytest.raises(InputError, match="anatomy_dev.csv is not a file"):
        load_source("less_eval", None, 0, {"path": str(less_dir), "task": "mmlu"})
    path = less_dir / "eval" / "tydiqa" / "tydiqa-one-shot.json"
    path.write_text(json.dumps({"english": []}))
    with pytest.raises(InputError, match="tydiqa language 'english' has no examples"):
        load_source("less_eval", None, 0, {"path": str(less_dir), "task": "tydiqa"})
