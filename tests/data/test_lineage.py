"""Lineage of a user's rows: ids kept from ``source: jsonl`` through pooling to the selected subsets.

The user's files use their own ids (strings, one with leading zeros, and integers). The domains are
built and pooled with :mod:`gs.data.prepare`; ``influence.npz`` (the keys :mod:`gs.selection.influence` writes) and
``assignments.csv`` (``id,cluster``) are written by the test from numpy; ``python -m gs.selection.select``
then selects, and every selected row must be the user's row of that id. Every malformed input ends
in one ``error:`` line naming the file, the line and the field, with nothing written.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gs.data.prepare import SPLITS, build_domain, pool_splits, write_domain
from gs.io import InputError, read_jsonl, run_cli, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
SELECTION = {
    "keep_fraction": 0.25,
    "budget_fraction": 0.5,
    "cold_start": 2,
    "exploration": 1.0,
    "draw_size": 1,
    "estimator": "mean_std",
    "budget_sweep": [],
}


def _user_rows(domain: str, split: str, count: int) -> list[dict]:
    """A user's rows with their own ids: math ids are strings (``0007``-style), finance ids integers."""
    offset = {"train": 0, "validation": 100, "test": 200}[split]
    rows = []
    for k in range(offset, offset + count):
        a, b = k + 3, 2 * k + 1
        if domain == "math":
            row = {"id": f"{k:04d}" if k % 2 else f"alg/{split}/{k}", "instruction": f"What is {a} + {b}?"}
            row["output"] = str(a + b)
        else:
            row = {"id": 90000 + k, "instruction": f"A share costs ${a} and pays ${b} a year. Yield in %?"}
            row["output"] = f"{100 * b / a:.2f}"
        rows.append({**row, "input": "", "meta": {"user_note": f"{domain}-{split}-{k}"}})
    return rows


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _spec(files: dict[str, Path], n: dict[str, int]) -> dict:
    return {s: {"source": "jsonl", "n": n[s], "options": {"path": str(files[s])}} for s in SPLITS}


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True)


