"""The hub data path (``gs.data.sources.hf``) on local datasets read through ``datasets.load_dataset``.

Each dataset is written with ``datasets`` in a hub repository's layout (:mod:`hf_fixtures`) and read
by the same ``load_dataset(path, name, split=...)`` call a hub id goes through. Expected values are
typed by hand from the rows below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hf_fixtures import HUB_COLUMNS, write_hub_dataset, write_rehearsal_datasets

from gs.data.prepare import build_domain
from gs.data.sources import clean_writingprompts, hf
from gs.io import InputError

ROOT = Path(__file__).resolve().parents[2]

# GSM8K-like rows: the answer column ends "#### <answer>", one answer with a thousands comma.
GSM_TRAIN = {
    "question": ["Q0: 2 + 2?", "Q1: 1000 + 234?", "Q2: 10 - 3?", "Q3: 6 x 7?"],
    "answer": ["2 + 2 = 4\n#### 4", "1000 + 234 = 1,234\n#### 1,234", "10 - 3 = 7\n#### 7", "6 x 7 = 42\n#### 42"],
}
GSM_TEST = {"question": ["T0: 5 + 5?"], "answer": ["5 + 5 = 10\n#### 10"]}
GSM_ANSWERS = {"Q0: 2 + 2?": "4", "Q1: 1000 + 234?": "1234", "Q2: 10 - 3?": "7", "Q3: 6 x 7?": "42"}
GSM_OPTIONS = {
    "name": "main",
    "split": "train",
    "templates": {"instruction": "{question}", "output": "{answer}"},
    "answer": {"column": "answer", "regex": "####\\s*(.+)$"},
}

# WritingPrompts-like rows: tags, tokenised text, "<newline>", several stories per prompt, and two
# prompts that differ only in their tag (one prompt once cleaned).
WP_ROWS = {
    "prompt": [
        "[ WP ] You 've found a door in your basement .",
        "[ WP ] You 've found a door in your basement .",
        "[ EU ] Harry Potter , but it 's set in space .",
        "[ WP ] [ TT ] The sun does n't rise .",
        "[ CW ] The sun does n't rise .",
    ],
    "story": [
        "It 's locked . <newline> <newline> `` Who 's there ? '' I ask .",
        "A second story about the door .",
        "The ship ( a wreck ) drifted ; nobody cared !",
        "Darkness , then silence .",
        "A story that repeats the prompt above .",
    ],
}
WP_EXPECTED = {
    "You've found a door in your basement.": "It's locked.\n\n\"Who's there?\" I ask.",
    "Harry Potter, but it's set in space.": "The ship (a wreck) drifted; nobody cared!",
    "The sun doesn't rise.": "Darkness, then silence.",
}
WP_OPTIONS = {
    "split": "train",
    "templates": {"instruction": "{prompt}", "output": "{story}"},
    "clean": "writingprompts",
}


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path, monkeypatch):
    """``datasets`` caches what it loads; keep each test's cache in its own folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


@pytest.fixture()
def gsm(tmp_path):
    return write_hub_dataset(tmp_path / "gsm8k", {"train": GSM_TRAIN, "test": GSM_TEST}, config="main")


@pytest.fixture()
def wp(tmp_path):
    return write_hub_dataset(tmp_path / "writingprompts", {"train": WP_ROWS})


def test_templates_answer_regex_and_meta_columns(gsm):
    items = hf(4, 0, {**GSM_OPTIONS, "path": str(gsm), "meta_columns": ["question"]})
    assert sorted(it["instruction"] for it in items) == sorted(GSM_TRAIN["question"])
    for it in items:
        row = GSM_TRAIN["question"].index(it["instruction"])
        assert it["input"] == ""
        assert it["output"] == GSM_TRAIN["answer"][row]
        assert it["meta"]["answer"] == GSM_ANSWERS[it["instruction"]]
        assert it["meta"]["question"] == it["instruction"]
        assert it["meta"]["source_row"] == row
    test = hf(1, 0, {**GSM_OPTIONS, "path": str(gsm), "split": "test"})
    assert [(t["instruction"], t["meta"]["answer"]) for t in test] == [("T0: 5 + 5?", "10")]


