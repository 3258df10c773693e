"""The ``tydiqa_goldp`` lm-eval task against run_eval.py's prompt and SQuAD v1.1 scores worked by hand.

A tiny SQuAD-format folder (2 languages, 2 dev questions each, 3 train questions each) is loaded
through lm-eval's TaskManager with a per-run YAML that includes the packaged task by absolute path.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from gs.io import InputError
from gs.lm_eval_tasks import tydiqa_utils as tu

TASKS = Path(__file__).resolve().parents[2] / "gs" / "lm_eval_tasks"
DEV = [
    ("english-1-1", "Paris is in France.", "Where is Paris?", ["France", "in France"]),
    ("finnish-2-1", "Oulu on kaupunki.", "Mikä Oulu on?", ["kaupunki"]),
    ("english-3-1", "Rome is in Italy.", "Where is Rome?", ["Italy"]),
    ("finnish-4-1", "Turku on kaupunki.", "Mikä Turku on?", ["kaupunki"]),
]
TRAIN = [
    ("english-10-1", "Berlin is in Germany.", "Where is Berlin?", ["Germany"]),
    ("finnish-11-1", "Espoo on kaupunki.", "Mikä Espoo on?", ["kaupunki"]),
    ("english-12-1", "Oslo is in Norway.", "Where is Oslo?", ["Norway"]),
    ("english-13-1", "Bern is in Switzerland.", "Where is Bern?", ["Switzerland"]),
    ("finnish-14-1", "Vantaa on kaupunki.", "Mikä Vantaa on?", ["Vantaa on kaupunki"]),
    ("finnish-15-1", "Lahti on kaupunki.", "Mikä Lahti on?", ["Lahti"]),
]


def _squad(rows):
    paragraphs = [
        {"context": c, "qas": [{"id": i, "question": q, "answers": [{"text": a, "answer_start": 0} for a in ans]}]}
        for i, c, q, ans in rows
    ]
    return {"version": "v1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}


@pytest.fixture
def tydiqa_dir(tmp_path: Path) -> Path:
    data = tmp_path / "tydiqa"
    data.mkdir()
    (data / tu.DEV_FILE).write_text(json.dumps(_squad(DEV)))
    (data / tu.TRAIN_FILE).write_text(json.dumps(_squad(TRAIN)))
    return data


def _reference_shots() -> dict[str, tuple]:
    """run_eval.py's draw: random.seed(42), then per sorted language random.sample(train of lang, 1)."""
    random.seed(42)
    return {lang: random.sample([r for r in TRAIN if r[0].startswith(lang)], 1)[0] for lang in ["english", "finnish"]}


def _task(tydiqa_dir: Path, tmp_path: Path):
    from lm_eval.tasks import TaskManager

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    cfg = {
        "include": str(TASKS / "tydiqa_goldp.yaml"),
        "task": "tydiqa_goldp_local",
        "dataset_kwargs": {"data_dir": str(tydiqa_dir)},
    }
    (tasks / "tydiqa_goldp_local.yaml").write_text(yaml.safe_dump(cfg))
    manager = TaskManager(include_path=str(tasks), include_defaults=False)
    return manager.load("tydiqa_goldp_local")["tasks"]["tydiqa_goldp_local"]


def test_the_prompt_is_run_eval_one_shot_user_turn(tydiqa_dir, tmp_path):
    task = _task(tydiqa_dir, tmp_path)
    docs = list(task.test_docs())
    assert [d["id"] for d in docs] == [r[0] for r in DEV]
    shots = _reference_shots()
    _, c, q, a = shots["finnish"]
    assert task.fewshot_context(docs[1], 0) == (
        "Vastaa seuraavaan kysymykseen annetun kappaleen tiedon perusteella.\n\n"
        f"Kappale: {c}\nKysymys: {q}\nVastaus: {a[0]}\n\n"
        "Kappale: Oulu on kaupunki.\nKysymys: Mikä Oulu on?\nVastaus:"
    )
    _, c, q, a = shots["english"]
    assert task.fewshot_context(docs[0], 0) == (
        "Answer the following question based on the information in the given passage.\n\n"
        f"Passage: {c}\nQuestion: {q}\nAnswer: {a[0]}\n\n"
        "Passage: Paris is in France.\nQuestion: Where is Paris?\nAnswer:"
    )
    assert task.doc_to_target(docs[0]) == "France"


