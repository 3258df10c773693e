"""Bad parts and targets stop ``snakemake -n`` with one ``error``-style line before any job runs."""

from __future__ import annotations

import copy

import pytest
import yaml
from workflow_tools import ROOT, run_snakemake, workflow_copy

BASE = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())


def _without_math_validation(c):
    c["targets"]["math"].pop("validation")


CASES = [
    # A selection target without validation examples.
    (_without_math_validation, "targets.math: no validation examples"),
    # A part named like a task.
    (lambda c: c["data"]["parts"].update(gs_code=c["data"]["parts"]["code"]), "part 'gs_code' has the name of a task"),
    # A task reading a split the part does not make.
    (
        lambda c: c["targets"]["code"]["tasks"].append(
            {"task": "gs_code_choice", "data": {"part": "code", "split": "x"}}
        ),
        "reads split 'x' of part 'code', which data.parts does not make",
    ),
    # A selection target that is not a target.
    (lambda c: c["selection"].update(targets=["math", "law"]), "selection.targets: 'law' is not a target"),
    # Another method's clusters as arms without the study that makes them.
    (
        lambda c: c.update(studies=["clusterucb"]) or c["selection"].update(compare_clusters=["gradientspace"]),
        "without the gradientspace study only ClusterUCB's own arms",
    ),
]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return workflow_copy(tmp_path_factory.mktemp("config_errors"))


@pytest.mark.parametrize(("mutate", "message"), CASES)
def test_bad_config_fails_the_dry_run_with_one_line(work, mutate, message):
    config = copy.deepcopy(BASE)
    mutate(config)
    path = work / "bad.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run_snakemake("-n", "--configfile", "bad.yaml", cwd=work, timeout=300)
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if message in line]
    assert len(lines) == 1, (result.stdout + result.stderr)[-3000:]
    assert not (work / "results").exists()


def test_an_lm_eval_task_that_does_not_exist_stops_the_plan(work):
    """The first rule, plan, checks every target's task against lm-eval's index (too slow for every
    Snakefile parse): one line, nothing written."""
    import subprocess
    import sys

    config = copy.deepcopy(BASE)
    config["targets"]["math"]["tasks"].append({"task": "no_such_task"})
    (work / "bad.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    out = ["--out-csv", "results/plan/plan.csv", "--out-md", "results/plan/plan.md"]
    result = subprocess.run(
        [sys.executable, "-m", "gs.plan", "--configfile", "bad.yaml", *out],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: targets.math: unknown lm-eval task 'no_such_task'")
    assert not (work / "results" / "plan" / "plan.csv").exists()


def _dry_run_jobs(work, config: dict) -> dict[str, int]:
    """``snakemake -n``'s job counts per rule for ``config``."""
    path = work / "studies.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run_snakemake("-n", "--configfile", "studies.yaml", cwd=work, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    stats = result.stdout.split("Job stats:")[1].split("total")[0]
    return {line.split()[0]: int(line.split()[1]) for line in stats.splitlines()[3:] if line.strip()}


GRADIENTSPACE_RULES = {
    "extract_gradient_features",
    "gradient_coherence",
    "cluster_samples",
    "cluster_quality",
    "ablation",
    "train_experts",
    "train_multitask",
    "train_router",
    "router_table",
    "latency",
}
CLUSTERUCB_RULES = {"less_influence", "clusterucb_clusters", "select_data", "finetune_selected"}


@pytest.mark.parametrize("studies", [["gradientspace", "clusterucb"], ["clusterucb"], ["gradientspace"]])
def test_studies_choose_the_jobs(work, studies):
    """Each study brings its own rules and nothing else's; the data, warm-up, base model's evaluation and
    the report are shared."""
    config = copy.deepcopy(BASE)
    config["studies"] = studies
    if studies == ["clusterucb"]:
        config["selection"]["compare_clusters"] = []
        config["selection"]["clusters"] = "clusterucb"
    jobs = _dry_run_jobs(work, config)
    assert {"prepare_part", "pool_data", "warmup_lora", "evaluate_system", "tables_and_figures"} <= set(jobs)
    assert (GRADIENTSPACE_RULES <= set(jobs)) == ("gradientspace" in studies)
    assert not (GRADIENTSPACE_RULES & set(jobs)) or "gradientspace" in studies
    assert (CLUSTERUCB_RULES <= set(jobs)) == ("clusterucb" in studies)
    assert not (CLUSTERUCB_RULES & set(jobs)) or "clusterucb" in studies
    if studies == ["clusterucb"]:  # the base model and every selection's LoRA (3 selectors a fine-tuned target)
        assert jobs["evaluate_system"] == 1 + jobs["finetune_selected"] and jobs["finetune_selected"] % 3 == 0


def test_a_part_named_twice_fails_the_dry_run_with_one_line(work):
    """YAML would keep the second of two parts with one name and drop the first without a word."""
    (work / "twice.yaml").write_text(
        "data:\n  parts:\n    legal:\n      train: {source: jsonl, n: 4, options: {path: a.jsonl}}\n"
        "    legal:\n      train: {source: jsonl, n: 4, options: {path: b.jsonl}}\n",
        encoding="utf-8",
    )
    result = run_snakemake("-n", "--configfile", "twice.yaml", cwd=work, timeout=300)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    lines = [line for line in out.splitlines() if "twice.yaml: duplicate key 'legal' (line 5)" in line]
    assert len(lines) == 1, out[-3000:]
    assert not (work / "results").exists()
