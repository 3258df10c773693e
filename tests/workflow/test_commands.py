"""The commands the README (and Snakemake's own messages) tell a user to type work as written: no
``--cores`` added, no config named, in a fresh copy of the repository.

* ``snakemake --cores all -n`` and ``snakemake -n`` list the DAG;
* ``snakemake --unlock`` clears the lock a SIGKILLed run leaves (Snakemake's lock error says to type it);
* ``snakemake --report results/report.html`` bundles a finished run's tables and figures.

The report test does not run the workflow (about 25 min on 2 cores): it gives every output of the
default DAG a stand-in file, which is all ``--report`` reads (it bundles files; it computes nothing).
A stale temporary of a killed job (``results/gradients/.warmup.*``) is covered in ``tests/test_io.py``.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from workflow_tools import ROOT, fresh_copy, offline_env, run_snakemake

# A valid 1x1 PNG: the report embeds each figure.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def _run(command: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``command`` exactly as the README writes it (``snakemake`` from this interpreter's environment)."""
    args = command.split()
    assert args[0] == "snakemake"
    return run_snakemake(*args[1:], cwd=cwd, timeout=timeout)


@pytest.fixture
def work(tmp_path) -> Path:
    """A fresh copy of the repository: no results, no resources, no .snakemake."""
    return fresh_copy(tmp_path / "repo")


def test_readme_names_the_commands_tested_here():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for command in ("snakemake --cores all -n", "snakemake --report results/report.html", "snakemake --cores all"):
        assert f"`{command}`" in readme, command


def test_dry_run_as_written(work):
    for command in ("snakemake --cores all -n", "snakemake -n"):
        result = _run(command, work)
        out = result.stdout + result.stderr
        assert result.returncode == 0, f"{command}: {out[-3000:]}"
        assert "This was a dry-run" in out
        assert "evaluate_system" in out and "tables_and_figures" in out


def _locks(work: Path) -> list[Path]:
    return sorted((work / ".snakemake" / "locks").glob("*.lock"))


def test_unlock_clears_the_lock_of_a_killed_run(work):
    # A real run, SIGKILLed (with its jobs) once it holds the lock: the lock stays behind.
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "1"],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=offline_env(),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not _locks(work) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _locks(work), "the run never took its lock"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert _locks(work)

    # The next run refuses to start and says what to type.
    refused = _run("snakemake --cores 1 --until plan", work)
    assert refused.returncode != 0
    assert "cannot be locked" in refused.stderr and "--unlock" in refused.stderr

    result = _run("snakemake --unlock", work)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "Unlocked working directory." in result.stdout + result.stderr
    assert _locks(work) == []
    again = _run("snakemake --cores 1 -n", work)
    assert again.returncode == 0 and "cannot be locked" not in again.stdout + again.stderr


def _outputs(work: Path) -> list[str]:
    """Every output of the default DAG (``snakemake --summary``)."""
    result = _run("snakemake --summary", work)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("output_file\t"))
    return [line.split("\t")[0] for line in lines[start + 1 :] if line.strip()]


def test_report_of_a_finished_run_as_written(work):
    outputs = _outputs(work)
    assert "results/tables/main.md" in outputs and "results/figures/latency.png" in outputs
    for name in outputs:
        path = work / name
        if not path.suffix:  # a directory output (a model, experts, a router)
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".png":
            path.write_bytes(PNG)
        elif path.suffix in (".csv", ".tsv"):
            path.write_text("system,value\nbase,1\n")
        else:
            path.write_text(f"# {path.name}\n")
    result = _run("snakemake --report results/report.html", work)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "Report created." in out
    html = (work / "results" / "report.html").read_text(encoding="utf-8", errors="replace")
    for name in ("main.md", "likelihood.png", "latency.png", "summary.csv"):
        assert name in html, name
