"""The SLURM profile on a real SLURM: a single-node cluster on localhost (`.ci/slurm.sh`), real sbatch jobs.

`snakemake --profile profiles/slurm --configfile config/test.yaml` runs the gradient and clustering
stages (up to ``results/clusters/quality.csv``) through the SLURM executor plugin; the same target is run
locally (`--cores 2`) in a second copy of the workflow, and every table both runs write must be equal.
The cluster has no accounting database (no sacct), so this also proves the profile's squeue status
command. Skipped only where SLURM cannot be installed (not root, or no apt-get and no slurmctld)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from workflow_tools import ROOT, offline_env, run_snakemake, workflow_copy

SCRIPT = ROOT / ".ci" / "slurm.sh"
TARGET = "results/clusters/quality.csv"

# ---- the one place where S (gradients.shards) is set --------------------------------------------------
# The gradient stage runs as S sharded passes when the schema knows `gradients.shards`; both runs use it.
SHARDS = 2

pytestmark = pytest.mark.slurm


def _cluster_running() -> bool:
    return SCRIPT.is_file() and subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running single-node SLURM: the one already up (CI's `.ci/run` starts it), else started here and
    stopped afterwards."""
    if _cluster_running():
        yield
        return
    conf = Path("/etc/slurm/slurm.conf")
    if conf.is_file() and not conf.read_text().startswith("# written by gradientspace-bench .ci/slurm.sh"):
        pytest.skip("a SLURM not set up by .ci/slurm.sh is configured here (its nodes need not share /tmp)")
    if os.geteuid() != 0:
        pytest.skip("no SLURM running and not root: cannot install or start one (.ci/slurm.sh start)")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("no SLURM installed and no apt-get to install slurm-wlm")
    started = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=900)
    if started.returncode != 0 and shutil.which("slurmctld") is None:
        pytest.skip(f"apt could not install slurm-wlm: {started.stderr.strip()[-500:]}")
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, timeout=120)


def _config() -> dict:
    """config/test.yaml, with S gradient shards where the workflow has them."""
    config = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    schema = yaml.safe_load((ROOT / "config/schema.yaml").read_text())
    if "shards" in schema["properties"]["gradients"].get("properties", {}):
        config["gradients"]["shards"] = SHARDS
        # The sharded extraction keeps no full gradients (rules/gradients.smk refuses both together).
        config["gradients"]["keep_gradients"] = False
    return config


def _workflow_copy(dest: Path, config: dict) -> Path:
    workflow_copy(dest)
    (dest / "config/test.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def _node_profile(dest: Path) -> Path:
    """A second profile that sizes profiles/slurm's paper-scale jobs to the test node: every job one
    CPU and a share of the node's memory (sbatch refuses a job larger than the node). Everything else
    (executor, status command, account and partition, retries) is the profile's own."""
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    node = subprocess.run(["sinfo", "-h", "-N", "-o", "%m"], capture_output=True, text=True, check=True)
    mem = max(1000, min(4000, int(node.stdout.split()[0]) // 3))
    default = {**profile["default-resources"], "mem_mb": f"{mem} * attempt", "runtime": "30 * attempt"}
    sized = {
        "default-resources": default,
        "set-resources": {
            rule: {"mem_mb": f"{mem} * attempt", "runtime": "30 * attempt"} for rule in profile["set-resources"]
        },
        "set-threads": dict.fromkeys(profile["set-threads"], 1),
    }
    dest.mkdir(parents=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(sized))
    return dest


def _snakemake(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_snakemake(*args, cwd=cwd, env=offline_env(OMP_NUM_THREADS="1"), timeout=1500)


def _tables(work: Path) -> dict[str, Path]:
    """Every table the target's DAG writes, by path: the data summary, the clusterings' assignments, the
    coherence and quality tables, and the gradient features they come from. None holds a timing
    (benchmarks/ and logs/ are not compared)."""
    res = work / "results"
    paths = [res / "data/summary.csv", res / "clusters/quality.csv", res / "clusters/quality.md"]
    paths += [res / "clusters/coherence.json", res / "gradients/features.npz"]
    paths += sorted(res.glob("clusters/*/assignments.csv"))
    return {str(p.relative_to(work)): p for p in paths}


def _close(a, b, where: str) -> None:
    """Nested JSON values equal, numbers to a relative 1e-6 (the two runs may sum in another order)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-9), where
    else:
        assert a == b, where


def _equal(local: Path, slurm: Path) -> None:
    if local.suffix == ".csv":
        a, b = pd.read_csv(local), pd.read_csv(slurm)
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6, atol=1e-9, obj=local.name)
    elif local.suffix == ".json":
        _close(json.loads(local.read_text()), json.loads(slurm.read_text()), local.name)
    elif local.suffix == ".npz":
        with np.load(local) as a, np.load(slurm) as b:
            assert sorted(a.files) == sorted(b.files), local.name
            for key in a.files:
                if a[key].dtype.kind in "fc":
                    np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-7, err_msg=key)
                else:
                    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    else:
        assert local.read_text() == slurm.read_text(), local.name


def test_slurm_profile_runs_real_sbatch_jobs_and_matches_the_local_run(slurm_cluster, tmp_path, record_property):
    config = _config()
    local = _workflow_copy(tmp_path / "local", config)
    slurm = _workflow_copy(tmp_path / "slurm", config)
    node = _node_profile(tmp_path / "node")

    result = _snakemake(
        TARGET,  # first: --configfile takes every word after it
        "--profile",
        "profiles/slurm",
        "--profile",
        str(node),
        "--configfile",
        "config/test.yaml",
        "--slurm-init-seconds-before-status-checks",
        "5",
        "--seconds-between-status-checks",  # ours: 1 s, not Snakemake's 10 s, for a short test
        "1",
        cwd=slurm,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    submitted = [int(j) for j in re.findall(r"has been submitted with SLURM jobid (\d+)", out)]
    ran = re.findall(r"^rule (\w+):$", out, re.M)  # non-local jobs (local ones print "localrule")
    assert ran and len(submitted) == len(ran), (ran, submitted)
    assert {"pool_data", "warmup_lora", "cluster_samples", "cluster_quality"} <= set(ran)
    assert "prepare_model" not in ran, "the hub reader is a local rule"
    shards = config["gradients"].get("shards", 1)
    if shards > 1:  # S extraction jobs side by side (rules/gradients.smk), merged by one more
        assert ran.count("extract_gradient_shard") == shards, ran
    else:
        assert ran.count("extract_gradient_features") == 1, ran
    # slurmctld itself knows every job, and each completed (MinJobAge keeps them listed for an hour).
    queue = subprocess.run(
        ["squeue", "--states=all", "-h", "-o", "%i|%T", "-j", ",".join(map(str, submitted))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    states = dict(line.split("|") for line in queue.split())
    assert states == {str(j): "COMPLETED" for j in submitted}, states
    summary = f"slurm: {len(submitted)} sbatch jobs ({', '.join(sorted(set(ran)))}), all COMPLETED, shards S={shards}"
    record_property("summary", summary)
    print(summary)

    result = _snakemake(TARGET, "--cores", "2", "--configfile", "config/test.yaml", cwd=local)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    tables = _tables(local)
    assert len(tables) >= 7
    for name, path in tables.items():
        assert path.is_file() and (slurm / name).is_file(), name
        _equal(path, slurm / name)
