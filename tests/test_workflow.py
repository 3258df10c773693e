"""The Snakemake workflow: lint, dry runs of every config, env files, and one end-to-end run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _snakemake(*args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_ALLOW_CODE_EVAL": "1"}
    return subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_lint_is_clean():
    result = _snakemake("--lint", "--nolock")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/test.yaml", "config/paper.yaml"])
def test_dry_run_lists_the_whole_dag(configfile):
    result = _snakemake("-n", "--forceall", "--nolock", "--cores", "2", "--configfile", configfile)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    defined = re.findall(r"^rule (\w+):", "".join(p.read_text() for p in (ROOT / "rules").glob("*.smk")), re.M)
    assert len(defined) >= 15
    for rule in defined:
        assert re.search(rf"^{rule}\s+\d+$", out, re.M), f"rule {rule} missing from the DAG of {configfile}"


def test_every_rule_has_log_benchmark_and_conda_env():
    rules_dir = ROOT / "rules"
    for smk in sorted(rules_dir.glob("*.smk")):
        text = smk.read_text()
        blocks = [b for b in text.split("\nrule ")[0:] if "shell:" in b or "script:" in b or "run:" in b]
        for block in blocks:
            name = block.strip().split(":")[0].removeprefix("rule ").strip()
            for directive in ("log:", "benchmark:", "conda:"):
                assert directive in block, f"rule {name} in {smk.name} has no {directive}"
        for env in (rules_dir / "..").resolve().joinpath("envs").glob("*.yaml"):
            assert env.name in {"data.yaml", "torch.yaml", "evaluation.yaml", "report.yaml"}


def test_env_files_parse_and_pin_every_package():
    for env in sorted((ROOT / "envs").glob("*.yaml")):
        spec = yaml.safe_load(env.read_text())
        deps = spec["dependencies"]
        pip = next(d["pip"] for d in deps if isinstance(d, dict))
        conda = [d for d in deps if isinstance(d, str)]
        for pkg in conda:
            assert "=" in pkg, f"{env.name}: conda package {pkg} is not pinned"
        for pkg in pip:
            assert "==" in pkg, f"{env.name}: pip package {pkg} is not pinned"


@pytest.mark.slow
def test_end_to_end_on_the_tiny_config(tmp_path):
    """The whole DAG on a handful of samples with the real embedded model: every stage must run."""
    work = tmp_path / "wf"
    shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns(".git", "results", "resources", "logs", ".snakemake",
                                                              "benchmarks", "__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "benchmarks", work / "benchmarks", ignore=shutil.ignore_patterns("*/"))
    result = _snakemake("--cores", "2", "--configfile", "config/test.yaml", cwd=work, timeout=3000)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    summary = pd.read_csv(work / "results" / "data" / "summary.csv")
    assert set(summary["domain"]) == {"math", "code", "finance", "writing"}
    assert (work / "results" / "gradients" / "features.npz").is_file()


GPU_RULES = {"warmup_lora", "extract_gradient_features", "gradient_coherence", "less_influence", "train_experts",
             "train_multitask", "finetune_selected", "evaluate_system", "latency", "train_router"}


def test_slurm_profile_dry_run_asks_gpus_for_the_gpu_rules():
    pytest.importorskip("snakemake_executor_plugin_slurm")
    result = _snakemake("--profile", "profiles/slurm", "--configfile", "config/paper.yaml", "-n", "--forceall",
                        "--nolock")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", result.stdout, re.M)
    assert jobs, "the dry run listed no jobs with resources"
    seen = set()
    for rule, resources in jobs:
        seen.add(rule)
        asks_gpu = "gpu=1" in resources
        assert asks_gpu == (rule in GPU_RULES), f"{rule}: resources {resources}"
        assert "runtime=" in resources and "mem_mb=" in resources
    assert GPU_RULES <= seen
