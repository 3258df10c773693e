"""Report captions: every ``report(...)`` output of the workflow names a caption file that exists, and the
Snakefile names a workflow description (``report:``), so that ``snakemake --report`` explains each figure
and table. Caption paths resolve against the folder of the file that declares them, as Snakemake does."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "Snakefile"
WORKFLOW_FILES = [SNAKEFILE, *sorted((ROOT / "rules").glob("*.smk"))]
# ``report(`` as a call of its own, not the tail of another name (``make_report(``) or attribute (``x.report(``).
REPORT_CALL = re.compile(r"(?<![\w.])report\s*\(")
# The workflow-level directive: ``report: "path"`` at the start of a line.
REPORT_DIRECTIVE = re.compile(r"""^report\s*:\s*(?P<q>["'])(?P<path>[^"']+)(?P=q)""", re.MULTILINE)


def _call_text(text: str, start: int) -> str:
    """The source of the call whose ``(`` is at ``text[start]``, up to its matching ``)``, strings skipped."""
    depth, i, quote = 0, start, None
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif text.startswith(quote, i):
                i += len(quote) - 1
                quote = None
        elif c in "\"'":
            quote = c * 3 if text.startswith(c * 3, i) else c
            i += len(quote) - 1
        elif c == "#":
            i = text.find("\n", i)
            if i < 0:
                break
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
        i += 1
    raise AssertionError(f"unbalanced parentheses after offset {start}")


def report_calls(path: Path) -> list[tuple[int, ast.Call]]:
    """Every ``report(...)`` call in a workflow file, as (line number, parsed call); commented-out ones skipped."""
    text = path.read_text(encoding="utf-8")
    calls = []
    for m in REPORT_CALL.finditer(text):
        line_start = text.rfind("\n", 0, m.start()) + 1
        if "#" in text[line_start : m.start()]:
            continue
        source = "report" + _call_text(text, m.end() - 1)
        call = ast.parse(source, mode="eval").body
        assert isinstance(call, ast.Call), source
        calls.append((text.count("\n", 0, m.start()) + 1, call))
    return calls


ALL_CALLS = [(path, line, call) for path in WORKFLOW_FILES for line, call in report_calls(path)]


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def test_report_calls_found():
    assert ALL_CALLS, "no report(...) call found in the Snakefile or rules/*.smk"


@pytest.mark.parametrize(("path", "line", "call"), ALL_CALLS, ids=[_where(p, line) for p, line, _ in ALL_CALLS])
def test_report_output_has_existing_caption(path: Path, line: int, call: ast.Call):
    keywords = {k.arg: k.value for k in call.keywords}
    where = _where(path, line)
    assert "caption" in keywords, f"{where}: report(...) without caption="
    caption = keywords["caption"]
    assert isinstance(caption, ast.Constant) and isinstance(caption.value, str), (
        f"{where}: caption= must be a string literal"
    )
    target = (path.parent / caption.value).resolve()
    assert target.is_file(), f"{where}: caption {caption.value} does not exist ({target})"
    assert target.read_text(encoding="utf-8").strip(), f"{where}: caption {caption.value} is empty"
    assert "category" in keywords, f"{where}: report(...) without category="


def test_snakefile_has_workflow_description():
    found = REPORT_DIRECTIVE.findall(SNAKEFILE.read_text(encoding="utf-8"))
    assert len(found) == 1, f"the Snakefile needs exactly one report: directive, found {len(found)}"
    target = SNAKEFILE.parent / found[0][1]
    assert target.is_file(), f"report: {found[0][1]} does not exist"
    assert target.read_text(encoding="utf-8").strip(), f"report: {found[0][1]} is empty"


def test_parser_finds_captions(tmp_path: Path):
    """The parser itself: nested parentheses, strings with parentheses and comments do not confuse it."""
    probe = tmp_path / "probe.smk"
    probe.write_text(
        'rule x:\n    output:\n        # a=report("no.png")\n'
        '        a=report(\n            "a(1).png",  # a ) in a comment\n            caption=f"{1}",\n        ),\n'
        '        b=other_report("b.png"),\n        c=report("c.png", caption="x.rst", category="T"),\n',
        encoding="utf-8",
    )
    calls = report_calls(probe)
    assert [line for line, _ in calls] == [4, 9]
    assert [k.arg for k in calls[1][1].keywords] == ["caption", "category"]
