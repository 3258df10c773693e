"""Small I/O helpers shared by every stage: one-line input errors and atomic writes.

Every output of the workflow is written through :func:`atomic_path` so that a failed or killed
job never leaves a half-written file that Snakemake (or a later stage) would take as done.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml


class InputError(ValueError):
    """Bad input (malformed row, unknown name, impossible parameter): reported as one line."""


def _temporary_pattern(final: Path) -> re.Pattern[str]:
    """Names of the temporaries :func:`atomic_path` makes for ``final``: ``.<name>.<8 random>`` (a
    folder) or ``.<name>.<8 random>.tmp`` (a file), with :mod:`tempfile`'s random characters."""
    return re.compile(rf"\.{re.escape(final.name)}\.[a-z0-9_]{{8}}(\.tmp)?")


def clear_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries a killed writer of ``path`` left next to it; return what was removed.

    A failed block removes its own temporary, but a hard kill (SIGKILL, out of memory, a lost node)
    gives it no chance: its rerun clears them here before writing. Only names of ``path``'s own
    temporaries match (see :func:`_temporary_pattern`), not those of another target whose name starts
    alike (``.warmup.json.<random>.tmp`` is not ``warmup``'s). Assumes one writer per output at a
    time, as in a Snakemake workflow.
    """
    final = Path(path)
    if not final.parent.is_dir():
        return []
    pattern = _temporary_pattern(final)
    removed = []
    for entry in final.parent.iterdir():
        if not pattern.fullmatch(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place only if the block succeeds.

    Works for files and (``is_dir=True``) directories. On an exception the temporary is removed
    and ``path`` is left untouched, so no partial output survives. Temporaries of ``path`` that a
    killed earlier run left behind are removed first (:func:`clear_stale_temporaries`).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_temporaries(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent)) if is_dir else None
    if not is_dir:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        tmp = Path(name)
    assert tmp is not None
    try:
        yield tmp
        # mkstemp/mkdtemp create private (0600/0700) entries; outputs get the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, (0o777 if is_dir else 0o666) & ~umask)
        if is_dir and final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    """Atomically write ``rows`` as JSON lines; return the number written."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl_numbered(path: str | os.PathLike) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` for every non-blank line of a JSONL file.

    Reads bytes and decodes line by line, so a file that is not UTF-8 is a one-line
    :class:`InputError` naming the line (a leading byte-order mark is accepted); a missing file or a
    line that is not a JSON object is one too. Blank lines are skipped but keep the numbering.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found")
    rows = []
    with open(p, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                bad = f"byte {raw[e.start]:#04x} at column {e.start + 1}"
                raise InputError(f"{p}:{lineno}: not UTF-8 ({bad})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{p}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise InputError(f"{p}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append((lineno, row))
    return rows


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a JSONL file (:func:`read_jsonl_numbered` without the line numbers)."""
    return [row for _, row in read_jsonl_numbered(path)]


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


#: The line :func:`run_cli` ends a job's log with (read back by :mod:`gs.plan.compare`).
PEAK_LINE = "peak resident memory: {mib} MiB (VmHWM)"


def peak_resident_mib() -> int | None:
    """This process's resident-set high-water mark in MiB (``VmHWM``, kept exactly by the kernel),
    or None where ``/proc`` has none. Snakemake's ``benchmark:`` samples RSS (every 0.5 s for 15 s,
    then every 30 s) and can miss a short peak; this cannot."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(x.split()[1]) // 1024 for x in f if x.startswith("VmHWM"))
    except (OSError, StopIteration, ValueError):
        return None


def run_cli(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> None:
    """Run a module's ``main``; an :class:`InputError` becomes one ``error:`` line and exit code 1.
    A run that succeeds ends its standard error with :data:`PEAK_LINE`."""
    try:
        main(argv)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    peak = peak_resident_mib()
    if peak is not None:
        print(PEAK_LINE.format(mib=peak), file=sys.stderr)


def parse_params(text: str, what: str = "--params") -> dict[str, Any]:
    """A CLI's ``--params`` JSON text (a config section) as a dict; bad JSON is an :class:`InputError`."""
    try:
        params = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{what}: not valid JSON ({e.msg})") from None
    if not isinstance(params, dict):
        raise InputError(f"{what}: expected a JSON object")
    return params


def parse_target_specs(specs: list[str], what: str = "--targets") -> dict[str, str]:
    """``DOMAIN=path`` arguments as ``{domain: path}``; a spec without ``=path`` is one line of error."""
    targets = {}
    for spec in specs:
        name, _, path = spec.partition("=")
        if not path:
            raise InputError(f"{what} expects DOMAIN=path, got {spec!r}")
        targets[name] = path
    return targets


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read a JSON file; a missing file or bad JSON is an :class:`InputError` naming ``what``."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: {what} not found")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{p}: not valid JSON ({e.msg})") from None


def user_cache_path(env_var: str, filename: str) -> Path | None:
    """A per-user cache file of the suite: ``$<env_var>`` (``0``: no cache, None), else
    ``$XDG_CACHE_HOME`` or ``~/.cache``, then ``gradientspace-bench/<filename>``."""
    env = os.environ.get(env_var)
    if env == "0":
        return None
    if env:
        return Path(env)
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "gradientspace-bench" / filename


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> list[str]:
    """A GitHub Markdown table's lines: the header, the rule (``---``, or ``---:`` where ``align`` has
    an ``r`` for that column) and one line per row of already formatted cells."""
    align = align or "l" * len(columns)
    if len(align) != len(columns):
        raise ValueError(f"align {align!r} does not give one letter per column of {list(columns)}")
    lines = ["| " + " | ".join(columns) + " |", "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key that a mapping already has (PyYAML keeps the last silently, so
    two parts of one name would become one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise InputError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A config file as a mapping; one-line :class:`InputError` when it is missing, not YAML, not a mapping,
    or repeats a key within one mapping."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a config is a YAML mapping")
    return data


def studies(config: dict[str, Any]) -> tuple[bool, bool]:
    """Whether a config runs GradientSpace's study and ClusterUCB's (schema ``studies``; absent: both). The
    rules and the planner both decide their stages through this."""
    names = config.get("studies") or ["gradientspace", "clusterucb"]
    return "gradientspace" in names, "clusterucb" in names


def take_own_sections(config: dict[str, Any], own: dict[str, Any]) -> None:
    """In ``config`` (the default merged with a config file ``own``, key by key, as ``--configfile`` does),
    replace the pool's parts and the targets with ``own``'s where it names them: they are a config's own
    (a ClusterUCB pool is not the default's four parts plus eight more). The Snakefile and the planner
    both load a config through this."""
    if "parts" in (own.get("data") or {}):
        config["data"]["parts"] = own["data"]["parts"]
    if "targets" in own:
        config["targets"] = own["targets"]
