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
    """The whole DAG on a handful of samples with the real embedded model: every stage must run, the
    tables and figures must come out, and rerunning the gradient stages must reproduce the clusters."""
    import numpy as np

    work = tmp_path / "wf"
    shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns(".git", "results", "resources", "logs", ".snakemake",
                                                              "__pycache__", "*.egg-info"))
    for d in (work / "benchmarks").iterdir():
        if d.is_dir():
            shutil.rmtree(d)
    result = _snakemake("--cores", "2", "--configfile", "config/test.yaml", cwd=work, timeout=3000)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    res = work / "results"
    summary = pd.read_csv(res / "data" / "summary.csv")
    assert set(summary["domain"]) == {"math", "code", "finance", "writing"}
    main = pd.read_csv(res / "tables" / "main.csv")
    assert {"base", "multitask", "gradientspace-single", "gradientspace-elrea", "gradientspace-uniform",
            "gradientspace-oracle", "semantic-single"} == set(main["system"])
    assert {"math", "code", "finance", "writing", "average"} <= set(main.columns)
    assert main[["math", "code", "finance", "writing"]].apply(lambda c: c.between(0, 1)).all().all()
    assert "reference" in set(summary["split"])
    likelihood = pd.read_csv(res / "tables" / "likelihood.csv")
    assert set(likelihood["system"]) == set(main["system"])
    bpb = likelihood[["math", "code", "finance", "writing"]].to_numpy(dtype=float)
    assert np.isfinite(bpb).all() and (bpb > 0).all()
    # Each system scores the answers under its own weights and routing: they do not all agree.
    assert likelihood["average"].nunique() > 1
    quality = pd.read_csv(res / "clusters" / "quality.csv")
    assert {"gradientspace", "semantic", "rp16"} <= set(quality["method"])
    for name in ("latency.png", "clusters.png", "ablation.png", "clusterucb_budget.png", "likelihood.png"):
        assert (res / "figures" / name).stat().st_size > 5000, name
    for name in ("main.md", "likelihood.md", "router.md", "cluster_quality.md", "ablation.md", "latency.md",
                 "clusterucb.md"):
        assert (res / "tables" / name).read_text().startswith("# "), name
    compute = pd.read_csv(res / "tables" / "compute.csv")
    assert "extract_gradient_features" in set(compute["rule"])

    before = (res / "clusters" / "gradientspace" / "assignments.csv").read_text()
    with np.load(res / "gradients" / "features.npz") as f:
        coords = f["svd_coords"].copy()
    again = _snakemake("--cores", "2", "--configfile", "config/test.yaml", "--forcerun", "warmup_lora",
                       "--until", "cluster_samples", cwd=work, timeout=1500)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert (res / "clusters" / "gradientspace" / "assignments.csv").read_text() == before
    with np.load(res / "gradients" / "features.npz") as f:
        np.testing.assert_array_equal(f["svd_coords"], coords)
