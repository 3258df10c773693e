"""Data stage: sources, splits, validation errors, determinism, disjointness, config schema."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gs.data.prepare import DOMAIN_FILES, SPLITS, build_domain, load_records, pool_splits, write_domain
from gs.io import InputError

ROOT = Path(__file__).resolve().parents[2]
SMALL = {
    "math": {
        "train": {"source": "gsm_symbolic", "n": 6},
        "validation": {"source": "gsm_symbolic", "n": 2},
        "test": {"source": "gsm_symbolic", "n": 2},
    },
    "code": {
        "train": {"source": "codeio", "n": 6},
        "validation": {"source": "codeio", "n": 2},
        "test": {"source": "humaneval", "n": 2},
    },
    "finance": {
        "train": {"source": "finance", "n": 6},
        "validation": {"source": "finance", "n": 2},
        "test": {"source": "finance", "n": 2},
    },
    "writing": {
        "train": {"source": "verne_passages", "n": 6},
        "validation": {"source": "verne_passages", "n": 2},
        "test": {"source": "tot_writing", "n": 2},
        "reference": {"source": "verne_passages", "n": 2},
    },
}


def _run_data_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gs.data.prepare", *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("domain", list(SMALL))
def test_splits_are_disjoint_deterministic_and_well_formed(domain):
    a = build_domain(domain, SMALL[domain], seed=7)
    b = build_domain(domain, SMALL[domain], seed=7)
    assert a == b
    c = build_domain(domain, SMALL[domain], seed=8)
    assert [(r["instruction"], r["input"]) for r in c["train"]] != [(r["instruction"], r["input"]) for r in a["train"]]
    keys = [{(r["instruction"], r["input"]) for r in a[s]} for s in SPLITS]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    # Reference answers for the likelihood tasks: the test split, or (writing) held-out passages.
    assert all(r["output"].strip() for r in a["reference"])
    if domain == "writing":
        ref = {(r["instruction"], r["input"]) for r in a["reference"]}
        assert not (ref & keys[0]) and not (ref & keys[1]) and len(a["reference"]) == 2
    else:
        assert a["reference"] == a["test"]
    for split in [s for s in DOMAIN_FILES if s in SMALL[domain]]:
        assert len(a[split]) == SMALL[domain][split]["n"]
        for r in a[split]:
            assert r["domain"] == domain and r["id"].startswith(f"{domain}-{split}-")
            assert r["instruction"].strip()
    # What the metrics need travels with the test split.
    meta_key = {"math": "answer", "finance": "answer", "code": "test", "writing": "end_sentences"}[domain]
    assert all(meta_key in r["meta"] for r in a["test"])


def _numbers(text: str) -> list[float]:
    """The numbers of a question in order ("$1,250.00" -> 1250.0, "7.5%" -> 7.5)."""
    return [float(x.replace(",", "")) for x in re.findall(r"\d[\d,]*(?:\.\d+)?", text)]


def _finance_answer(template: str, question: str) -> float:
    """Each template's answer recomputed from the numbers in its question with the textbook formula."""
    x = _numbers(question)
    if template == "simple_interest":  # P r t / 100
        return x[0] * x[1] * x[2] / 100
    if template == "compound_interest":  # P (1 + r/n)^(n t)
        n = {"annually": 1, "quarterly": 4, "monthly": 12}[re.search(r"compounded (\w+)", question).group(1)]
        return x[0] * (1 + x[1] / 100 / n) ** (n * x[2])
    if template == "loan_payment":  # P i / (1 - (1 + i)^-n), i monthly, n months; numbers: P, years, rate
        p, years, rate = x
        i, n = rate / 1200, years * 12
        return p * i / (1 - (1 + i) ** -n)
    if template == "annuity_future_value":  # d ((1 + i)^n - 1) / i; numbers: d, rate, years
        d, rate, years = x
        i, n = rate / 1200, years * 12
        return d * ((1 + i) ** n - 1) / i
    if template == "profit_percent":  # (sell - cost) / cost x 100
        cost, sell = x
        return (sell - cost) / cost * 100
    if template == "price_change":  # price (1 + up) (1 - down)
        price, up, down = x
        return price * (1 + up / 100) * (1 - down / 100)
    if template == "discount":  # price (1 - discount) (1 + tax)
        price, off, tax = x
        return price * (1 - off / 100) * (1 + tax / 100)
    if template == "break_even":  # ceil(fixed / (price - variable))
        fixed, variable, price = x
        return math.ceil(fixed / (price - variable))
    if template == "dividend_yield":  # 4 q / price x 100
        price, quarterly = x
        return 4 * quarterly / price * 100
    raise AssertionError(f"no formula for template {template!r}")


