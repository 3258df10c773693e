"""The pool's named parts and their splits, the pooled training set, and the targets' own validation data.

A *part* (config ``data.parts.<name>``) is any named set of instruction rows: a file, a hub dataset or
one of the embedded default's generators. Its name is its hidden label (the record's ``domain``
field, which only the oracle clustering and the cluster-quality tables read).

Output format (JSONL), one record per line::

    {"id": "math-train-00000", "domain": "math", "instruction": str, "input": str, "output": str,
     "meta": {...}}    # meta: gold answer, unit tests or writing constraints, for scoring

and, for a conversation row (open-instruct / less_data), ``"messages": [{"role", "content"}, ...]``
too, whose first user turn is the ``instruction``, last assistant turn the ``output`` (``input`` "").

The ``domain`` label (the part's name) is kept for measuring cluster quality; the
clustering stages never read it (:mod:`gs.cluster.methods` takes ids and gradients or text only).

Splits of one domain that draw on the same source are carved from one seeded pool in the order
train, validation, test, reference, so they are disjoint by construction; a check on (instruction,
input) guards that across all splits.

Ids and lineage: a record's ``id`` is its source row's own id when it has one (a user's JSONL
``id``, also kept as ``meta.source_id``), else ``<domain>-<split>-<index>``. Every later file
(pooled splits, cluster assignments, influence, the selected subsets) names records by ``id``, so a
selected subset traces back to the user's rows. Ids must be unique across the pool: a repeat within
a file, a domain or across domain files is an :class:`~gs.io.InputError` naming both places.

The ``reference`` split holds held-out records with reference outputs, for the likelihood tasks
(how probable each system finds the reference answer). It is the test split when every test record
has an output; a domain whose test set has none (the Tree-of-Thoughts writing prompts) names its
own ``reference`` split in the config.

A DERIVED split (``{from: <split>, choices: <int>, n: <int>, max_chars: <int>}``, any other name) is
built after the drawn splits from the first ``n`` records (default all) of split ``<from>``: the
multiple-choice records of :func:`gs.data.choices.build_choices`, whose distractors are the other
records of that split (all of them, not only the first ``n``). Nothing is drawn from a source for
it, so it overlaps no split that ``<from>`` does not overlap; its records keep their ``<from>``
records' ids.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path
from typing import Any

import pandas as pd

from gs.data.choices import build_choices
from gs.data.sources import LICENSES, check_messages, item_key, load_source, messages_fields
from gs.io import InputError, atomic_path, parse_params, read_jsonl, run_cli, write_jsonl

#: The split every part has: the pool is the parts' train splits.
TRAIN_SPLIT = "train"
#: The order splits are carved in from one source (others follow in the config's order).
SPLITS = ("train", "validation", "test")
REFERENCE_SPLIT = "reference"
#: The carving order of the usual splits.
DOMAIN_FILES = (*SPLITS, REFERENCE_SPLIT)
#: The keys of a derived (multiple-choice) split's spec.
DERIVED_KEYS = ("from", "choices", "n", "max_chars")
#: Folder names under results/data/ that a part may not take.
RESERVED_NAMES = ("pool", "targets")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
TEXT_FIELDS = ("instruction", "input", "output")


def validate_record(row: Any, where: str, *, require_output: bool = True) -> dict[str, Any]:
    """Check one record; raise a one-line :class:`InputError` naming ``where`` and the field.

    A record with ``messages`` needs a valid conversation (:func:`gs.data.sources.check_messages`)
    whose first user turn is its ``instruction``, last assistant turn its ``output``, and ``input`` "".
    """
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object")
    for field in TEXT_FIELDS:
        if field not in row:
            raise InputError(f"{where}: field {field!r} missing")
        if not isinstance(row[field], str):
            raise InputError(f"{where}: field {field!r} must be a string, got {type(row[field]).__name__}")
    if not row["instruction"].strip():
        raise InputError(f"{where}: field 'instruction' is empty")
    if require_output and not row["output"].strip():
        raise InputError(f"{where}: field 'output' is empty")
    if "domain" in row and not isinstance(row["domain"], str):
        raise InputError(f"{where}: field 'domain' must be a string (the part's name)")
    if "meta" in row and not isinstance(row["meta"], dict):
        raise InputError(f"{where}: field 'meta' must be an object")
    if "messages" in row:
        derived = messages_fields(check_messages(row["messages"], where))
        for field, value in derived.items():
            if row[field] != value:
                what = {"instruction": "the first user turn", "input": "empty", "output": "the last assistant turn"}
                raise InputError(f"{where}: field {field!r} must be {what[field]} of field 'messages'")
    return row


def check_name(name: str, what: str = "part") -> str:
    """A part's (or target's) name: letters, digits, ``_.-``, not a reserved folder name; else one line."""
    if not isinstance(name, str) or not _NAME.match(name) or name in RESERVED_NAMES:
        raise InputError(
            f"{what} name {name!r}: use letters, digits, '_', '.' or '-' (not {' or '.join(RESERVED_NAMES)})"
        )
    return name


def part_files(spec: dict[str, Any]) -> list[str]:
    """The split files a part's config ``spec`` makes: its splits, and ``reference`` when it has a test split."""
    names = [s for s in DOMAIN_FILES if s in spec] + [s for s in spec if s not in DOMAIN_FILES]
    if "test" in spec and REFERENCE_SPLIT not in spec:
        names.append(REFERENCE_SPLIT)
    return names