def test_splits_from_one_hub_split_are_disjoint(gsm):
    spec = {
        "train": {"source": "hf", "n": 2, "options": {**GSM_OPTIONS, "path": str(gsm)}},
        "validation": {"source": "hf", "n": 2, "options": {**GSM_OPTIONS, "path": str(gsm)}},
        "test": {"source": "hf", "n": 1, "options": {**GSM_OPTIONS, "path": str(gsm), "split": "test"}},
    }
    out = build_domain("math", spec, seed=3)
    train = {r["instruction"] for r in out["train"]}
    validation = {r["instruction"] for r in out["validation"]}
    assert len(train) == 2 and len(validation) == 2 and not train & validation
    assert train | validation == set(GSM_TRAIN["question"])
    assert [r["instruction"] for r in out["test"]] == ["T0: 5 + 5?"]
    assert out["reference"] == out["test"]


def test_writing_train_validation_and_reference_from_one_hub_split_are_disjoint(wp):
    opts = {**WP_OPTIONS, "path": str(wp)}
    spec = {
        "train": {"source": "hf", "n": 1, "options": opts},
        "validation": {"source": "hf", "n": 1, "options": opts},
        "test": {"source": "tot_writing", "n": 1},
        "reference": {"source": "hf", "n": 1, "options": opts},
    }
    out = build_domain("writing", spec, seed=0)
    drawn = {s: [(r["instruction"], r["output"]) for r in out[s]] for s in ("train", "validation", "reference")}
    assert sorted(sum(drawn.values(), [])) == sorted(WP_EXPECTED.items()), "three distinct prompts, one per split"
    assert out["reference"] != out["test"]


def test_repeated_prompts_are_dropped_before_n_and_markers_cleaned(wp):
    items = hf(3, 0, {**WP_OPTIONS, "path": str(wp)})
    assert {it["instruction"]: it["output"] for it in items} == WP_EXPECTED
    # The first story of a repeated prompt is kept: rows 0, 2 and 3.
    assert sorted(it["meta"]["source_row"] for it in items) == [0, 2, 3]
    assert hf(3, 0, {**WP_OPTIONS, "path": str(wp)}) == items
    # Without the cleaner, the tags keep the two "sun" prompts apart: 4 distinct prompts.
    raw = hf(4, 0, {**WP_OPTIONS, "path": str(wp), "clean": None})
    assert "[ WP ] You 've found a door in your basement ." in {it["instruction"] for it in raw}


def test_too_few_distinct_rows_fail_naming_the_dataset(wp):
    with pytest.raises(
        InputError, match=r"writingprompts' \(split 'train'\): 3 distinct \(instruction, input\) rows, 4"
    ):
        hf(4, 0, {**WP_OPTIONS, "path": str(wp)})


