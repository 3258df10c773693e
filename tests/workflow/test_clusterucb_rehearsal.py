"""ClusterUCB's reference experiment: config/clusterucb_paper.yaml's DAG (dry run) and its CPU rehearsal,
config/clusterucb_rehearsal.yaml, through the whole DAG on local data (tests/clusterucb_assets.py).

What the rehearsal runs (its config's header): eight open-instruct ``messages`` pool files, five targets
whose validation examples the ``less_eval`` source reads from a local less_data tree (several subtasks per
target, so influence takes the max over them), lm-eval's own MMLU, BBH CoT, GSM8K CoT and HumanEval tasks
on local hub-layout copies and the suite's TyDi QA GoldP on a local folder. The checks read each stage's
own outputs and compare the tables with them.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from workflow_tools import ROOT, fresh_copy, run_snakemake

sys.path.insert(0, str(ROOT / "tests"))

import clusterucb_assets as assets  # noqa: E402

PARTS = ["flan_v2", "cot", "dolly", "oasst1", "code_alpaca", "gpt4_alpaca", "sharegpt", "gsm_train"]
TARGETS = ["mmlu", "bbh", "tydiqa", "gsm", "humaneval"]
SELECTORS = ["clusterucb", "full", "random"]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _tasks(config: dict, target: str | None = None) -> list[str]:
    """The configured tasks (of one target, or of all in the config's order: the tables' column order)."""
    names = [target] if target else list(config["targets"])
    return [t["task"] for name in names for t in config["targets"][name]["tasks"]]


def test_the_paper_config_plans_eight_parts_and_five_targets_per_selector():
    """config/clusterucb_paper.yaml's DAG: one data job per pool file, one validation job per target, and per
    selector one fine-tuned system per target (select-<target>-<selector>), scored on its own target."""
    result = run_snakemake(
        "-n", "--forceall", "--nolock", "--cores", "2", "--configfile", "config/clusterucb_paper.yaml"
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    out = result.stdout + result.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, re.M))
    assert counts["prepare_part"] == "8" and counts["prepare_target"] == "5"
    parts = re.findall(r"^\s+wildcards: part=(\w+)$", out, re.M)
    assert sorted(parts) == sorted(PARTS)
    systems = re.findall(r"^\s+wildcards: system=(\S+)$", out, re.M)
    for selector in SELECTORS:
        assert sorted(s for s in systems if s.startswith("select-") and s.endswith(f"-{selector}")) == sorted(
            f"select-{t}-{selector}" for t in TARGETS
        ), selector
    assert counts["finetune_selected"] == str(len(TARGETS) * len(SELECTORS))
    assert counts["select_data"] == str(len(TARGETS))


def test_oracle_routing_is_refused_for_benchmarks_that_are_not_parts(tmp_path):
    """The oracle inference mode routes a test record by its part; lm-eval's own tasks have none: the
    workflow stops at parse time with one line naming the tasks, before any job runs."""
    config = yaml.safe_load((ROOT / "config" / "clusterucb_rehearsal.yaml").read_text())
    config["studies"] = ["gradientspace", "clusterucb"]  # routed systems exist only in GradientSpace's study
    config["evaluation"]["modes"] = {"gradientspace": ["single", "oracle"]}
    path = tmp_path / "oracle.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run_snakemake("-n", "--nolock", "--cores", "1", "--configfile", str(path))
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "evaluation.modes: oracle routing (gradientspace) needs each prompt's part" in out
    assert "drop oracle from the modes" in out


def _check_data(res: Path, work: Path, config: dict) -> None:
    """The pool: the eight parts, each file's rows in file order with their conversations; the targets'
    validation files with their subtasks."""
    summary = pd.read_csv(res / "data" / "summary.csv")
    assert sorted(set(summary["domain"])) == sorted(PARTS)
    pool = _jsonl(res / "data" / "pool" / "train.jsonl")
    assert len(pool) == assets.ROWS * len(PARTS)
    for part in PARTS:
        records = _jsonl(res / "data" / part / "train.jsonl")
        rows = assets.pool_rows(part)
        assert [r["messages"] for r in records] == [r["messages"] for r in rows], part  # shuffle false: file order
        for rec, row in zip(records, rows, strict=True):
            users = [m["content"] for m in row["messages"] if m["role"] == "user"]
            answers = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
            assert (rec["domain"], rec["instruction"], rec["input"], rec["output"]) == (
                part,
                users[0],
                "",
                answers[-1],
            )
    assert any(sum(m["role"] == "user" for m in r["messages"]) > 1 for r in pool)  # multi-turn rows ran
    expected = {
        "mmlu": {s: 5 for s in assets.MMLU_SUBJECTS},
        "bbh": {t: 3 for t in assets.BBH_TASKS},
        "tydiqa": {lang: 1 for lang in assets.TYDIQA_LANGUAGES},
        "gsm": {"gsm": 6},
        "humaneval": {"humaneval": assets.HUMANEVAL_PROBLEMS},
    }
    for target in TARGETS:
        records = _jsonl(res / "data" / "targets" / target / "validation.jsonl")
        subtasks = pd.Series([r["meta"]["subtask"] for r in records]).value_counts().to_dict()
        assert subtasks == expected[target], target
        assert all(r["meta"]["task"] == target and r["meta"]["source"] == "less_eval" for r in records), target


def _check_influence(res: Path) -> None:
    """influence.npz: one row per subtask, and each target's scores the max over its own rows."""
    pool = [r["id"] for r in _jsonl(res / "data" / "pool" / "train.jsonl")]
    with np.load(res / "selection" / "influence.npz") as f:
        targets = f["targets"].tolist()
        owner, labels, sub, scores = f["subtask_target"], f["subtask"].tolist(), f["subtask_scores"], f["scores"]
        assert f["ids"].astype(str).tolist() == pool
    assert targets == sorted(TARGETS)
    per_target = {t: sorted(labels[i] for i in np.flatnonzero(owner == targets.index(t))) for t in targets}
    assert per_target == {
        "bbh": sorted(assets.BBH_TASKS),
        "gsm": ["gsm"],
        "humaneval": ["humaneval"],
        "mmlu": sorted(assets.MMLU_SUBJECTS),
        "tydiqa": sorted(assets.TYDIQA_LANGUAGES),
    }
    assert sub.shape == (len(labels), len(pool)) and scores.shape == (len(targets), len(pool))
    for t, target in enumerate(targets):
        rows = sub[owner == t]
        np.testing.assert_array_equal(scores[t], rows.max(axis=0), err_msg=target)