FINANCE_TEMPLATES = {
    "simple_interest",
    "compound_interest",
    "loan_payment",
    "annuity_future_value",
    "profit_percent",
    "price_change",
    "discount",
    "break_even",
    "dividend_yield",
}


def test_finance_answers_are_computed_not_typed():
    from gs.data.finance import generate

    items = generate(200, seed=3)
    assert {p["template"] for p in items} == FINANCE_TEMPLATES, "every template appears"
    for p in items:
        expected = _finance_answer(p["template"], p["question"])
        assert float(p["answer"]) == pytest.approx(expected, abs=0.0051), (p["template"], p["question"])
        assert p["solution"].endswith(f"#### {p['answer']}")


def _write(tmp_path: Path, rows: list, name: str = "rows.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"instruction": "Add 1 and 2.", "input": "", "output": "3"}


@pytest.mark.parametrize(
    ("bad_row", "expected"),
    [
        ('{"instruction": "x", "input": ""', "not valid JSON"),
        ({"instruction": "x", "input": ""}, "field 'output' missing"),
        ({"instruction": "x", "input": 3, "output": "y"}, "field 'input' must be a string"),
        ({"instruction": " ", "input": "", "output": "y"}, "field 'instruction' is empty"),
        ({**GOOD, "domain": 3}, "field 'domain' must be a string"),
    ],
)
def test_malformed_row_fails_with_one_line_naming_file_row_and_field(tmp_path, bad_row, expected):
    good = [{**GOOD, "instruction": f"Add {i} and 2."} for i in range(3)]
    src = _write(tmp_path, [good[0], bad_row, good[1], good[2]])
    spec = {s: {"source": "jsonl", "n": 1, "options": {"path": str(src), "shuffle": False}} for s in SPLITS}
    out = tmp_path / "out"
    result = _run_data_cli("part", "--part", "math", "--params", json.dumps(spec), "--seed", "0", "--out-dir", str(out))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert expected in lines[0]
    assert f"{src}:2" in lines[0]
    assert not out.exists(), "no partial output may be left behind"


def test_unknown_domain_source_and_empty_split(tmp_path):
    with pytest.raises(InputError, match="part name 'po etry': use letters"):
        build_domain("po etry", SMALL["math"], seed=0)
    with pytest.raises(InputError, match="part name 'pool'"):
        build_domain("pool", SMALL["math"], seed=0)
    with pytest.raises(InputError, match="split 'train' missing"):
        build_domain("math", {k: v for k, v in SMALL["math"].items() if k != "train"}, seed=0)
    bad_source = {**SMALL["math"], "test": {"source": "mbpp", "n": 2}}
    with pytest.raises(InputError, match="unknown data source 'mbpp'"):
        build_domain("math", bad_source, seed=0)
    empty = _write(tmp_path, [], "empty.jsonl")
    with pytest.raises(InputError, match="empty split"):
        load_records(empty)
    too_few = {s: {"source": "jsonl", "n": 2, "options": {"path": str(_write(tmp_path, [GOOD]))}} for s in SPLITS}
    with pytest.raises(InputError, match=r"1 distinct \(instruction, input\) rows, 6 needed"):
        build_domain("math", too_few, seed=0)


def test_reference_split_is_needed_when_the_test_split_has_no_outputs(tmp_path):
    spec = {k: v for k, v in SMALL["writing"].items() if k != "reference"}
    with pytest.raises(InputError, match="no output to score the likelihood of; give the domain a 'reference' split"):
        build_domain("writing", spec, seed=0)
    # Any other split name is a split of its own, carved disjointly after the usual ones.
    extra = build_domain("math", {**SMALL["math"], "heldout": {"source": "gsm_symbolic", "n": 1}}, seed=0)
    assert len(extra["heldout"]) == 1
    seen = {(r["instruction"], r["input"]) for split, rows in extra.items() if split != "heldout" for r in rows}
    assert (extra["heldout"][0]["instruction"], extra["heldout"][0]["input"]) not in seen
    write_domain(build_domain("writing", SMALL["writing"], seed=0), tmp_path / "writing")
    assert sorted(p.stem for p in (tmp_path / "writing").iterdir()) == sorted(DOMAIN_FILES)
    # A part with only a train split (a ClusterUCB pool file) writes only that.
    only_train = build_domain("mine", {"train": SMALL["math"]["train"]}, seed=0)
    assert list(only_train) == ["train"]


def test_pool_mixes_domains_and_keeps_labels(tmp_path):
    dirs = []
    for domain in ("math", "finance"):
        d = tmp_path / domain
        write_domain(build_domain(domain, SMALL[domain], seed=1), d)
        dirs.append(d)
    pooled = pool_splits(dirs, "train", seed=1)
    assert len(pooled) == 12
    assert {r["domain"] for r in pooled} == {"math", "finance"}
    assert pooled == pool_splits(dirs, "train", seed=1)
    assert len({r["domain"] for r in pooled[:6]}) > 1, "the pool is shuffled, not concatenated"


def _validate(cfg: dict) -> None:
    from snakemake.utils import validate

    validate(cfg, str(ROOT / "config" / "schema.yaml"))


def test_schema_accepts_shipped_configs():
    for name in ("config.yaml", "paper.yaml", "test.yaml"):
        path = ROOT / "config" / name
        assert path.is_file(), f"config/{name} is missing"
        _validate(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c["model"].update(source="ollama"),
        lambda c: c["model"].pop("gguf_file"),
        lambda c: c["data"]["parts"].update({"bad name": c["data"]["parts"]["math"]}),
        lambda c: c["data"]["parts"].update(pool=c["data"]["parts"]["math"]),
        lambda c: c["data"]["parts"]["math"]["train"].update(n=0),
        lambda c: c["data"]["parts"]["math"]["train"].update(source="mbpp"),
        lambda c: c["data"]["parts"]["math"].pop("train"),
        lambda c: c["targets"]["math"].pop("tasks"),
        lambda c: c.pop("seed"),
    ],
)
def test_schema_rejects_bad_config(mutate):
    from snakemake.exceptions import WorkflowError

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    mutate(cfg)
    with pytest.raises(WorkflowError):
        _validate(cfg)


