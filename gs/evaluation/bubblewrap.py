"""Namespace isolation for :mod:`gs.evaluation.sandbox`: the ``bwrap`` (bubblewrap) command line it runs inside.

Bubblewrap (https://github.com/containers/bubblewrap, Debian package ``bubblewrap``) starts a process
in new Linux namespaces with a filesystem view built from explicit binds. :func:`bwrap_command`
builds that view for one sandboxed interpreter:

* **namespaces**: PID (the host's processes, the evaluator included, do not exist inside; when the
  sandbox's first process exits the kernel kills everything left in it), network (only a loopback
  of its own: no route to the host's listeners or the internet), IPC, UTS, cgroup where available,
  mount; ``--die-with-parent``; ``--new-session``;
* **filesystem**: a read-only empty root (``--remount-ro /``) holding only read-only binds of
  ``/usr``, the top-level ``/bin``, ``/lib*``, ``/sbin`` links or directories, the interpreter's
  prefixes (``sys.prefix``, ``sys.base_prefix``, the executable's directory; under ``/root`` here,
  with only those directories made visible) and ``/etc/ld.so.cache``; a new ``/proc`` for the PID
  namespace and a minimal ``/dev`` (null, zero, random, urandom, tty...); no host ``/etc``, home,
  ``/sys``, project or data directories; writable places are two private size-capped tmpfs
  mounts, the working directory (at the same path as on the host, so the runner's path checks are
  unchanged; the host's directory stays empty) and ``/tmp``, discarded afterwards;
* **identity** -- the one place the two ways of starting differ:

  - *as an ordinary user*: a new user namespace (``--unshare-user``, ``--disable-userns``), the
    sandbox's uid mapped to the caller's. ``RLIMIT_NPROC`` then counts the processes of that uid in
    that namespace, so the runner's process-count limit is a per-sandbox quota.
  - *as root*: a user namespace created by root maps the sandbox onto host uid 0, for which the
    kernel never enforces ``RLIMIT_NPROC`` (``copy_process`` exempts ``INIT_USER``), and bwrap cannot
    map it to another host uid. So bwrap runs privileged with only ``CAP_SETUID``/``CAP_SETGID`` kept
    and the runner, before it reads the program, drops to a fresh unprivileged host uid and gid
    (:func:`sandbox_uid`, from a range no account uses): no capabilities, ``no_new_privs`` (set by
    bwrap, so setuid binaries and file capabilities grant nothing), and an ``RLIMIT_NPROC`` that the
    kernel enforces and that counts only this sandbox's processes.

:func:`isolation` probes once per process whether this works on this machine (bwrap installed, the
kernel allowing its namespaces) by running an empty program through the real sandbox; where it does
not, :mod:`gs.evaluation.sandbox` refuses to run code unless the process opted in to its in-process guards alone
(:func:`gs.evaluation.sandbox.allow_without_bubblewrap`, which evaluations call only for the config's
``evaluation.run_code_without_bubblewrap: true``); the missing namespaces are logged once, on one line
(:data:`NO_ISOLATION_WARNING`), and reported by evaluations (``code_sandbox`` in their JSON).
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: Size cap of each private tmpfs (the working directory and ``/tmp``): tmpfs pages are memory that
#: ``RLIMIT_AS`` does not count, so they need their own bound.
TMPFS_BYTES = 64 * 2**20
#: Unprivileged host uids/gids for sandboxes started by root: a range above the 32-bit ids that
#: accounts, ``/etc/subuid`` ranges and container runtimes use (they start at 100000 and are
#: rarely above 2**30), below ``(uid_t)-1``. One is drawn per run, so RLIMIT_NPROC counts only it.
UID_RANGE = (0x70000000, 0x7FFF0000)
#: Top-level entries that are links into ``/usr`` on merged-/usr systems and directories elsewhere.
ROOT_ENTRIES = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
#: Host files bound read-only: the dynamic loader's cache (library paths only, no secret).
EXTRA_FILES = ("/etc/ld.so.cache",)
_PROBE_LOCK = threading.Lock()  # one probe (and one warning line) even when the first runs are concurrent
NO_ISOLATION_WARNING = "no namespace isolation for generated code (bubblewrap unavailable: {reason})"


@dataclass(frozen=True)
class Isolation:
    """Whether :mod:`gs.evaluation.sandbox` runs code inside bubblewrap, and a one-line description for reports."""

    namespaces: bool
    description: str


def bwrap_path() -> str | None:
    """The ``bwrap`` executable on ``PATH``, or ``None``."""
    return shutil.which("bwrap")


def sandbox_uid() -> int:
    """A fresh unprivileged host uid (also used as gid) for one sandbox started by root."""
    low, high = UID_RANGE
    return low + secrets.randbelow(high - low)


def _within(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _interpreter_dirs() -> list[str]:
    """Directories the interpreter needs, as real paths: its prefixes and its executable's folder."""
    candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    candidates += [os.path.dirname(sys.executable), os.path.dirname(os.path.realpath(sys.executable))]
    dirs: list[str] = []
    for path in candidates:
        if path and os.path.isdir(path):
            real = os.path.realpath(path)
            if real != "/" and real not in dirs:
                dirs.append(real)
            if os.path.abspath(path) != real and os.path.abspath(path) not in dirs:
                dirs.append(os.path.abspath(path))  # a prefix reached through a link: bound there too
    return dirs