def _check_selection(res: Path, config: dict) -> None:
    """Per target: the selection's sizes, full LESS = the top of the target's influence scores, the subsets'
    files, and the ClusterUCB table's rows against selection.json and the fine-tuned systems' evaluations."""
    cfg = config["selection"]
    pool = [r["id"] for r in _jsonl(res / "data" / "pool" / "train.jsonl")]
    n = len(pool)
    keep = math.floor(cfg["keep_fraction"] * n + 1e-9)
    with np.load(res / "selection" / "influence.npz") as f:
        targets, scores, ids = f["targets"].tolist(), f["scores"], f["ids"].astype(str).tolist()
    table = pd.read_csv(res / "tables" / "clusterucb.csv")
    for target in TARGETS:
        sel = json.loads((res / "selection" / target / "selection.json").read_text())
        assert (sel["n"], sel["keep"]) == (n, keep), target
        methods = sel["methods"]
        assert {"full", "clusterucb", "random"} <= set(methods), target
        s = scores[targets.index(target)]
        order = np.argsort(-s, kind="stable")
        assert set(methods["full"]["selected_ids"]) == {ids[i] for i in order[:keep]}, target
        for name, m in methods.items():
            assert len(m["selected_ids"]) == len(set(m["selected_ids"])) == keep, (target, name)
            assert set(m["selected_ids"]) <= set(ids), (target, name)
            rows = table[(table["target"] == target) & (table["method"] == name)]
            assert len(rows) and (rows["selected"] == keep).all(), (target, name)
            assert (rows["total_computations"] == m["computations"]).all(), (target, name)
        own = _tasks(config, target)
        for name in SELECTORS:
            assert [r["id"] for r in _jsonl(res / "selection" / target / f"{name}.jsonl")] == methods[name][
                "selected_ids"
            ]
            report = json.loads((res / "eval" / f"select-{target}-{name}.json").read_text())
            assert report["targets"] == [{"target": target, "tasks": own}]  # scored on its own target's tasks only
            rows = table[(table["target"] == target) & (table["method"] == name)].set_index("task")
            assert rows.index.tolist() == own, (target, name)
            for task in own:
                _same(rows.loc[task, "value"], report["primary"][task]["value"], (target, name, task))