def test_source_imports_name_what_a_source_imports_when_it_runs():
    """The planner's prepare_domain baseline: the modules each source pulls in, checked in a fresh
    interpreter that runs the source and lists what it newly imported."""
    import subprocess
    import sys

    from gs.data.sources import source_imports

    for kind, options in (("gsm_symbolic", {}), ("finance", {}), ("codeio", {}), ("verne_passages", {})):
        code = (
            "import sys, gs.data.prepare; before = set(sys.modules)\n"
            f"gs.data.sources.load_source({kind!r}, 2, 0, {options!r})\n"
            "print(' '.join(sorted(m for m in set(sys.modules) - before if '.' not in m or m.startswith('gs.'))))"
        )
        new = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
        for module in source_imports(kind, options):
            assert module in new, (kind, module, new)
        if not source_imports(kind, options):
            assert "reasoning_gym" not in new and "datasets" not in new, (kind, new)


def test_target_validation_keeps_subtasks_and_names_a_missing_one(tmp_path):
    from gs.data.prepare import build_target_validation

    rows = [
        {"instruction": f"q{i}", "input": "", "output": f"a{i}", "meta": {"subtask": s}}
        for i, s in enumerate(["algebra", "algebra", "anatomy", "law"])
    ]
    path = _write(tmp_path, rows, "val.jsonl")
    spec = {"source": "jsonl", "options": {"path": str(path), "shuffle": False}}
    records = build_target_validation("mmlu", spec, seed=0)
    assert [r["meta"]["subtask"] for r in records] == ["algebra", "algebra", "anatomy", "law"]
    assert [r["domain"] for r in records] == ["mmlu"] * 4
    kept = build_target_validation("mmlu", {**spec, "subtasks": ["law", "anatomy"]}, seed=0)
    assert [r["instruction"] for r in kept] == ["q2", "q3"]
    with pytest.raises(InputError, match="subtask 'physics' named in the config has no validation examples") as info:
        build_target_validation("mmlu", {**spec, "subtasks": ["law", "physics"]}, seed=0)
    assert "\n" not in str(info.value)
    bad = _write(tmp_path, [{**rows[0], "meta": {"subtask": 3}}], "bad.jsonl")
    with pytest.raises(InputError, match="meta.subtask must be a string"):
        build_target_validation("mmlu", {"source": "jsonl", "options": {"path": str(bad)}}, seed=0)