@functools.cache
def _options(bwrap: str) -> frozenset[str]:
    """The long options this ``bwrap`` knows (from ``--help``): ``--size`` is 0.7+, ``--disable-userns`` 0.8+."""
    try:
        done = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(word for word in (done.stdout + done.stderr).split() if word.startswith("--"))


def bwrap_command(bwrap: str, workdir: str, argv: list[str], *, as_root: bool) -> list[str]:
    """The ``bwrap`` argv that runs ``argv`` (the interpreter and its arguments) isolated in ``workdir``.

    ``workdir`` (absolute) becomes a private writable tmpfs at the same path and the working
    directory. ``as_root`` selects privileged mode (the runner then drops to :func:`sandbox_uid`);
    otherwise a user namespace is created. See the module docstring for what is visible. Options an
    older bwrap lacks (``--size``, ``--disable-userns``) are left out rather than failing.
    """
    known = _options(bwrap)
    args = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if as_root:
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        args += ["--unshare-user"] + (["--disable-userns"] if "--disable-userns" in known else [])
    args += ["--die-with-parent", "--new-session", "--hostname", "gs-sandbox"]
    size = ["--size", str(TMPFS_BYTES)] if "--size" in known else []
    made: set[str] = {"/"}

    def parents(path: str) -> list[str]:
        # bwrap creates missing parents of a bind 0700 root-owned in privileged mode, which the
        # dropped uid could not traverse: create each one 0755 first.
        out, head = [], os.path.dirname(path)
        while head not in made:
            out.insert(0, head)
            made.add(head)
            head = os.path.dirname(head)
        return [a for d in out for a in ("--perms", "0755", "--dir", d)]

    bound = ["/usr", "/proc", "/dev"]
    args += ["--ro-bind", "/usr", "/usr"]
    for name in ROOT_ENTRIES:
        path = "/" + name
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
            bound.append(path)
    args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", *size, "--tmpfs", "/tmp"]
    made.add("/tmp")
    # After /tmp, so that an interpreter living under /tmp (a throwaway venv) stays visible.
    for path in _interpreter_dirs():
        if not _within(path, bound):
            args += parents(path) + ["--ro-bind", os.path.realpath(path), path]
            bound.append(path)
    for path in EXTRA_FILES:
        if os.path.isfile(path):
            args += parents(path) + ["--ro-bind", path, path]
    args += parents(workdir) + ["--perms", "0777", *size, "--tmpfs", workdir]
    args += ["--remount-ro", "/", "--chdir", workdir, "--"]
    return args + list(argv)


def isolation(probe: Callable[[], tuple[bool, str]] | None = None) -> Isolation:
    """Whether sandboxed code runs in bubblewrap here; probed once per process, logged once if not.

    ``probe`` (called only when ``bwrap`` is on ``PATH``) runs an empty program through the real
    sandbox and returns ``(passed, detail)``; :mod:`gs.evaluation.sandbox` passes its own. The answer is cached
    (:func:`reset_isolation` forgets it).
    """
    with _PROBE_LOCK:
        return _probed(probe)


@functools.cache
def _probed(probe: Callable[[], tuple[bool, str]] | None) -> Isolation:
    bwrap = bwrap_path()
    if bwrap is None:
        reason = "`bwrap` not found on PATH; install the `bubblewrap` package"
    elif not sys.platform.startswith("linux"):
        reason = f"namespaces need Linux, this is {sys.platform}"
    elif probe is None:
        reason = "no probe given"
    else:
        ok, detail = probe()
        if ok:
            who = "own unprivileged uid" if os.geteuid() == 0 else "user namespace"
            return Isolation(True, f"bubblewrap ({bwrap}): pid/net/ipc/uts/mount namespaces, {who}")
        reason = f"`{bwrap}` failed to start a sandbox: {' '.join(detail.split())[:300]}"
    log.warning(NO_ISOLATION_WARNING.format(reason=reason))
    return Isolation(False, "none: " + reason)


def reset_isolation() -> None:
    """Forget the cached answer of :func:`isolation` (for tests, or after installing bubblewrap)."""
    _probed.cache_clear()
