"""A clustering's files: ``assignments.csv`` (``id,cluster``), its ``cluster_info.json`` sidecar and
``seed_labels.csv`` (the same method rerun at other seeds), written by :mod:`gs.cluster.methods` and
read by every later stage (experts, router, routing, cluster quality).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gs.io import InputError, atomic_path, write_json

ASSIGNMENTS_CSV = "assignments.csv"


INFO_JSON = "cluster_info.json"


SEED_LABELS_CSV = "seed_labels.csv"  # the same method rerun at seeds seed..seed+S-1 (cluster-quality spread)


def write_assignments(
    path: str | os.PathLike, ids: Sequence[str] | np.ndarray, labels: Any, info: Mapping[str, Any] | None = None
) -> Path:
    """Atomically write the CSV ``id,cluster`` (no domain column) and, with ``info``, the sidecar
    ``<dir of path>/cluster_info.json``. Returns the CSV path."""
    ids = [str(i) for i in ids]
    labels = np.asarray(labels)
    if labels.shape != (len(ids),):
        raise InputError(f"write_assignments: {labels.shape} labels for {len(ids)} ids")
    if len(set(ids)) != len(ids):
        raise InputError("write_assignments: duplicate sample ids")
    if labels.size and (labels.min() < 0 or not np.issubdtype(labels.dtype, np.integer)):
        raise InputError("write_assignments: labels must be non-negative integers")
    out = Path(path)
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        import csv

        w = csv.writer(f)
        w.writerow(["id", "cluster"])
        for i, c in zip(ids, labels.tolist(), strict=True):
            w.writerow([i, int(c)])
    if info is not None:
        write_json(out.parent / INFO_JSON, dict(info))
    return out


def write_seed_labels(path: str | os.PathLike, ids: Sequence[str] | np.ndarray, labels: Mapping[int, Any]) -> Path:
    """Atomically write the CSV ``id,seed_<s>,...``: one column of cluster labels ``(n,)`` per seed ``s``."""
    import pandas as pd

    frame = pd.DataFrame({"id": [str(i) for i in ids]})
    for seed, lab in labels.items():
        lab = np.asarray(lab, dtype=np.int64)
        if lab.shape != (frame.shape[0],):
            raise InputError(f"write_seed_labels: seed {seed} has {lab.shape} labels for {frame.shape[0]} ids")
        frame[f"seed_{int(seed)}"] = lab
    out = Path(path)
    with atomic_path(out) as tmp:
        frame.to_csv(tmp, index=False)
    return out


def read_seed_labels(path: str | os.PathLike, ids: Sequence[str] | np.ndarray) -> dict[int, np.ndarray]:
    """``{seed: labels (n,)}`` from :func:`write_seed_labels`'s CSV, rows in the order of ``ids``."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: seed labels file not found")
    frame = pd.read_csv(p, dtype={"id": str})
    cols = [c for c in frame.columns if re.fullmatch(r"seed_-?\d+", c)]
    if "id" not in frame.columns or not cols:
        raise InputError(f"{p}: expected columns id and seed_<s>, got {list(frame.columns)}")
    frame = frame.set_index("id")
    missing = [i for i in ids if str(i) not in frame.index]
    if missing or len(frame) != len(ids):
        raise InputError(f"{p}: ids differ from the features' (first missing: {missing[:1]})")
    frame = frame.loc[[str(i) for i in ids]]
    out = {}
    for c in cols:
        col = frame[c]
        if col.isna().any() or (col < 0).any():
            raise InputError(f"{p}: column {c} row {int(np.argmax(col.isna() | (col < 0)))} is not a label >= 0")
        out[int(c[len("seed_") :])] = col.to_numpy(dtype=np.int64)
    return out


def align_records(records: list[dict[str, Any]], ids: np.ndarray, source: str) -> list[dict[str, Any]]:
    """``records`` reordered to ``ids`` (pool order of the features); the two id sets must match."""
    by_id: dict[str, dict[str, Any]] = {}
    for r in records:
        rid = str(r.get("id"))
        if rid in by_id:
            raise InputError(f"{source}: sample id {rid!r} appears more than once")
        by_id[rid] = r
    missing = [i for i in ids if str(i) not in by_id]
    if missing:
        raise InputError(f"{source}: sample id {str(missing[0])!r} of the features is not in the training pool")
    if len(by_id) != len(ids):
        extra = sorted(set(by_id) - {str(i) for i in ids})
        raise InputError(f"{source}: sample id {extra[0]!r} has no gradient features ({len(extra)} such)")
    return [by_id[str(i)] for i in ids]


def read_assignments(path: str | os.PathLike) -> pd.DataFrame:
    """Read a cluster-assignment CSV (``id,cluster``) and validate it (see :func:`validate_assignments`)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: assignments file not found")
    try:
        # ids stay strings: a numeric-looking id must not turn into an int (or lose leading zeros).
        frame = pd.read_csv(p, dtype={"id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: not a readable CSV ({str(e).splitlines()[0] if str(e) else e})") from None
    return validate_assignments(frame, source=str(p))


def validate_assignments(assignments: pd.DataFrame, *, source: str = "assignments") -> pd.DataFrame:
    """Check an ``id,cluster`` frame and return a copy with ``id`` as str and ``cluster`` as int.

    Raises:
        InputError: no rows, a missing column, an empty/duplicate id, or a cluster that is not a
            non-negative integer.
    """
    missing = [c for c in ("id", "cluster") if c not in assignments.columns]
    if missing:
        raise InputError(f"{source}: missing column(s) {missing}; expected columns id,cluster")
    if len(assignments) == 0:
        raise InputError(f"{source}: no cluster assignments (empty)")
    frame = assignments[["id", "cluster"]].copy()
    if frame["id"].isna().any():
        row = int(frame.index[frame["id"].isna()][0])
        raise InputError(f"{source}: row {row} has no id")
    frame["id"] = frame["id"].astype(str)
    dup = frame["id"][frame["id"].duplicated()]
    if len(dup):
        raise InputError(f"{source}: sample id {dup.iloc[0]!r} is assigned more than once")
    clusters = pd.to_numeric(frame["cluster"], errors="coerce")
    bad = clusters.isna() | (clusters < 0) | (clusters != clusters.round())
    if bad.any():
        i = bad.to_numpy().nonzero()[0][0]
        raise InputError(
            f"{source}: sample {frame['id'].iloc[i]!r} has cluster {frame['cluster'].iloc[i]!r}; "
            "expected a non-negative integer"
        )
    frame["cluster"] = clusters.astype(int)
    return frame.reset_index(drop=True)
