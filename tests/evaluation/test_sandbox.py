"""The sandbox: correct code passes, wrong code fails, and runaway or harmful code is stopped and scored 0.

Each run starts a fresh interpreter (a few tenths of a second); limits are kept small so the whole
file stays within a few seconds of wall time plus the two deliberate timeouts.
"""

from __future__ import annotations

import os
import tempfile
import time

import pytest

from gs.evaluation.metrics import code_pass_at_1
from gs.evaluation.sandbox import (
    SandboxResult,
    allow_without_bubblewrap,
    check_code_execution_allowed,
    check_program,
    run_untrusted,
    without_bubblewrap_allowed,
)
from gs.io import InputError

PROMPT = 'def add(a: int, b: int) -> int:\n    """Return the sum of a and b."""\n'
TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
GOOD = "    return a + b\n"
WRONG = "    return a * b\n"
LOOP = "    while True:\n        pass\n"


@pytest.fixture(autouse=True)
def allow_code(monkeypatch):
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")


@pytest.fixture(autouse=True)
def guards_only_allowed():
    """Opt in, explicitly, to running code with the in-process guards alone where bubblewrap does not work:
    these tests check the guards on any machine (inside bubblewrap where it works, the opt-in then unused).
    The refusal tests below turn it off again."""
    previous = allow_without_bubblewrap(True)
    yield
    allow_without_bubblewrap(previous)


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


# ---------------------------------------------------------------------------------------------------
# Escape attempts against the bubblewrap layer (issue 14). Each program does what a hostile completion
# would, through ctypes so that the Python-level guards never see it, and asserts that the attack
# worked: contained, it is scored as not passed. The host side is then checked independently (the
# planted file, the listener, the decoy process, the process table), the evaluator runs the next
# problem, and one line per attempt goes to the terminal summary ("sandbox escape attempts").
# ---------------------------------------------------------------------------------------------------

LIBC = "import ctypes, os, struct\nlibc = ctypes.CDLL(None, use_errno=True)\n"
NEXT_PROBLEM = (PROMPT + GOOD, TEST, "add")


class _EscapeSummary:
    """A pytest plugin that prints the recorded escape outcomes at the end of the run."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.lines:
            terminalreporter.write_sep("-", "sandbox escape attempts")
            for line in self.lines:
                terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def escape_log(request):
    """Append ``(attack, outcome)`` lines; registered once, printed in the terminal summary."""
    plugin = request.config.pluginmanager.get_plugin("gs-sandbox-escapes")
    if plugin is None:
        plugin = _EscapeSummary()
        request.config.pluginmanager.register(plugin, "gs-sandbox-escapes")
    return plugin.lines


@pytest.fixture()
def isolated():
    """Skip without bwrap; with it, the sandbox must really be isolated (else fail, never run unconfined)."""
    from gs.evaluation.bubblewrap import bwrap_path
    from gs.evaluation.sandbox import isolation

    if bwrap_path() is None:
        pytest.skip("bwrap not installed (apt-get install bubblewrap): escape tests need the namespace sandbox")
    iso = isolation()
    assert iso.namespaces, iso.description
    return iso


def _processes_named(name: str) -> list[int]:
    """Host pids whose command name (``/proc/PID/comm``) is ``name``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm", encoding="utf-8", errors="replace") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            if comm == name:
                found.append(int(entry))
    return found


def _no_survivors(name: str, wait_s: float = 2.0) -> bool:
    """True once no host process carries ``name`` (the kernel tears a PID namespace down asynchronously)."""
    deadline = time.monotonic() + wait_s
    while _processes_named(name):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _record(log: list[str], attack: str, result: SandboxResult, host: str) -> None:
    """One summary line: the score, the sandbox's status, what the program saw, what the host shows."""
    detail = " ".join(result.detail.split())[:100]
    saw = "; ".join(line.strip() for line in result.output.splitlines()[:2])[:120] or "-"
    log.append(
        f"escape {attack}: {'NOT PASSED' if not result.passed else 'PASSED'} (status={result.status}: {detail}) "
        f"| inside: {saw} | host: {host}"
    )


def _next_problem_passes() -> bool:
    return check_program(*NEXT_PROBLEM).passed


@pytest.mark.sandbox
@pytest.mark.parametrize("target", ["absolute", "parent"])
def test_escape_ctypes_write_outside(isolated, sandbox_parent, escape_log, target):
    outside = sandbox_parent / "outside"
    outside.mkdir()
    path = str(outside / "escape.txt") if target == "absolute" else "../escape.txt"
    program = LIBC + (
        f"fd = libc.open({path!r}.encode(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)\n"
        "print('open ->', fd, os.strerror(ctypes.get_errno()))\n"
        "assert fd >= 0, 'the outside file could not be opened'\n"
        "assert libc.write(fd, b'escaped', 7) == 7\n"
    )
    result = run_untrusted(program)
    written = [p for p in (outside / "escape.txt", sandbox_parent / "escape.txt") if p.exists()]
    _record(escape_log, f"write-outside-{target}", result, f"files written outside: {written or 'none'}")
    assert not result.passed, result
    assert not written
    assert _next_problem_passes()


