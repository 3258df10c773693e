"""What the workflow tests share: a fresh copy of the repository, the offline environment a user's
run has, and Snakemake run as a user runs it (this interpreter's ``python -m snakemake``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
#: What a workflow run reads from the repository (no results, resources, logs or tests).
WORKFLOW_FILES = ("Snakefile", "rules", "config", "profiles", "envs", "gs", "report")


def offline_env(**extra: str) -> dict[str, str]:
    """This process's environment, offline for the hub and for ``datasets``. No HF_ALLOW_CODE_EVAL:
    the evaluation decides from bubblewrap and the config, as for a user."""
    env = {k: v for k, v in os.environ.items() if k != "HF_ALLOW_CODE_EVAL"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", **extra)
    return env


def run_snakemake(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """``snakemake *args`` in ``cwd`` (output captured as text), in :func:`offline_env` by default."""
    return subprocess.run(
        [*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env or offline_env()
    )


def fresh_copy(dest: Path) -> Path:
    """A copy of the repository as a fresh clone has it: no results, resources, logs, .snakemake or
    caches, and ``benchmarks/`` without the per-rule folders a run writes."""
    shutil.copytree(
        ROOT,
        dest,
        ignore=shutil.ignore_patterns(
            ".git", "results", "resources", "logs", ".snakemake", "__pycache__", "*.egg-info", ".*_cache"
        ),
    )
    for d in (dest / "benchmarks").iterdir():
        if d.is_dir():
            shutil.rmtree(d)
    return dest


def workflow_copy(dest: Path) -> Path:
    """Only what a workflow run reads (:data:`WORKFLOW_FILES`), for tests that run a few jobs."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        if (ROOT / name).exists():
            (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, dest / name)
    return dest
