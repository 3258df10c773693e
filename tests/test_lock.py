"""The installed environment is the locked one (requirements/lock.txt, the README's install constraints)."""

import importlib.metadata as md
import re
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "requirements" / "lock.txt"


def test_every_locked_distribution_is_installed_at_its_locked_version():
    pins = [line.split("==") for line in LOCK.read_text().splitlines() if line and not line.startswith("#")]
    assert len(pins) > 100  # the whole closure, not a handful of top-level names
    wrong = {}
    for name, version in pins:
        try:
            installed = re.sub(r"[+].*$", "", md.version(name))  # torch 2.13.0+cpu is the locked 2.13.0
        except md.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong[name] = (version, installed)
    assert not wrong, f"locked (want, installed): {wrong}; install with the README's command"


def test_the_lock_covers_the_declared_dependencies():
    """Every requirement of pyproject.toml (and the dev extra) has a pin in the lock."""
    import tomllib

    project = tomllib.loads((LOCK.parents[1] / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    names = {re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].lower().replace("_", "-") for d in declared}
    pinned = {line.split("==")[0] for line in LOCK.read_text().splitlines() if "==" in line}
    assert names <= pinned, sorted(names - pinned)
