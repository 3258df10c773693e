"""The study on a user's own pool and an lm-eval task: config/own_data.yaml end to end.

Two parts named by the user (one file of instruction/output rows, one of open-instruct ``messages``
rows) and lm-eval's own multiple-choice task ``sciq`` read from a local copy of its dataset. The base
system's score through gs-routed must equal lm-eval's own ``hf`` model on the same task and data with
``apply_chat_template`` (the prompt format gs-routed uses): the same accuracy, and example by example the same
choice differences.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.workflow_tools import fresh_copy, run_snakemake

LEGAL = [
    ("Define consideration in contract law.", "Consideration is something of value exchanged by each party."),
    ("What is a tort?", "A tort is a civil wrong that causes harm and gives a claim for damages."),
    ("Explain the statute of limitations.", "It is the time limit within which a legal claim must be filed."),
    ("What does habeas corpus protect?", "It protects against unlawful detention by requiring a court review."),
    ("What is a plaintiff?", "The plaintiff is the party who brings a case against another in court."),
    ("Define precedent.", "A precedent is an earlier court decision that guides later similar cases."),
    ("What is an affidavit?", "An affidavit is a written statement confirmed by oath for use as evidence."),
    ("What is negligence?", "Negligence is a failure to take the care a reasonable person would take."),
]
MEDICAL = [
    ("What does the heart do?", "It pumps blood through the body."),
    ("What is a fever?", "A body temperature above the normal range, often a sign of infection."),
    ("What are antibiotics for?", "They treat bacterial infections; they do not work against viruses."),
    ("What is blood pressure?", "The force of circulating blood on the walls of the arteries."),
    ("Why is sleep important?", "Sleep lets the body and brain recover and consolidate memory."),
    ("What is a vaccine?", "A preparation that trains the immune system to recognise a pathogen."),
    ("What does insulin do?", "Insulin lets cells take up glucose from the blood."),
    ("What is an allergy?", "An immune reaction to a substance that is usually harmless."),
]
SCIQ = [
    ("What gas do plants absorb for photosynthesis?", "carbon dioxide", ["oxygen", "nitrogen", "helium"]),
    ("What is the center of an atom called?", "nucleus", ["electron", "shell", "orbit"]),
    ("What force keeps planets in orbit around the sun?", "gravity", ["magnetism", "friction", "tension"]),
    ("What is the boiling point of water at sea level in celsius?", "100", ["50", "0", "212"]),
    ("Which organ produces bile?", "liver", ["kidney", "heart", "lung"]),
    ("What is H2O commonly called?", "water", ["salt", "sugar", "air"]),
]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _sciq_row(question: str, answer: str, wrong: list[str]) -> dict:
    return {
        "question": question,
        "distractor1": wrong[0],
        "distractor2": wrong[1],
        "distractor3": wrong[2],
        "correct_answer": answer,
        "support": "",
    }


def write_own_data(work: Path) -> None:
    """The files config/own_data.yaml names, written as a user would: the parts, the target's validation
    examples, and sciq's data in its hub layout (one JSONL file per split)."""
    own = work / "data" / "own"
    _write_jsonl(own / "legal.jsonl", [{"instruction": q, "input": "", "output": a} for q, a in LEGAL])
    medical = []
    for i, (q, a) in enumerate(MEDICAL):
        turns = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if i % 2:  # every other row a two-exchange conversation: the loss is on both answers
            turns += [{"role": "user", "content": "Say it in five words."}, {"role": "assistant", "content": a[:30]}]
        medical.append({"dataset": "medical", "id": f"med_{i}", "messages": turns})
    _write_jsonl(own / "medical.jsonl", medical)
    _write_jsonl(
        own / "sciq_validation.jsonl",
        [{"instruction": f"Question: {q}\nAnswer:", "input": "", "output": a} for q, a, _ in SCIQ[:4]],
    )
    for split, rows in (("train", SCIQ[:2]), ("validation", SCIQ[2:4]), ("test", SCIQ)):
        _write_jsonl(own / "sciq" / f"{split}.jsonl", [_sciq_row(*r) for r in rows])