def test_the_selected_subset_of_a_user_pool_carries_the_user_ids(tmp_path):
    counts = {"train": 16, "validation": 4, "test": 4}
    user: dict[str, dict] = {}  # str(id) -> the user's row
    specs, dirs = {}, []
    for domain in ("math", "finance"):
        files = {}
        for split, count in counts.items():
            rows = _user_rows(domain, split, count)
            files[split] = _write(tmp_path / f"{domain}_{split}.jsonl", rows)
            user.update({str(r["id"]): r for r in rows})
        specs[domain] = _spec(files, counts)
        write_domain(build_domain(domain, specs[domain], seed=5), tmp_path / domain)
        dirs.append(tmp_path / domain)
    # The domain files name the user's ids and keep them (type included) as meta.source_id.
    for d in dirs:
        for split in SPLITS:
            for r in read_jsonl(d / f"{split}.jsonl"):
                assert r["id"] in user and r["meta"]["source_id"] == user[r["id"]]["id"]
                assert r["meta"]["user_note"] == user[r["id"]]["meta"]["user_note"]
    pool = pool_splits(dirs, "train", seed=5)
    write_jsonl(tmp_path / "pool" / "train.jsonl", pool)
    ids = [r["id"] for r in pool]
    assert sorted(ids) == sorted(str(r["id"]) for r in user.values() if r["meta"]["user_note"].split("-")[1] == "train")

    # Influence as gs.selection.influence writes it, from numpy: 2 checkpoints, targets in sorted order.
    rng = np.random.default_rng(0)
    targets = ["finance", "math"]
    per_checkpoint = rng.normal(size=(2, len(targets), len(ids)))
    weights = np.array([0.75, 0.25])
    scores = weights[0] * per_checkpoint[0] + weights[1] * per_checkpoint[1]
    np.savez(
        tmp_path / "influence.npz",
        ids=np.array(ids),
        targets=np.array(targets),
        scores=scores,
        per_checkpoint=per_checkpoint,
        weights=weights,
        gradient_computations=np.array(len(ids) * 2),
    )
    with open(tmp_path / "assignments.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "cluster"])
        writer.writerows([i, k % 3] for k, i in enumerate(ids))

    out = tmp_path / "selection" / "math"
    result = _cli(
        "gs.selection.select",
        *("--influence", str(tmp_path / "influence.npz"), "--assignments", str(tmp_path / "assignments.csv")),
        *("--train", str(tmp_path / "pool" / "train.jsonl"), "--target", "math"),
        *("--params", json.dumps(SELECTION), "--seed", "0", "--out-dir", str(out)),
    )
    assert result.returncode == 0, result.stderr
    keep = int(0.25 * len(ids))
    top = {ids[i] for i in np.argsort(-scores[targets.index("math")])[:keep]}
    summary = json.loads((out / "selection.json").read_text())
    for method in ("clusterucb", "full", "random"):
        rows = read_jsonl(out / f"{method}.jsonl")
        assert len(rows) == keep
        assert [r["id"] for r in rows] == summary["methods"][method]["selected_ids"]
        for r in rows:
            mine = user[r["id"]]  # the user's row of that id: same id (and type) and same content
            assert r["meta"]["source_id"] == mine["id"]
            assert (r["instruction"], r["input"], r["output"]) == (mine["instruction"], mine["input"], mine["output"])
    assert {r["id"] for r in read_jsonl(out / "full.jsonl")} == top
    assert any(i.startswith("0") for i in ids), "a leading-zero id survives the CSV round trip"


def test_rows_without_ids_get_suite_ids_and_rows_with_ids_keep_theirs(tmp_path):
    rows = [{"instruction": f"Say {k}.", "input": "", "output": str(k)} for k in range(6)]
    rows[1]["id"], rows[4]["id"] = "mine-1", 4
    src = _write(tmp_path / "rows.jsonl", rows)
    spec = {s: {"source": "jsonl", "n": 2, "options": {"path": str(src), "shuffle": False}} for s in SPLITS}
    out = build_domain("math", spec, seed=0)
    assert [r["id"] for r in out["train"]] == ["math-train-00000", "mine-1"]
    assert [r["id"] for r in out["validation"]] == ["math-validation-00000", "math-validation-00001"]
    assert [r["id"] for r in out["test"]] == ["4", "math-test-00001"]
    assert out["test"][0]["meta"]["source_id"] == 4 and "source_id" not in out["test"][1]["meta"]


def _data_cli(capsys, *args: str) -> str:
    """``python -m gs.data.prepare`` run in this process (as ``gs.io.run_cli`` runs it): its one error line."""
    from gs.data.prepare import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_cli(main, list(args))
    assert info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _domain_cli(capsys, tmp_path: Path, domain: str, spec: dict) -> tuple[str, Path]:
    out = tmp_path / "out" / domain
    args = ["part", "--part", domain, "--params", json.dumps(spec), "--seed", "0", "--out-dir", str(out)]
    return _data_cli(capsys, *args), out


GOOD = [{"id": f"r{k}", "instruction": f"Say {k}.", "input": "", "output": str(k)} for k in range(9)]


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        # Duplicate ids: both line numbers (the blank line 3 still counts).
        (
            [GOOD[0], {**GOOD[1], "id": "dup"}, "", {**GOOD[2], "id": "dup"}],
            ":4: field 'id' 'dup' repeats the id of line 2",
        ),
        ([GOOD[0], {**GOOD[1], "id": 7}, {**GOOD[2], "id": "7"}], ":3: field 'id' '7' repeats the id of line 2"),
        ([GOOD[0], {**GOOD[1], "id": 1.5}], ":2: field 'id' must be a string or an integer, got float"),
        ([GOOD[0], {**GOOD[1], "id": True}], ":2: field 'id' must be a string or an integer, got bool"),
        ([GOOD[0], {**GOOD[1], "id": " a "}], ":2: field 'id' ' a ' must be non-empty"),
        ([GOOD[0], {**GOOD[1], "id": ""}], ":2: field 'id' '' must be non-empty"),
        ([GOOD[0], {**GOOD[1], "id": "NA"}], ":2: field 'id' 'NA' reads as a missing value in CSV files"),
    ],
)
def test_bad_user_ids_fail_with_one_line_naming_file_line_and_field(capsys, tmp_path, lines, expected):
    src = _write(tmp_path / "rows.jsonl", [*lines, *GOOD[3:]])
    line, out = _domain_cli(capsys, tmp_path, "math", _spec(dict.fromkeys(SPLITS, src), dict.fromkeys(SPLITS, 1)))
    assert f"{src}{expected}" in line
    assert not out.exists()