@pytest.mark.sandbox
def test_escape_ctypes_system(isolated, tmp_path, escape_log):
    marker = tmp_path / "system-was-here"
    program = LIBC + f"rc = libc.system(b'touch {marker}')\nprint('system ->', rc)\nassert rc == 0\n"
    result = run_untrusted(program)
    _record(escape_log, "system", result, f"marker file exists: {marker.exists()}")
    assert not result.passed and result.status == "blocked", result
    assert "started a process" in result.detail
    assert not marker.exists()
    assert _next_problem_passes()


@pytest.mark.sandbox
def test_escape_ctypes_fork_outlives_the_run(isolated, tmp_path, escape_log):
    # The child renames itself so the host can look for it, outlives the runner, then writes outside.
    name = "gsfork" + os.urandom(4).hex()
    marker = tmp_path / "forked-child-was-here"
    program = LIBC + (
        "pid = libc.fork()\n"
        "if pid == 0:\n"
        f"    libc.prctl(15, {name!r}.encode(), 0, 0, 0)\n"
        "    libc.sleep(1)\n"
        f"    libc.open({str(marker)!r}.encode(), os.O_WRONLY | os.O_CREAT, 0o644)\n"
        "    libc._exit(0)\n"
        "assert pid > 0\n"
    )
    result = run_untrusted(program)
    survivors_gone = _no_survivors(name)
    time.sleep(1.2)  # past the child's sleep: had it survived, the marker would be there now
    _record(escape_log, "fork", result, f"forked child gone after the run: {survivors_gone}; marker: {marker.exists()}")
    assert not result.passed and result.status == "blocked", result
    assert survivors_gone
    assert not marker.exists()
    assert _next_problem_passes()


@pytest.mark.sandbox
def test_escape_ctypes_socket_to_host_listener(isolated, escape_log):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        program = LIBC + (
            "s = libc.socket(2, 1, 0)\n"  # AF_INET, SOCK_STREAM, straight from libc
            "assert s >= 0, os.strerror(ctypes.get_errno())\n"
            f"addr = struct.pack('=H', 2) + struct.pack('!H', {port}) + bytes([127, 0, 0, 1]) + bytes(8)\n"
            "rc = libc.connect(s, addr, len(addr))\n"
            "print('connect ->', rc, os.strerror(ctypes.get_errno()))\n"
            "raw = libc.socket(2, 3, 1)\n"  # AF_INET, SOCK_RAW, ICMP
            "print('raw socket ->', raw, os.strerror(ctypes.get_errno()))\n"
            "assert rc == 0, 'no connection to the listener'\n"
            "assert libc.send(s, b'escaped', 7, 0) == 7\n"
        )
        result = run_untrusted(program)
        server.setblocking(False)
        try:
            conn, _ = server.accept()
            conn.close()
            connected = True
        except BlockingIOError:
            connected = False
    _record(escape_log, "socket", result, f"listener on 127.0.0.1:{port} got a connection: {connected}")
    assert not result.passed, result
    assert not connected
    assert _next_problem_passes()


@pytest.mark.sandbox
@pytest.mark.parametrize("which", ["planted-file", "etc-shadow"])
def test_escape_read_host_secret(isolated, tmp_path, escape_log, which):
    if which == "planted-file":
        secret_path = tmp_path / "secret.txt"
        secret = "gs-secret-" + os.urandom(8).hex()
        secret_path.write_text(secret + "\n")
        secret_path = str(secret_path)
    else:
        secret_path = "/etc/shadow"
        try:
            with open(secret_path, encoding="utf-8") as f:
                secret = f.readline().strip()
        except OSError:
            pytest.skip("/etc/shadow is not readable by this user (nothing to protect)")
    program = LIBC + (
        f"fd = libc.open({secret_path!r}.encode(), os.O_RDONLY)\n"
        "print('open ->', fd, os.strerror(ctypes.get_errno()))\n"
        "assert fd >= 0, 'the secret could not be opened'\n"
        "buf = ctypes.create_string_buffer(4096)\n"
        "n = libc.read(fd, buf, 4096)\n"
        "print(buf.raw[:n].decode(errors='replace'))\n"
        "assert n > 0\n"
    )
    result = run_untrusted(program)
    leaked = bool(secret) and secret in result.output + result.detail
    _record(escape_log, f"read-{which}", result, f"secret in the program's output: {leaked}")
    assert not result.passed, result
    assert not leaked
    assert _next_problem_passes()