def test_the_cli_ends_in_one_error_line_and_writes_nothing(wp, tmp_path):
    opts = {**WP_OPTIONS, "path": str(wp)}
    spec = {
        "train": {"source": "hf", "n": 2, "options": opts},
        "validation": {"source": "hf", "n": 2, "options": opts},
        "test": {"source": "tot_writing", "n": 1},
        "reference": {"source": "hf", "n": 1, "options": opts},
    }
    out = tmp_path / "writing"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf-cache")}
    args = ["part", "--part", "writing", "--params", json.dumps(spec), "--seed", "0", "--out-dir", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "gs.data.prepare", *args], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [result.stderr.strip().splitlines()[-1]]
    assert "3 distinct (instruction, input) rows, 5 needed" in errors[0] and str(wp) in errors[0]
    assert not out.exists()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"templates": {"instruction": "{question}", "output": "{solution}"}}, "field 'output'.*no column 'solution'"),
        ({"meta_columns": ["difficulty"]}, "meta_columns names no column 'difficulty'"),
        ({"answer": {"column": "final", "regex": "(.+)"}}, "answer names no column 'final'"),
        ({"templates": {"instruction": "{question", "output": "{answer}"}}, "is not a format string"),
        ({"clean": "reddit"}, "unknown 'clean' 'reddit'"),
        ({"split": "validation"}, "cannot be loaded: Unknown split"),
        ({"name": "socratic"}, "cannot be loaded"),
    ],
)
def test_bad_options_fail_with_one_line_naming_the_dataset(gsm, change, expected):
    with pytest.raises(InputError, match=expected) as info:
        hf(2, 0, {**GSM_OPTIONS, "path": str(gsm), **change})
    assert "\n" not in str(info.value) and str(gsm) in str(info.value)


def test_clean_writingprompts_by_hand():
    assert clean_writingprompts("[ WP ] [ OT ] I ca n't , I wo n't .") == "I can't, I won't."
    assert clean_writingprompts("One . <newline> Two ! <newline> <newline> `` Three ? ''") == 'One.\nTwo!\n\n"Three?"'
    # Clean text passes unchanged: straight quotes, a leading decimal point, a bracket mid-text.
    clean = 'He said, "hi" (twice). It costs .5 dollars; [sic] ok?'
    assert clean_writingprompts(clean) == clean


def test_rehearsal_datasets_load_like_the_hub(tmp_path):
    from datasets import load_dataset

    folders = write_rehearsal_datasets(tmp_path / "hub", n=12, seed=0)
    assert set(folders) == set(HUB_COLUMNS)
    names = {"gsm8k": "main"}
    splits = {"gsm8k": ["train", "test"], "openai_humaneval": ["test"]}
    for key, folder in folders.items():
        for split in splits.get(key, ["train"]):
            ds = load_dataset(str(folder), names.get(key), split=split)
            assert ds.column_names == HUB_COLUMNS[key] and len(ds) > 0
    assert len(load_dataset(str(folders["openai_humaneval"]), split="test")) == 164
    stories = load_dataset(str(folders["writingprompts"]), split="train")
    assert all(p.startswith("[ WP ] ") for p in stories["prompt"])
    assert len(set(stories["prompt"])) < len(stories["prompt"]), "several stories per prompt"
    assert any(" <newline> " in s for s in stories["story"])


def test_a_local_folder_is_read_afresh_not_from_a_cache_of_its_name(tmp_path):
    """``datasets`` keys a local folder's cache by its name, config and file patterns: two folders both named
    gsm8k (or one folder edited) must each give their own rows, and nothing lands in the shared cache."""
    import datasets

    first = write_hub_dataset(tmp_path / "a" / "gsm8k", {"train": GSM_TRAIN, "test": GSM_TEST}, config="main")
    other_test = {"question": ["T9: 1 + 1?"], "answer": ["1 + 1 = 2\n#### 2"]}
    second = write_hub_dataset(tmp_path / "b" / "gsm8k", {"train": GSM_TRAIN, "test": other_test}, config="main")
    options = {**GSM_OPTIONS, "split": "test"}
    assert [t["instruction"] for t in hf(1, 0, {**options, "path": str(first)})] == ["T0: 5 + 5?"]
    assert [t["instruction"] for t in hf(1, 0, {**options, "path": str(second)})] == ["T9: 1 + 1?"]
    write_hub_dataset(first, {"train": GSM_TRAIN, "test": other_test}, config="main")  # the folder edited
    assert [t["instruction"] for t in hf(1, 0, {**options, "path": str(first)})] == ["T9: 1 + 1?"]
    cache = Path(datasets.config.HF_DATASETS_CACHE)
    assert not cache.exists() or not any(p.suffix == ".arrow" for p in cache.rglob("*"))
