"""The sandbox: correct code passes, wrong code fails, and runaway or harmful code is stopped and scored 0.

Each run starts a fresh interpreter (a few tenths of a second); limits are kept small so the whole
file stays within a few seconds of wall time plus the two deliberate timeouts.
"""

from __future__ import annotations

import os
import tempfile
import time

import pytest

from gs.io import InputError
from gs.metrics import code_pass_at_1
from gs.sandbox import SandboxResult, check_code_execution_allowed, check_program, run_untrusted

PROMPT = 'def add(a: int, b: int) -> int:\n    """Return the sum of a and b."""\n'
TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
GOOD = "    return a + b\n"
WRONG = "    return a * b\n"
LOOP = "    while True:\n        pass\n"


@pytest.fixture(autouse=True)
def allow_code(monkeypatch):
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")


@pytest.fixture()
def sandbox_parent(tmp_path, monkeypatch):
    """Make the sandbox's temporary directory a child of ``tmp_path``, so '..' is a place we can inspect."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_correct_solution_passes():
    result = check_program(GOOD, TEST, "add", prompt=PROMPT)
    assert isinstance(result, SandboxResult)
    assert result.passed and result.status == "passed", result


def test_wrong_solution_fails_with_the_assertion():
    result = check_program(WRONG, TEST, "add", prompt=PROMPT)
    assert not result.passed and result.status == "failed"
    assert "AssertionError" in result.detail


def test_infinite_loop_times_out_promptly():
    start = time.monotonic()
    result = check_program(LOOP, TEST, "add", prompt=PROMPT, timeout_s=1.0)
    elapsed = time.monotonic() - start
    assert not result.passed and result.status == "timeout", result
    assert elapsed < 1.0 + 2.0


@pytest.mark.parametrize(
    "program",
    ["x = bytearray(10**11)\n", "x = []\nwhile True:\n    x.append(bytearray(10**6))\n"],
    ids=["huge-allocation", "unbounded-growth"],
)
def test_unbounded_memory_is_stopped(program):
    start = time.monotonic()
    result = run_untrusted(program, timeout_s=5.0, memory_mb=256)
    assert not result.passed
    assert result.status == "memory" or (result.status == "error" and "MemoryError" in result.detail), result
    assert time.monotonic() - start < 5.0


@pytest.mark.parametrize("target", ["absolute", "parent"])
def test_write_outside_working_directory_is_blocked(sandbox_parent, target):
    outside = sandbox_parent / "outside"
    outside.mkdir()
    path = str(outside / "escape.txt") if target == "absolute" else "../escape.txt"
    result = run_untrusted(f"open({path!r}, 'w').write('escaped')\n")
    assert not result.passed and result.status == "blocked", result
    assert not (outside / "escape.txt").exists()
    assert not (sandbox_parent / "escape.txt").exists()


def test_deleting_outside_is_blocked(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    result = run_untrusted(f"import os\nos.remove({str(victim)!r})\n")
    assert result.status == "blocked", result
    assert victim.read_text() == "precious"


def test_files_inside_the_working_directory_are_fine_and_removed_afterwards():
    program = (
        "import os, tempfile\n"
        "open('scratch.txt', 'w').write('ok')\n"
        "os.rename('scratch.txt', 'renamed.txt')\n"
        "with tempfile.TemporaryDirectory() as d:\n"
        "    open(os.path.join(d, 'x'), 'w').write('1')\n"
        "print(os.getcwd())\n"
    )
    result = run_untrusted(program)
    assert result.passed, result
    workdir = result.output.strip()
    assert os.path.basename(workdir).startswith("gs-sandbox-")
    assert not os.path.exists(workdir)


def test_network_is_blocked():
    result = run_untrusted("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n")
    assert not result.passed and result.status == "blocked"
    assert "socket" in result.detail and "network" in result.detail


def test_swallowed_violation_still_blocks():
    program = "import socket\ntry:\n    socket.socket()\nexcept OSError:\n    pass\n"
    result = run_untrusted(program)
    assert result.status == "blocked" and not result.passed, result


@pytest.mark.parametrize(
    "program",
    ["import os\nos.system('true')\n", "import subprocess\nsubprocess.run(['true'])\n"],
    ids=["os.system", "subprocess"],
)
def test_process_spawning_is_blocked(program):
    result = run_untrusted(program)
    assert result.status == "blocked", result


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("GS_SECRET_TOKEN", "do-not-leak")
    program = (
        "import os\n"
        "assert 'HTTPS_PROXY' not in os.environ and 'GS_SECRET_TOKEN' not in os.environ\n"
        "assert os.environ['HOME'].startswith(os.getcwd())\n"
    )
    assert run_untrusted(program).passed


def test_output_is_truncated():
    result = run_untrusted("print('x' * 100_000)\n", max_output_bytes=1000)
    assert result.passed
    assert result.output.count("x") == 1000 and "dropped" in result.output


def test_early_exit_is_not_a_pass():
    assert run_untrusted("import sys\nsys.exit(0)\nassert False\n").status == "failed"
    assert run_untrusted("import os\nos._exit(0)\nassert False\n").status == "error"


def test_gate_requires_opt_in(monkeypatch):
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    with pytest.raises(InputError, match="HF_ALLOW_CODE_EVAL"):
        check_code_execution_allowed()
    with pytest.raises(InputError):
        run_untrusted("pass\n")
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "0")
    with pytest.raises(InputError):
        code_pass_at_1(GOOD, PROMPT, TEST, "add")


def test_bad_entry_point_is_an_input_error():
    with pytest.raises(InputError):
        check_program(GOOD, TEST, "add); import os; os.system('x'", prompt=PROMPT)


def test_sequence_good_loop_good_scores_one_zero_one():
    scores = [code_pass_at_1(c, PROMPT, TEST, "add", timeout_s=1.0) for c in (GOOD, LOOP, GOOD)]
    assert scores == [1.0, 0.0, 1.0]