@pytest.mark.sandbox
def test_escape_ctypes_signal_parent(isolated, escape_log):
    import subprocess

    decoy = subprocess.Popen(["sleep", "60"])
    try:
        program = LIBC + (
            "def kill(pid):\n"
            "    r = libc.kill(pid, 9)\n"
            "    return r, f'{r} ({os.strerror(ctypes.get_errno())})' if r else '0'\n"
            "ppid = os.getppid()\n"
            "r_parent, s_parent = kill(ppid)\n"
            f"r_evaluator, s_evaluator = kill({os.getpid()})\n"
            f"r_decoy, s_decoy = kill({decoy.pid})\n"
            "r_all, s_all = kill(-1)\n"
            "print('kill: parent', ppid, s_parent, '| evaluator', s_evaluator, '| decoy', s_decoy, '| -1', s_all)\n"
            "assert r_decoy == 0 and r_evaluator == 0, 'the host processes were not signalled'\n"
        )
        result = run_untrusted(program)
        time.sleep(0.2)
        decoy_alive = decoy.poll() is None
    finally:
        decoy.kill()
        decoy.wait()
    _record(escape_log, "signal-parent", result, f"evaluator alive: True; decoy host process alive: {decoy_alive}")
    assert not result.passed, result
    assert decoy_alive
    assert _next_problem_passes()


@pytest.mark.sandbox
def test_escape_ctypes_process_flood_is_bounded(isolated, escape_log):
    from gs.evaluation.sandbox import MAX_PROCESSES

    name = "gsflood" + os.urandom(4).hex()
    attempts = 400
    program = LIBC + (
        "started = 0\n"
        f"for _ in range({attempts}):\n"
        "    pid = libc.fork()\n"
        "    if pid == 0:\n"
        f"        libc.prctl(15, {name!r}.encode(), 0, 0, 0)\n"
        "        libc.pause()\n"
        "        libc._exit(0)\n"
        "    if pid < 0:\n"
        "        print('fork refused:', os.strerror(ctypes.get_errno()))\n"
        "        break\n"
        "    started += 1\n"
        "print('forked', started)\n"
        f"assert started == {attempts}\n"
    )
    start = time.monotonic()
    result = run_untrusted(program, timeout_s=10.0)
    elapsed = time.monotonic() - start
    forked = [int(line.split()[1]) for line in result.output.splitlines() if line.startswith("forked ")]
    survivors_gone = _no_survivors(name)
    _record(
        escape_log,
        "process-flood",
        result,
        f"forks that succeeded: {forked[0] if forked else '?'} of {attempts} (limit {MAX_PROCESSES}); "
        f"all gone after the run: {survivors_gone}; {elapsed:.1f} s",
    )
    assert not result.passed, result
    assert forked and forked[0] < MAX_PROCESSES
    assert survivors_gone
    assert _next_problem_passes()


# ---------------------------------------------------------------------------------------------------
# Without bubblewrap: the evaluation still runs, and says once, on one line, that it is not isolated.
# ---------------------------------------------------------------------------------------------------


@pytest.fixture()
def fresh_isolation():
    """Forget the probed isolation before and after the test (it is cached per process)."""
    from gs.evaluation.bubblewrap import reset_isolation

    reset_isolation()
    yield
    reset_isolation()