def _lm_eval_hf(work: Path, model_dir: Path, tmp_path: Path) -> dict:
    """lm-eval's own ``hf`` model on sciq over the same local data, with the model's chat template."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM  # by its module: the registry fills lazily on import
    from lm_eval.tasks import TaskManager

    index = TaskManager()._index
    tasks = tmp_path / "hf_tasks"
    tasks.mkdir()
    override = {"include": str(index["sciq"].yaml_path), "task": "sciq", "dataset_path": str(work / "data/own/sciq")}
    (tasks / "sciq.yaml").write_text(yaml.safe_dump(override), encoding="utf-8")
    return lm_eval.simple_evaluate(
        model=HFLM(pretrained=str(model_dir), dtype="float32", device="cpu", batch_size=1),
        tasks=["sciq"],
        task_manager=TaskManager(include_path=str(tasks)),
        apply_chat_template=True,
        log_samples=True,
    )


@pytest.mark.slow
def test_own_parts_and_an_lm_eval_task_end_to_end(tmp_path, monkeypatch):
    work = fresh_copy(tmp_path / "wf")
    write_own_data(work)
    result = run_snakemake("--cores", "2", "--configfile", "config/own_data.yaml", cwd=work, timeout=3000)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    res = work / "results"
    summary = pd.read_csv(res / "data" / "summary.csv")
    assert sorted(set(summary["domain"])) == ["legal", "medical"]
    pool = [json.loads(line) for line in (res / "data" / "pool" / "train.jsonl").read_text().splitlines()]
    assert sorted({r["domain"] for r in pool}) == ["legal", "medical"] and len(pool) == 16
    assert sum("messages" in r for r in pool) == 8
    oracle = pd.read_csv(res / "clusters" / "oracle" / "assignments.csv")
    assert oracle["cluster"].nunique() == 2  # the hidden labels are the two parts
    main = pd.read_csv(res / "tables" / "main.csv").set_index("system")
    assert {"base", "multitask", "gradientspace-single"} <= set(main.index)
    assert "sciq" in main.columns and main["sciq"].between(0, 1).all()
    clusterucb = pd.read_csv(res / "tables" / "clusterucb.csv")
    assert set(clusterucb["target"]) == {"sciq"} and set(clusterucb["task"].dropna()) == {"sciq"}

    # The base system equals lm-eval's own hf model on the same task, data and prompt format.
    base = json.loads((res / "eval" / "base.json").read_text())
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reference = _lm_eval_hf(work, work / "resources" / "models" / "smollm2-135m-instruct", tmp_path)
    assert base["primary"]["sciq"]["metric"] == "acc"
    assert base["primary"]["sciq"]["value"] == pytest.approx(reference["results"]["sciq"]["acc,none"], abs=1e-4)
    ours = {s["doc_id"]: s["choice_loglikelihoods"] for s in base["tasks"]["sciq"]["samples"]}
    theirs = {s["doc_id"]: [r[0] for r in s["filtered_resps"]] for s in reference["samples"]["sciq"]}
    assert sorted(ours) == sorted(theirs) == list(range(len(SCIQ)))
    for doc_id, lls in theirs.items():
        assert all(math.isfinite(x) for x in lls)
        # Each choice's log-likelihood to 1e-3 (measured: 1.7e-4 to 4.9e-4, one offset per document: gs-routed
        # scores the prompt once and the answers after it, lm-eval's hf model each whole sequence), and the
        # differences between a document's choices, which decide acc, to 1e-4 (measured: under 4e-5).
        assert ours[doc_id] == pytest.approx(lls, abs=1e-3), doc_id
        gaps = [a - ours[doc_id][0] for a in ours[doc_id]]
        assert gaps == pytest.approx([b - lls[0] for b in lls], abs=1e-4), doc_id
