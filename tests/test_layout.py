"""The house rules of ``gs/`` (issue 22), checked on the source tree: one sub-package per stage
named as its rule file, at most four shared top-level modules, no import cycle among ``gs``
modules, no private name imported across modules, and package ``__init__`` files that load
nothing heavy (Snakemake parses the rules often).

The import graph is read with :mod:`ast` from every ``import``/``from ... import`` statement,
function-level ones included, so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GS = ROOT / "gs"
SHARED_MODULES_MAX = 4  # issue 22: "at most four top-level modules besides __init__.py"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(GS.rglob("*.py"))}


def _imports(path: Path, name: str, modules: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """Every gs module ``name`` imports: ``(target module, imported names, line)``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("gs")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("gs"):
                continue
            names = [a.name for a in node.names]
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
            found += [(m, [], node.lineno) for m in submodules]
            found.append((base, [n for n in names if f"{base}.{n}" not in modules], node.lineno))
    return found


def test_top_level_holds_only_shared_modules_and_stage_packages():
    top_modules = sorted(p.stem for p in GS.glob("*.py") if p.name != "__init__.py")
    assert len(top_modules) <= SHARED_MODULES_MAX, top_modules
    stages = sorted(p.stem for p in (ROOT / "rules").glob("*.smk") if p.stem != "common")  # helpers, no stage
    packages = sorted(p.parent.name for p in GS.glob("*/__init__.py"))
    assert packages == stages, "one gs sub-package per rule file"


def test_every_rule_runs_a_module_of_its_own_stage():
    seen = 0
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for module in re.findall(r"python -m (gs(?:\.\w+)+)", smk.read_text()):
            seen += 1
            parts = module.split(".")
            assert parts[1] == smk.stem, f"{smk.name} runs {module}"
            target = GS.joinpath(*parts[1:])
            assert target.with_suffix(".py").is_file() or (target / "__main__.py").is_file(), module
    assert seen >= 10


def test_no_import_cycle_among_gs_modules():
    modules = _modules()
    graph = {
        name: {t for t, _, _ in _imports(path, name, modules) if t in modules and t != name and t != "gs"}
        for name, path in modules.items()
    }
    # Package __init__ files are entered by every import of their children: they must import nothing.
    for name, path in modules.items():
        if path.name == "__init__.py":
            assert not graph[name], f"{name}/__init__.py imports {sorted(graph[name])}"
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if modules[nxt].name == "__init__.py":
                continue
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_no_private_name_imported_across_modules():
    modules = _modules()
    crossings = [
        f"{path.relative_to(ROOT)}:{line} imports {target}.{n}"
        for name, path in modules.items()
        for target, names, line in _imports(path, name, modules)
        for n in names
        if n.startswith("_") and not n.startswith("__") and target != name
    ]
    assert not crossings, "\n".join(crossings)


def test_importing_every_stage_package_loads_no_heavy_library():
    stages = sorted(p.parent.name for p in GS.glob("*/__init__.py"))
    code = (
        f"import sys; import {', '.join('gs.' + s for s in stages)}; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'lm_eval', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