def _record(item: dict[str, Any], domain: str, split: str, index: int, kind: str) -> dict[str, Any]:
    """One split record: the source row's own ``id`` when it has one, else ``<domain>-<split>-<index>``.

    A row's own id (a user's JSONL ``id``) is also kept as ``meta.source_id``, so that every derived
    file, which names records by ``id``, traces back to the user's row.
    """
    meta = {**item.get("meta", {}), "source": kind}
    if "id" in item:
        meta["source_id"] = item["id"]
        rid = str(item["id"])
    else:
        rid = f"{domain}-{split}-{index:05d}"
    record = {
        "id": rid,
        "domain": domain,
        "instruction": item["instruction"],
        "input": item["input"],
        "output": item["output"],
        "meta": meta,
    }
    if "messages" in item:
        record["messages"] = [{"role": m["role"], "content": m["content"]} for m in item["messages"]]
    return record


def build_domain(domain: str, spec: dict[str, Any], seed: int) -> dict[str, list[dict[str, Any]]]:
    """The splits of one domain from its config ``spec`` (``{split: {source, n, ...}}``).

    ``spec`` needs ``train``; any other split is optional, ``reference`` defaults to ``test`` (see the module
    docstring); a split whose spec has ``from`` is derived (:func:`derive_split`). Returns
    ``{split: records}`` for :func:`part_files`. Raises :class:`InputError` for a bad part name or source,
    an empty split, a source with too few distinct items, a malformed row, a split overlap, test records
    without outputs and no ``reference`` split, or a bad derived split.
    """
    check_name(domain)
    if TRAIN_SPLIT not in spec:
        raise InputError(f"part {domain!r}: split {TRAIN_SPLIT!r} missing from the config")
    for split in spec:
        check_name(split, "split")
    derived = {s: v for s, v in spec.items() if isinstance(v, dict) and "from" in v}
    spec = {s: v for s, v in spec.items() if s not in derived}
    for split in derived:
        if split in DOMAIN_FILES:
            raise InputError(
                f"part {domain!r}: split {split!r} is drawn from a source and cannot be derived with 'from'; "
                "name the derived split otherwise"
            )
    drawn = [s for s in part_files(spec) if s in spec]
    # Group splits by identical source settings so they are carved from one pool.
    pools: dict[str, list[str]] = {}
    for split in drawn:
        s = spec[split]
        key = json.dumps({k: v for k, v in s.items() if k != "n"}, sort_keys=True)
        pools.setdefault(key, []).append(split)
    out: dict[str, list[dict[str, Any]]] = {}
    where_of: dict[tuple[str, int], str] = {}  # (split, index) -> the row's origin, for error messages
    for key, splits in pools.items():
        settings = json.loads(key)
        kind = settings.pop("source", None)
        if kind is None:
            raise InputError(f"part {domain!r}: split {splits[0]!r} has no 'source'")
        need = sum(int(spec[s]["n"]) for s in splits)
        source_seed = int(settings.pop("seed", seed))
        items = load_source(kind, need, source_seed, settings.get("options", {}))
        # Validate every row before counting, so a malformed row is reported as such.
        wheres = []
        for i, item in enumerate(items):
            wheres.append(item.pop("_where", f"{kind}[{i}]"))
            validate_record(item, f"{domain} from {wheres[-1]}", require_output=splits != ["test"])
        distinct, seen = [], set()
        for item, where in zip(items, wheres, strict=True):
            sig = item_key(item)
            if sig not in seen:
                seen.add(sig)
                distinct.append((item, where))
        if len(distinct) < need:
            raise InputError(
                f"part {domain!r}: source {kind!r} gave {len(distinct)} distinct items, {need} needed "
                f"for splits {', '.join(splits)}"
            )
        start = 0
        for split in splits:
            n = int(spec[split]["n"])
            if n < 1:
                raise InputError(f"part {domain!r}: split {split!r} is empty (n={n})")
            rows = []
            for i, (item, where) in enumerate(distinct[start : start + n]):
                if split != "test" and not item["output"].strip():
                    raise InputError(f"{where}: field 'output' is empty ({domain} {split} record)")
                rows.append(_record(item, domain, split, i, kind))
                where_of[split, i] = where
            out[split] = rows
            start += n
    seen_sig: dict[tuple[Any, ...], tuple[str, int]] = {}
    seen_id: dict[str, tuple[str, int]] = {}
    for split in drawn:
        for i, r in enumerate(out[split]):
            sig = item_key(r)
            if sig in seen_sig and seen_sig[sig][0] != split:
                first = seen_sig[sig]
                raise InputError(
                    f"{where_of[split, i]}: fields 'instruction' and 'input' repeat {where_of[first]} "
                    f"(splits {first[0]} and {split} of part {domain!r} would share an item)"
                )
            seen_sig.setdefault(sig, (split, i))
            if r["id"] in seen_id:
                first = seen_id[r["id"]]
                raise InputError(
                    f"{where_of[split, i]}: field 'id' {r['id']!r} is also the id of {where_of[first]} "
                    f"({first[0]} split of part {domain!r}); ids must be unique across the pool"
                )
            seen_id[r["id"]] = (split, i)
    if "test" in out and REFERENCE_SPLIT not in out:
        missing = [r["id"] for r in out["test"] if not r["output"].strip()]
        if missing:
            raise InputError(
                f"part {domain!r}: test record {missing[0]} has no output to score the likelihood of; "
                f"give the domain a {REFERENCE_SPLIT!r} split"
            )
        out[REFERENCE_SPLIT] = out["test"]
    base = dict(out)  # a derived split is built from a drawn split (or the reference), never another derived one
    for split, d in derived.items():
        out[split] = derive_split(domain, split, d, base, seed)
    return out