def test_scores_through_lm_eval_are_means_over_languages(tydiqa_dir, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.api.model import LM

    class Canned(LM):
        def generate_until(self, requests, disable_tqdm=False):
            answers = {"Paris": " The France.\n", "Oulu": "kaupunki, Oulu", "Rome": "Rome", "Turku": "kaupunki"}
            last = [r.args[0].rsplit("\n\n", 1)[-1] for r in requests]
            return [next(v for k, v in answers.items() if k in text) for text in last]

        def loglikelihood(self, requests):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError

    task = _task(tydiqa_dir, tmp_path)
    out = simple_evaluate(model=Canned(), tasks=[task], log_samples=False, bootstrap_iters=0)
    scores = out["results"]["tydiqa_goldp_local"]
    # english: 1.0 ("the" dropped, punctuation dropped) and 0.0; finnish: F1 2/3 (precision 1/2, recall 1) and 1.0.
    assert scores["f1,none"] == pytest.approx(((1.0 + 0.0) / 2 + (2 / 3 + 1.0) / 2) / 2)
    assert scores["exact_match,none"] == pytest.approx(((1.0 + 0.0) / 2 + (0.0 + 1.0) / 2) / 2)


def test_f1_and_exact_match_by_hand():
    # Partial overlap: prediction "big red house" vs gold "red house now": 2 shared of 3 and 3.
    assert tu.f1_score("big red house", "red house now") == pytest.approx(2 / 3)
    # Articles, punctuation and case are dropped before comparing.
    assert tu.exact_match_score("The Eiffel-Tower!", "eiffeltower") == 1.0
    assert tu.f1_score("an apple, a pear", "Apple pear") == 1.0
    # Repeated tokens count by multiplicity: "a b b" vs "b": 1 shared, precision 1/2 ("a" is an article).
    assert tu.f1_score("a b b", "b") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert tu.f1_score("nothing", "else") == 0.0
    # The best over several gold answers.
    assert tu.max_over_answers(tu.f1_score, "in France", ["Paris", "France", "in France"]) == 1.0
    assert tu.max_over_answers(tu.f1_score, "south of France", ["France", "Paris"]) == pytest.approx(0.5)


def test_mean_over_languages_is_not_weighted_by_size():
    items = [("english", 1.0), ("english", 1.0), ("english", 0.0), ("finnish", 0.0)]
    assert tu.mean_over_languages(items) == pytest.approx((2 / 3 + 0.0) / 2)


def test_a_hub_layout_copy_gives_the_same_documents(tydiqa_dir, tmp_path):
    hub = tmp_path / "hub"
    hub.mkdir()
    for split, rows in (("validation", DEV), ("train", TRAIN)):
        flat = [
            {"id": i, "title": "t", "context": c, "question": q, "answers": {"text": a, "answer_start": [0] * len(a)}}
            for i, c, q, a in rows
        ]
        (hub / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in flat))
    local = tu.load_tydiqa_goldp(data_dir=str(tydiqa_dir))["test"]
    from_hub = tu.load_tydiqa_goldp(hub=str(hub), hub_name=None)["test"]
    assert list(from_hub) == list(local)


def test_missing_files_and_unknown_languages_are_one_line_errors(tydiqa_dir):
    with pytest.raises(InputError, match="needs data_dir"):
        tu.load_tydiqa_goldp()
    (tydiqa_dir / tu.TRAIN_FILE).unlink()
    with pytest.raises(InputError, match="tydiqa-goldp-v1.1-train.json is not a file"):
        tu.load_tydiqa_goldp(data_dir=str(tydiqa_dir))
    with pytest.raises(InputError, match="no template for languages"):
        tu.build_docs([{"id": "klingon-1", "lang": "klingon", "context": "", "question": "", "answers": ["x"]}], [])
