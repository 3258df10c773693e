"""The multiple-choice lm-eval tasks (gs_<part>_choice) as lm-eval loads them, and the target hook."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gs.data.choices import build_choices
from gs.data.prompting import user_message
from gs.io import InputError, write_jsonl
from gs.lm_eval_tasks import utils as hooks

TASKS = Path(__file__).resolve().parents[2] / "gs" / "lm_eval_tasks"


def _math_records() -> list[dict]:
    return [
        {
            "id": f"math-reference-{i:05d}",
            "domain": "math",
            "instruction": f"Tom has {a - 1} apples and buys 1. How many apples does he have?",
            "input": "",
            "output": f"{a - 1} + 1 = {a}\n#### {a}",
            "meta": {"answer": str(a), "source": "gsm_symbolic"},
        }
        for i, a in enumerate([5, 7, 30, 400])
    ]


@pytest.fixture()
def choice_task(tmp_path, monkeypatch):
    """gs_math_choice as lm-eval loads it: a YAML that includes the packaged one, pointed at a local file."""
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    docs = build_choices(_math_records(), "gsm_symbolic", 3, seed=0)
    data = tmp_path / "choice.jsonl"
    write_jsonl(data, docs)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    cfg = {
        "include": str(TASKS / "gs_math_choice.yaml"),
        "dataset_kwargs": {"data_files": {"test": str(data)}},
    }
    (tasks / "gs_math_choice.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    task = TaskManager(include_path=str(tasks), include_defaults=False).load(["gs_math_choice"])["tasks"]
    return task["gs_math_choice"], docs


def test_choice_task_asks_for_each_choice_after_the_user_message(choice_task):
    task, docs = choice_task
    assert task.OUTPUT_TYPE == "multiple_choice"
    task.build_all_requests(limit=None, rank=0, world_size=1)
    first = [inst for inst in task.instances if inst.doc_id == 0]
    doc = docs[0]
    # By hand: the context is the user message, each continuation one choice with nothing before it.
    assert [inst.args for inst in first] == [(user_message(doc), c) for c in doc["meta"]["choices"]]
    assert sorted(doc["meta"]["choices"]) == ["The answer is 30.", "The answer is 5.", "The answer is 7."]
    assert doc["meta"]["choices"][doc["meta"]["gold"]] == "The answer is 5."
    assert len(task.instances) == 3 * len(docs)
    assert task.doc_to_target(doc) == doc["meta"]["gold"]


def test_choice_task_scores_acc_and_acc_norm(choice_task):
    task, docs = choice_task
    doc = docs[0]
    gold, choices = doc["meta"]["gold"], doc["meta"]["choices"]
    # The gold answer most probable in all and per character: acc and acc_norm 1.
    lls = [(-2.0 * len(c), False) if i == gold else (-1.5 * len(c) - 100, False) for i, c in enumerate(choices)]
    assert task.process_results(doc, lls) == {"acc": 1.0, "acc_norm": 1.0}
    # Then -2 per character for the gold, -1.5 for the others: acc_norm (per character, lm-eval divides by
    # the choice's length in characters) picks another choice.
    lls = [(-2.0 * len(c), False) if i == gold else (-1.5 * len(c), False) for i, c in enumerate(choices)]
    scores = task.process_results(doc, lls)
    # By hand: acc is 1 only if the gold's sum beats every other sum; acc_norm never (-2 < -1.5 per char).
    others = [-1.5 * len(c) for i, c in enumerate(choices) if i != gold]
    assert scores == {"acc": float(-2.0 * len(choices[gold]) > max(others)), "acc_norm": 0.0}


def test_choice_hooks_read_meta_and_refuse_records_without_choices():
    doc = {"id": "x", "meta": {"choices": ["a", "b"], "gold": 1}}
    assert hooks.doc_to_choice(doc) == ["a", "b"] and hooks.choice_gold(doc) == 1
    with pytest.raises(InputError, match="meta.choices must list at least two"):
        hooks.doc_to_choice({"id": "x", "meta": {}})
    with pytest.raises(InputError, match="meta.gold 2 is not an index"):
        hooks.choice_gold({"id": "x", "meta": {"choices": ["a", "b"], "gold": 2}})


def test_doc_to_target_branches_on_meta_keys_not_the_domain():
    tests = {"test": "def check(f):\n    assert f(1) == 2", "entry_point": "inc"}
    expected = "def check(f):\n    assert f(1) == 2\ncheck(inc)"
    for domain in ("code", "anything"):
        assert hooks.doc_to_target({"domain": domain, "output": "o", "meta": tests}) == expected
        assert hooks.doc_to_target({"domain": domain, "meta": {"end_sentences": ["A.", "B."]}}) == "A.\nB."
        assert hooks.doc_to_target({"domain": domain, "output": "o", "meta": {"answer": 4}}) == "4"
        assert hooks.doc_to_target({"domain": domain, "output": "o", "meta": {}}) == "o"