def derive_split(
    domain: str, split: str, spec: dict[str, Any], built: dict[str, list[dict[str, Any]]], seed: int
) -> list[dict[str, Any]]:
    """The multiple-choice records of derived split ``split`` (``{from, choices, n, max_chars}``).

    The first ``n`` records (default all) of the built split ``from`` become multiple-choice records
    (:func:`gs.data.choices.build_choices`, distractors by the records' source kind, ``meta.source``,
    drawn from all the records of ``from``).
    Raises :class:`InputError` (one line naming the domain and split) for unknown keys, a missing
    ``from`` split, ``choices`` below 2, a bad ``n`` or whatever :func:`build_choices` rejects.
    """
    where = f"part {domain!r}: derived split {split!r}"
    unknown = sorted(set(spec) - set(DERIVED_KEYS))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; expected {', '.join(DERIVED_KEYS)}")
    source = spec["from"]
    if source not in built:
        raise InputError(
            f"{where}: 'from' names split {source!r}, which is not drawn; expected one of {', '.join(built)}"
        )
    choices = spec.get("choices")
    if isinstance(choices, bool) or not isinstance(choices, int) or choices < 2:
        raise InputError(f"{where}: 'choices' must be an integer of at least 2, got {choices!r}")
    records = built[source]
    n = spec.get("n", len(records))
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(records):
        raise InputError(f"{where}: 'n' must be an integer from 1 to {len(records)} (split {source!r}), got {n!r}")
    kinds = sorted({str((r.get("meta") or {}).get("source")) for r in records})
    if len(kinds) != 1:
        raise InputError(f"{where}: split {source!r} mixes source kinds {kinds}; one kind is needed")
    try:
        return build_choices(records, kinds[0], choices, seed, n=n, max_chars=spec.get("max_chars"))
    except InputError as e:
        raise InputError(f"{where}: {e}") from None


