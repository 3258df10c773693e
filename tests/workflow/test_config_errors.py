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