def _same(table_value: float, json_value: float | None, what: object) -> None:
    """A table's number equals its evaluation JSON's; a task that did not run is blank in both."""
    if json_value is None:
        assert table_value is None or math.isnan(float(table_value)), what
    else:
        assert float(table_value) == pytest.approx(json_value, abs=1e-12), what


def _check_evaluations(res: Path, config: dict) -> None:
    """main.csv: the configured tasks as columns, each value its evaluation JSON's primary value; each JSON
    scored the task on the local copy (its first questions), at most ``limit`` examples."""
    tasks = _tasks(config)
    limit = config["evaluation"]["limit"]
    main = pd.read_csv(res / "tables" / "main.csv").set_index("system")
    intervals = ("_stderr", "_ci_low", "_ci_high")
    # A task the evaluation did not run (humaneval where lm-eval cannot load its metric offline) is named
    # in a not_run column and left blank.
    columns = [c for c in main.columns if not c.endswith(intervals) and c != "not_run"]
    assert columns == [*tasks, "average", "n_examples"]
    assert main.index.tolist() == ["base"]  # studies: [clusterucb]: no experts, no routed systems
    gsm_question = assets._gsm_problem(0)[0]
    for system in main.index:
        report = json.loads((res / "eval" / f"{system}.json").read_text())
        assert list(report["primary"]) == tasks, system
        for task in tasks:
            primary = report["primary"][task]
            _same(main.loc[system, task], primary["value"], (system, task))
            entry = report["tasks"][task]
            if "not_run" in entry:
                assert task == "humaneval" and report["code_sandbox"].startswith("not run"), (system, task)
                assert task in main.loc[system, "not_run"].split(", "), (system, task)
                continue
            assert 1 <= entry["n_examples"] == len(entry["samples"]) <= limit, (system, task)
            assert primary["value"] is not None and 0.0 <= primary["value"] <= 1.0, (system, task)
        samples = report["tasks"]["gsm8k_cot"]["samples"]
        assert gsm_question in json.dumps(samples[0], ensure_ascii=False), system  # the local copy, not the hub's


@pytest.mark.slow
def test_clusterucb_rehearsal_runs_the_reference_experiment_on_the_cpu(tmp_path):
    work = fresh_copy(tmp_path / "wf")
    assets.write_assets(work / "resources" / "clusterucb_rehearsal")
    t0 = time.perf_counter()
    result = run_snakemake("--cores", "2", "--configfile", "config/clusterucb_rehearsal.yaml", cwd=work, timeout=5400)
    wall = time.perf_counter() - t0
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    print(f"clusterucb rehearsal: {wall:.0f} s")
    config = yaml.safe_load((work / "config" / "clusterucb_rehearsal.yaml").read_text())
    res = work / "results"
    _check_data(res, work, config)
    _check_influence(res)
    _check_selection(res, config)
    _check_evaluations(res, config)
    for name in ("main.md", "clusterucb.md", "clusterucb_budget.md", "latency.md"):
        assert (res / "tables" / name).read_text().startswith("# "), name
    # ClusterUCB's study alone: no GradientSpace stage ran
    assert not (res / "experts").exists() and not (res / "latency").exists() and not (res / "router").exists()
    # the influence pass in its two shards, as the paper config's eight
    assert sorted(p.name for p in (res / "selection" / "influence_shards").glob("*.npz")) == ["0.npz", "1.npz"]