@pytest.mark.parametrize("bwrap", ["missing", "broken"])
def test_without_working_bwrap_code_runs_with_the_opt_in_and_one_line_says_so(
    tmp_path, monkeypatch, caplog, fresh_isolation, guards_only_allowed, bwrap
):
    import logging

    from gs.evaluation.sandbox import isolation

    if bwrap == "broken":  # installed but unable to start a sandbox (e.g. namespaces disabled)
        fake = tmp_path / "bwrap"
        fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
        fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with caplog.at_level(logging.WARNING):
        first = check_program(*NEXT_PROBLEM)
        second = check_program(*NEXT_PROBLEM)
        iso = isolation()
    assert first.passed and second.passed
    assert not iso.namespaces and iso.description.startswith("none: ")
    warnings = [r.getMessage() for r in caplog.records if "no namespace isolation" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert ("not found" if bwrap == "missing" else "No permissions") in warnings[0]
    assert without_bubblewrap_allowed()  # the explicit opt-in (guards_only_allowed) is what let it run


@pytest.mark.parametrize("bwrap", ["missing", "broken"])
def test_without_working_bwrap_and_no_opt_in_code_is_refused_and_leaves_no_trace(
    tmp_path, monkeypatch, fresh_isolation, bwrap
):
    # A completion that writes a marker outside its working directory through ctypes, which the in-process
    # guards do not see: refused without bubblewrap unless allowed, and with the opt-in it really escapes.
    bin_dir, marker = tmp_path / "bin", tmp_path / "outside" / "escaped-marker"
    bin_dir.mkdir()
    marker.parent.mkdir()
    if bwrap == "broken":
        fake = bin_dir / "bwrap"
        fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
        fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    program = LIBC + (
        f"fd = libc.open({str(marker)!r}.encode(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)\n"
        "assert fd >= 0 and libc.write(fd, b'escaped', 7) == 7\n"
    )
    assert allow_without_bubblewrap(False) is True  # guards_only_allowed (autouse) had opted in
    with pytest.raises(InputError) as refused:
        run_untrusted(program)
    message = str(refused.value)
    assert "\n" not in message
    assert "without bubblewrap" in message and "evaluation.run_code_without_bubblewrap" in message
    assert ("not found" if bwrap == "missing" else "No permissions") in message
    with pytest.raises(InputError, match="without bubblewrap"):
        code_pass_at_1(GOOD, PROMPT, TEST, "add")  # a configuration error, not a score of 0
    assert not marker.exists()
    # With the opt-in it runs, with the guards only: the ctypes write gets through (what bubblewrap stops).
    assert allow_without_bubblewrap(True) is False
    result = run_untrusted(program)
    assert result.passed, result
    assert marker.read_text() == "escaped"


def test_allow_without_bubblewrap_takes_a_bool_and_returns_the_previous_setting():
    assert allow_without_bubblewrap(False) is True  # the autouse opt-in
    assert not without_bubblewrap_allowed()
    assert allow_without_bubblewrap(True) is False and without_bubblewrap_allowed()
    with pytest.raises(InputError, match="true or false"):
        allow_without_bubblewrap("yes")  # type: ignore[arg-type]
    assert without_bubblewrap_allowed()


def test_bwrap_command_exposes_only_the_interpreter_and_private_tmpfs():
    import sys

    from gs.evaluation.bubblewrap import bwrap_command

    workdir = "/tmp/gs-sandbox-example"
    argv = bwrap_command("bwrap", workdir, [sys.executable, "-c", "pass"], as_root=False)
    sep = argv.index("--")
    opts, command = argv[:sep], argv[sep + 1 :]
    assert command == [sys.executable, "-c", "pass"]
    for flag in ("--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"):
        assert flag in opts
    assert "--die-with-parent" in opts and "--new-session" in opts
    # Every host path is bound read-only; nothing is bound writable.
    binds = [(opts[i], opts[i + 1], opts[i + 2]) for i, a in enumerate(opts) if a.endswith("bind")]
    assert binds and all(kind == "--ro-bind" for kind, _, _ in binds)
    sources = {src for _, src, _ in binds}
    assert "/usr" in sources
    assert os.path.realpath(sys.base_prefix) in sources or os.path.realpath(sys.base_prefix).startswith("/usr/")
    for secret in ("/etc", "/root", "/home", "/etc/shadow", "/etc/passwd", os.getcwd()):
        assert secret not in sources
    # The writable places are size-capped tmpfs mounts: /tmp and the working directory.
    tmpfs = [opts[i + 1] for i, a in enumerate(opts) if a == "--tmpfs"]
    assert sorted(tmpfs) == sorted(["/tmp", workdir])
    assert opts[opts.index("--remount-ro") + 1] == "/" and opts[opts.index("--chdir") + 1] == workdir
    root_argv = bwrap_command("bwrap", workdir, ["python"], as_root=True)
    assert "--unshare-user" not in root_argv and root_argv.count("--cap-add") == 2


@pytest.mark.sandbox
def test_escape_disk_fill_is_capped(isolated, escape_log):
    from gs.evaluation.bubblewrap import TMPFS_BYTES

    chunk, files = 4 * 2**20, 40  # 160 MiB asked for in each of the two writable places
    program = LIBC + (
        f"buf, written = bytes({chunk}), 0\n"
        "for d in (os.getcwd(), '/tmp'):\n"
        f"    for i in range({files}):\n"
        "        fd = libc.open(f'{d}/fill{i}'.encode(), os.O_WRONLY | os.O_CREAT, 0o644)\n"
        f"        n = libc.write(fd, buf, {chunk}) if fd >= 0 else -1\n"
        "        if n <= 0:\n"
        "            print(d, 'refused:', os.strerror(ctypes.get_errno()))\n"
        "            break\n"
        "        written += n\n"
        "print('written', written)\n"
        f"assert written == 2 * {files} * {chunk}\n"
    )
    result = run_untrusted(program, timeout_s=10.0)
    written = [int(line.split()[1]) for line in result.output.splitlines() if line.startswith("written ")]
    _record(escape_log, "disk-fill", result, f"bytes written in total: {written[0] if written else '?'}")
    assert not result.passed, result
    assert written and written[0] <= 2 * TMPFS_BYTES
    assert _next_problem_passes()
