"""Atomic outputs: a job killed with SIGKILL while writing leaves no output that looks done, and its
rerun leaves no temporary behind (:func:`gs.io.atomic_path`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gs.io import atomic_path

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 1 << 20  # bytes per write
N_CHUNKS = 8

# Writes N_CHUNKS chunks to a file (or to two files of a folder) through atomic_path. With "stall",
# it says "writing" after the first chunks and then waits (to be killed); else it finishes.
WRITER = textwrap.dedent(
    f"""
    import sys, time
    from pathlib import Path
    from gs.io import atomic_path

    target, kind, stall = sys.argv[1], sys.argv[2], sys.argv[3] == "stall"
    with atomic_path(target, is_dir=kind == "dir") as tmp:
        path = Path(tmp) / "part-0.bin" if kind == "dir" else Path(tmp)
        with open(path, "wb") as f:
            for i in range({N_CHUNKS}):
                f.write(bytes([i]) * {CHUNK})
                f.flush()
                if stall and i == 2:
                    print("writing", flush=True)
                    time.sleep(600)
        if kind == "dir":
            (Path(tmp) / "done.json").write_text("{{}}")
    """
)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _siblings(target: Path) -> list[str]:
    """Names next to ``target`` that start like its temporaries (``.<name>.``)."""
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


def _kill_mid_write(target: Path, kind: str) -> None:
    before = _siblings(target)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target), kind, "stall"], stdout=subprocess.PIPE, text=True, env=_env()
    )
    try:
        assert proc.stdout.readline().strip() == "writing"
        # Mid-write: 3 of the chunks are on disk, in a temporary next to the target.
        (tmp_name,) = set(_siblings(target)) - set(before)
        tmp = target.parent / tmp_name
        assert (tmp / "part-0.bin" if kind == "dir" else tmp).stat().st_size == 3 * CHUNK
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_killed_writer_leaves_no_output_and_rerun_clears_its_temporary(tmp_path, kind):
    target = tmp_path / "out" / ("gradients.bin" if kind == "file" else "warmup")
    # A temporary of another target whose name starts with this one's must survive the rerun.
    other = tmp_path / "out" / f".{target.name}.json.abcd1234.tmp"
    other.parent.mkdir(parents=True)
    other.write_text("another job's temporary")

    _kill_mid_write(target, kind)
    assert not target.exists()  # nothing Snakemake (or a later stage) could take as done
    assert len(_siblings(target)) == 2  # the killed job's temporary is still there, and the other one

    done = subprocess.run([sys.executable, "-c", WRITER, str(target), kind, "finish"], env=_env(), timeout=120)
    assert done.returncode == 0
    data = (target / "part-0.bin" if kind == "dir" else target).read_bytes()
    assert data == b"".join(bytes([i]) * CHUNK for i in range(N_CHUNKS))
    if kind == "dir":
        assert sorted(p.name for p in target.iterdir()) == ["done.json", "part-0.bin"]
    # The rerun cleared the killed job's temporary, and only that one.
    assert _siblings(target) == [other.name]


def test_killed_rewrite_keeps_the_previous_output(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("previous, complete output\n")
    _kill_mid_write(target, "file")
    assert target.read_text() == "previous, complete output\n"


KILL_BEFORE_RENAME = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path

    import gs.io
    from gs.models.prepare import main

    final = Path(sys.argv[-1]).resolve()
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).resolve() == final:  # everything is written; die before it is moved into place
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *args, **kwargs)

    gs.io.os.replace = replace
    main(sys.argv[1:])
    """
)


def test_real_cli_killed_before_its_rename_then_rerun(tmp_path, tiny_model_dir):
    """``python -m gs.models.prepare`` (the prepare_model rule) killed at the last moment of its write."""
    out = tmp_path / "models" / "tiny"
    spec = json.dumps({"name": "tiny", "source": "local", "path": str(tiny_model_dir)})
    args = ["--spec", spec, "--out", str(out)]
    killed = subprocess.run([sys.executable, "-c", KILL_BEFORE_RENAME, *args], env=_env(), timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists()
    (tmp_name,) = _siblings(out)
    assert (out.parent / tmp_name / "config.json").is_file()  # the killed job had written its folder

    again = subprocess.run([sys.executable, "-m", "gs.models.prepare", *args], env=_env(), timeout=300)
    assert again.returncode == 0
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))
    assert _siblings(out) == []


def test_failed_block_removes_its_temporary(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        Path(tmp).write_text("half")
        raise RuntimeError("stage failed")
    assert not target.exists() and _siblings(target) == []
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "d", is_dir=True) as tmp:
        (tmp / "f").write_text("half")
        raise RuntimeError("stage failed")
    assert list(tmp_path.iterdir()) == []


def test_read_jsonl_names_the_line_of_bad_bytes_and_keeps_numbering(tmp_path):
    from gs.io import InputError, read_jsonl, read_jsonl_numbered

    path = tmp_path / "split.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a"}\n\n{"id": "b"}\n{"id": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"split\.jsonl:4: not UTF-8 \(byte 0xe9 at column 12\)"):
        read_jsonl(path)
    path.write_bytes(b'\xef\xbb\xbf{"id": "a"}\n\n{"id": "b"}\n')
    assert read_jsonl_numbered(path) == [(1, {"id": "a"}), (3, {"id": "b"})]


def test_markdown_table_lines_and_alignment():
    from gs.io import markdown_table

    lines = markdown_table(["system", "acc"], [["base", "0.25"], ["router", 0.5]], align="lr")
    # Written out by hand: GitHub Markdown, right alignment as ``---:``.
    assert lines == ["| system | acc |", "|---|---:|", "| base | 0.25 |", "| router | 0.5 |"]
    assert markdown_table(["a"], [])[1] == "|---|"
    with pytest.raises(ValueError, match="one letter per column"):
        markdown_table(["a", "b"], [], align="l")


def test_config_file_with_a_repeated_key_is_refused(tmp_path):
    from gs.io import InputError, read_config_file

    path = tmp_path / "c.yaml"
    path.write_text("a: 1\nb:\n  x: 1\n  y: 2\n", encoding="utf-8")
    assert read_config_file(path) == {"a": 1, "b": {"x": 1, "y": 2}}
    path.write_text("a: 1\nb:\n  x: 1\n  x: 2\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"c.yaml: duplicate key 'x' \(line 4\)$"):
        read_config_file(path)
    path.write_text("- 1\n", encoding="utf-8")
    with pytest.raises(InputError, match="a config is a YAML mapping"):
        read_config_file(path)


def test_config_file_merge_keys_may_be_overridden(tmp_path):
    """YAML merge keys (``<<: *anchor``, as config/paper.yaml uses them) are not repeats: a key set next to
    the merge overrides the anchor's."""
    from gs.io import InputError, read_config_file

    path = tmp_path / "c.yaml"
    path.write_text("base: &b {lr: 1, epochs: 2}\nrun:\n  <<: *b\n  lr: 3\n", encoding="utf-8")
    assert read_config_file(path)["run"] == {"lr": 3, "epochs": 2}
    path.write_text("base: &b {lr: 1}\nrun:\n  <<: *b\n  lr: 3\n  lr: 4\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"duplicate key 'lr' \(line 5\)"):
        read_config_file(path)