def test_a_file_that_is_not_utf8_fails_naming_the_line(capsys, tmp_path):
    src = tmp_path / "latin1.jsonl"
    good = "".join(json.dumps(r) + "\n" for r in GOOD[:4])
    src.write_bytes(good.encode() + '{"instruction": "Caf\xe9?", "input": "", "output": "x"}\n'.encode("latin-1"))
    line, out = _domain_cli(capsys, tmp_path, "math", _spec(dict.fromkeys(SPLITS, src), dict.fromkeys(SPLITS, 1)))
    assert f"{src}:5: not UTF-8 (byte 0xe9 at column 21)" in line
    assert not out.exists()


def test_a_byte_order_mark_is_accepted(tmp_path):
    src = tmp_path / "bom.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in GOOD[:3]).encode())
    out = build_domain("math", _spec(dict.fromkeys(SPLITS, src), dict.fromkeys(SPLITS, 1)), seed=0)
    assert sorted(r["id"] for s in SPLITS for r in out[s]) == ["r0", "r1", "r2"]


def test_an_id_in_two_split_files_fails_naming_both(capsys, tmp_path):
    train = _write(tmp_path / "train.jsonl", GOOD[:4])
    other = [{**r, "instruction": r["instruction"] + " Again."} for r in GOOD[:4]]
    test = _write(tmp_path / "test.jsonl", other)
    spec = _spec({"train": train, "validation": train, "test": test}, {"train": 2, "validation": 2, "test": 1})
    spec["train"]["options"]["shuffle"] = spec["validation"]["options"]["shuffle"] = False
    spec["test"]["options"]["shuffle"] = False
    line, out = _domain_cli(capsys, tmp_path, "math", spec)
    assert f"{test}:1: field 'id' 'r0' is also the id of {train}:1" in line
    assert not out.exists()


def test_an_item_in_two_split_files_fails_naming_both(capsys, tmp_path):
    train = _write(tmp_path / "train.jsonl", GOOD[:4])
    test = _write(tmp_path / "test.jsonl", [{**GOOD[2], "id": "t0"}])
    spec = _spec({"train": train, "validation": train, "test": test}, {"train": 2, "validation": 2, "test": 1})
    line, out = _domain_cli(capsys, tmp_path, "math", spec)
    assert f"{test}:1: fields 'instruction' and 'input' repeat {train}:3" in line
    assert not out.exists()


def test_an_id_in_two_domain_files_fails_the_pool_naming_both(capsys, tmp_path):
    dirs = []
    for domain, rows in (("math", GOOD[:6]), ("finance", [{**r, "instruction": r["instruction"] * 2} for r in GOOD])):
        src = _write(tmp_path / f"{domain}.jsonl", rows)
        spec = _spec(dict.fromkeys(SPLITS, src), dict.fromkeys(SPLITS, 2))
        for s in SPLITS:
            spec[s]["options"]["shuffle"] = False  # both train splits are the files' first two rows: r0, r1
        write_domain(build_domain(domain, spec, seed=0), tmp_path / domain)
        dirs.append(tmp_path / domain)
    math_train, finance_train = (d / "train.jsonl" for d in dirs)
    expected = (
        f"{finance_train}:1: field 'id' 'r0' is also the id of {math_train}:1; ids must be unique across the pool"
    )
    with pytest.raises(InputError, match="ids must be unique across the pool") as info:
        pool_splits(dirs, "train", seed=0)
    assert str(info.value) == expected
    pooled = tmp_path / "pooled"
    specs = {d.name: {s: {"source": "jsonl", "n": 2} for s in SPLITS} for d in dirs}
    line = _data_cli(
        capsys,
        *("pool", "--part-dirs", *map(str, dirs), "--params", json.dumps(specs), "--seed", "0"),
        *("--out-dir", str(pooled), "--summary", str(tmp_path / "summary.csv")),
    )
    assert line == f"error: {expected}"
    assert not pooled.exists() and not (tmp_path / "summary.csv").exists()