def write_domain(splits: dict[str, list[dict[str, Any]]], out_dir: str | Path) -> None:
    """Write ``out_dir/{split}.jsonl`` for every split built, derived splits included (each atomically)."""
    for split, rows in splits.items():
        write_jsonl(Path(out_dir) / f"{split}.jsonl", rows)


def load_records(path: str | Path, *, require_output: bool = True) -> list[dict[str, Any]]:
    """Read and validate a split file; every error names the file, the line and the field.

    Ids must be unique within the file (a repeat names both lines).
    """
    rows = read_jsonl(path)
    if not rows:
        raise InputError(f"{path}: empty split")
    first_line: dict[str, int] = {}
    for lineno, row in enumerate(rows, 1):
        validate_record(row, f"{path}:{lineno}", require_output=require_output)
        if "id" not in row:
            raise InputError(f"{path}:{lineno}: field 'id' missing")
        if "domain" not in row:
            raise InputError(f"{path}:{lineno}: field 'domain' missing")
        rid = str(row["id"])
        if rid in first_line:
            raise InputError(f"{path}:{lineno}: field 'id' {rid!r} repeats the id of line {first_line[rid]}")
        first_line[rid] = lineno
    return rows


def pool_splits(
    domain_dirs: list[str | Path], split: str, seed: int, seen: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """All domains' records of ``split``, shuffled together with ``seed`` (the clustering's input).

    Ids must be unique pool-wide: an id found in two domain files (or, through ``seen``, an id ->
    ``file:line`` map shared across calls, in two splits) is an :class:`InputError` naming both.
    """
    seen = {} if seen is None else seen
    rows: list[dict[str, Any]] = []
    for d in domain_dirs:
        path = Path(d) / f"{split}.jsonl"
        records = load_records(path, require_output=split != "test")
        for lineno, r in enumerate(records, 1):
            where = f"{path}:{lineno}"
            if r["id"] in seen:
                raise InputError(
                    f"{where}: field 'id' {r['id']!r} is also the id of {seen[r['id']]}; ids must be unique across "
                    "the pool"
                )
            seen[r["id"]] = where
        rows.extend(records)
    random.Random(seed).shuffle(rows)
    return rows


def build_target_validation(target: str, spec: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """A target's own validation examples (config ``targets.<name>.validation`` with a ``source``).

    ``spec``: ``{source, n, options}`` as a part's split; ``n`` absent = every row the source gives. A
    row's ``meta.subtask`` (an MMLU subject, a BBH task, a TydiQA language) groups the examples: the
    target's influence is the max over subtasks of the mean over each one's examples (LESS
    ``matching.py``). ``subtasks`` (optional, a list): keep only those subtasks' examples; a subtask named
    there that the data lacks is an error. Records are named ``<target>-validation-<index>`` unless the row
    has an id.
    """
    check_name(target, "target")
    kind = spec.get("source")
    if kind is None:
        raise InputError(f"target {target!r}: validation has no 'source'")
    n = spec.get("n")
    items = load_source(kind, None if n is None else int(n), int(spec.get("seed", seed)), spec.get("options", {}))
    if not items:
        raise InputError(f"target {target!r}: validation source {kind!r} gave no examples")
    records, seen = [], {}
    for i, item in enumerate(items):
        where = item.pop("_where", f"{kind}[{i}]")
        validate_record(item, f"target {target} from {where}")
        subtask = (item.get("meta") or {}).get("subtask")
        if subtask is not None and not isinstance(subtask, str):
            raise InputError(f"{where}: meta.subtask must be a string, got {subtask!r}")
        record = _record(item, target, "validation", i, kind)
        if record["id"] in seen:
            raise InputError(f"{where}: field 'id' {record['id']!r} is also the id of {seen[record['id']]}")
        seen[record["id"]] = where
        records.append(record)
    wanted = spec.get("subtasks")
    if wanted is not None:
        found = {(r["meta"] or {}).get("subtask") for r in records}
        missing = [name for name in wanted if name not in found]
        if missing:
            raise InputError(
                f"target {target!r}: subtask {missing[0]!r} named in the config has no validation examples in "
                f"the data (subtasks there: {', '.join(sorted(str(x) for x in found if x is not None)) or 'none'})"
            )
        records = [r for r in records if (r["meta"] or {}).get("subtask") in set(wanted)]
    return records


def summary_table(domain_dirs: list[str | Path], spec: dict[str, Any]) -> pd.DataFrame:
    """Counts per part and split with each split's source and license (a derived split: its ``from``
    split's source; a reference split the config does not name: the test split's)."""
    rows = []
    for d in domain_dirs:
        domain = Path(d).name
        for split in part_files(spec[domain]):
            n = len(read_jsonl(Path(d) / f"{split}.jsonl"))
            drawn = spec[domain].get(split, {}).get("from", split)
            source = spec[domain].get(drawn, spec[domain].get("test", {}))["source"]
            rows.append(
                {
                    "domain": domain,
                    "split": split,
                    "n": n,
                    "source": source,
                    "license": LICENSES.get(source, ""),
                }
            )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Prepare the pool's parts, the pooled train split and targets' data.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("part", help="write one part's splits")
    d.add_argument("--part", required=True)
    d.add_argument("--params", required=True, help="the part's config section as JSON")
    d.add_argument("--seed", type=int, required=True)
    d.add_argument("--out-dir", required=True)
    t = sub.add_parser("target", help="write a target's own validation examples")
    t.add_argument("--target", required=True)
    t.add_argument("--params", required=True, help="the target's validation section as JSON")
    t.add_argument("--seed", type=int, required=True)
    t.add_argument("--out", required=True)
    p = sub.add_parser("pool", help="pool the parts' train splits and write the summary table")
    p.add_argument("--part-dirs", nargs="+", required=True)
    p.add_argument("--params", required=True, help="the data.parts config section as JSON")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--summary", required=True)
    args = parser.parse_args(argv)
    if args.cmd == "part":
        splits = build_domain(args.part, parse_params(args.params), args.seed)
        write_domain(splits, args.out_dir)
        print(json.dumps({s: len(r) for s, r in splits.items()}))
    elif args.cmd == "target":
        records = build_target_validation(args.target, parse_params(args.params), args.seed)
        write_jsonl(args.out, records)
        print(json.dumps({"validation": len(records)}))
    else:
        pooled = pool_splits(args.part_dirs, TRAIN_SPLIT, args.seed)
        table = summary_table(args.part_dirs, parse_params(args.params))
        write_jsonl(Path(args.out_dir) / f"{TRAIN_SPLIT}.jsonl", pooled)
        with atomic_path(args.summary) as tmp:
            table.to_csv(tmp, index=False)
        print(table.to_string(index=False))


if __name__ == "__main__":
    run_cli(main)
