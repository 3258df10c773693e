"""Four-domain instruction data: per-domain train / validation / test splits and the pooled sets.

Output format (JSONL), one record per line::

    {"id": "math-train-00000", "domain": "math", "instruction": str, "input": str, "output": str,
     "meta": {...}}    # meta: gold answer, unit tests or writing constraints, for scoring

The ``domain`` label is kept for measuring cluster quality and for per-domain scores; the
clustering stages never read it (:mod:`gs.cluster` takes ids and gradients or text only).

Splits of one domain that draw on the same source are carved from one seeded pool in the order
train, validation, test, reference, so they are disjoint by construction; a check on (instruction,
input) guards that across all splits.

The ``reference`` split holds held-out records with reference outputs, for the likelihood tasks
(how probable each system finds the reference answer). It is the test split when every test record
has an output; a domain whose test set has none (the Tree-of-Thoughts writing prompts) names its
own ``reference`` split in the config.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from gs.io import InputError, atomic_path, parse_params, read_jsonl, run_cli, write_jsonl
from gs.sources import LICENSES, load_source

DOMAINS = ("math", "code", "finance", "writing")
SPLITS = ("train", "validation", "test")
REFERENCE_SPLIT = "reference"
#: Every file a domain folder holds: the three splits and the reference records.
DOMAIN_FILES = (*SPLITS, REFERENCE_SPLIT)
TEXT_FIELDS = ("instruction", "input", "output")


def validate_record(row: Any, where: str, *, require_output: bool = True) -> dict[str, Any]:
    """Check one record; raise a one-line :class:`InputError` naming ``where`` and the field."""
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
    if "domain" in row and row["domain"] not in DOMAINS:
        raise InputError(f"{where}: field 'domain' has unknown domain {row['domain']!r}")
    if "meta" in row and not isinstance(row["meta"], dict):
        raise InputError(f"{where}: field 'meta' must be an object")
    return row


def check_domain(domain: str) -> str:
    if domain not in DOMAINS:
        raise InputError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    return domain


def build_domain(domain: str, spec: dict[str, Any], seed: int) -> dict[str, list[dict[str, Any]]]:
    """The splits of one domain from its config ``spec`` (``{split: {source, n, ...}}``).

    ``spec`` needs ``train``, ``validation`` and ``test``; ``reference`` is optional (see the module
    docstring). Returns ``{split: records}`` for :data:`DOMAIN_FILES`. Raises :class:`InputError`
    for an unknown domain or source, an empty split, a source with too few distinct items, a
    malformed row, a split overlap, or test records without outputs and no ``reference`` split.
    """
    check_domain(domain)
    for split in SPLITS:
        if split not in spec:
            raise InputError(f"domain {domain!r}: split {split!r} missing from the config")
    unknown = sorted(set(spec) - set(DOMAIN_FILES))
    if unknown:
        raise InputError(f"domain {domain!r}: unknown split(s) {unknown}; expected {', '.join(DOMAIN_FILES)}")
    drawn = [s for s in DOMAIN_FILES if s in spec]
    # Group splits by identical source settings so they are carved from one pool.
    pools: dict[str, list[str]] = {}
    for split in drawn:
        s = spec[split]
        key = json.dumps({k: v for k, v in s.items() if k != "n"}, sort_keys=True)
        pools.setdefault(key, []).append(split)
    out: dict[str, list[dict[str, Any]]] = {}
    for key, splits in pools.items():
        settings = json.loads(key)
        kind = settings.pop("source", None)
        if kind is None:
            raise InputError(f"domain {domain!r}: split {splits[0]!r} has no 'source'")
        need = sum(int(spec[s]["n"]) for s in splits)
        source_seed = int(settings.pop("seed", seed))
        items = load_source(kind, need, source_seed, settings.get("options", {}))
        # Validate every row before counting, so a malformed row is reported as such.
        for i, item in enumerate(items):
            where = item.pop("_where", f"{kind}[{i}]")
            validate_record(item, f"{domain} from {where}", require_output=splits != ["test"])
        distinct, seen = [], set()
        for item in items:
            sig = (item.get("instruction"), item.get("input"))
            if sig not in seen:
                seen.add(sig)
                distinct.append(item)
        if len(distinct) < need:
            raise InputError(
                f"domain {domain!r}: source {kind!r} gave {len(distinct)} distinct items, {need} needed "
                f"for splits {', '.join(splits)}"
            )
        start = 0
        for split in splits:
            n = int(spec[split]["n"])
            if n < 1:
                raise InputError(f"domain {domain!r}: split {split!r} is empty (n={n})")
            rows = []
            for i, item in enumerate(distinct[start : start + n]):
                if split != "test" and not item["output"].strip():
                    raise InputError(f"domain {domain!r}: {split} item {start + i} of {kind!r} has no output")
                rows.append(
                    {
                        "id": f"{domain}-{split}-{i:05d}",
                        "domain": domain,
                        "instruction": item["instruction"],
                        "input": item["input"],
                        "output": item["output"],
                        "meta": {**item.get("meta", {}), "source": kind},
                    }
                )
            out[split] = rows
            start += n
    sigs = [{(r["instruction"], r["input"]) for r in out[s]} for s in drawn]
    for a in range(len(drawn)):
        for b in range(a + 1, len(drawn)):
            if sigs[a] & sigs[b]:
                raise InputError(f"domain {domain!r}: splits {drawn[a]} and {drawn[b]} share items")
    if REFERENCE_SPLIT not in out:
        missing = [r["id"] for r in out["test"] if not r["output"].strip()]
        if missing:
            raise InputError(
                f"domain {domain!r}: test record {missing[0]} has no output to score the likelihood of; "
                f"give the domain a {REFERENCE_SPLIT!r} split"
            )
        out[REFERENCE_SPLIT] = out["test"]
    return out


def write_domain(splits: dict[str, list[dict[str, Any]]], out_dir: str | Path) -> None:
    """Write ``out_dir/{split}.jsonl`` for every file of :data:`DOMAIN_FILES` (each atomically)."""
    for split in DOMAIN_FILES:
        write_jsonl(Path(out_dir) / f"{split}.jsonl", splits[split])


def load_records(path: str | Path, *, require_output: bool = True) -> list[dict[str, Any]]:
    """Read and validate a split file; every error names the file, the line and the field."""
    rows = read_jsonl(path)
    if not rows:
        raise InputError(f"{path}: empty split")
    for lineno, row in enumerate(rows, 1):
        validate_record(row, f"{path}:{lineno}", require_output=require_output)
        if "id" not in row:
            raise InputError(f"{path}:{lineno}: field 'id' missing")
        if "domain" not in row:
            raise InputError(f"{path}:{lineno}: field 'domain' missing")
    return rows


def pool_splits(domain_dirs: list[str | Path], split: str, seed: int) -> list[dict[str, Any]]:
    """All domains' records of ``split``, shuffled together with ``seed`` (the clustering's input)."""
    rows: list[dict[str, Any]] = []
    for d in domain_dirs:
        rows.extend(load_records(Path(d) / f"{split}.jsonl", require_output=split != "test"))
    ids = Counter(r["id"] for r in rows)
    dup = [i for i, c in ids.items() if c > 1]
    if dup:
        raise InputError(f"duplicate id {dup[0]!r} across domains")
    random.Random(seed).shuffle(rows)
    return rows


def summary_table(domain_dirs: list[str | Path], spec: dict[str, Any]) -> pd.DataFrame:
    """Counts per domain and split with each split's source and license."""
    rows = []
    for d in domain_dirs:
        domain = Path(d).name
        for split in DOMAIN_FILES:
            n = len(read_jsonl(Path(d) / f"{split}.jsonl"))
            # A reference split the config does not name is the test split.
            source = spec[domain].get(split, spec[domain]["test"])["source"]
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
    parser = argparse.ArgumentParser(description="Prepare the four-domain instruction data.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("domain", help="write one domain's train/validation/test/reference splits")
    d.add_argument("--domain", required=True)
    d.add_argument("--params", required=True, help="the domain's config section as JSON")
    d.add_argument("--seed", type=int, required=True)
    d.add_argument("--out-dir", required=True)
    p = sub.add_parser("pool", help="pool the domains' splits and write the summary table")
    p.add_argument("--domain-dirs", nargs="+", required=True)
    p.add_argument("--params", required=True, help="the data.domains config section as JSON")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--summary", required=True)
    args = parser.parse_args(argv)
    if args.cmd == "domain":
        splits = build_domain(args.domain, parse_params(args.params), args.seed)
        write_domain(splits, args.out_dir)
        print(json.dumps({s: len(r) for s, r in splits.items()}))
    else:
        pooled = {s: pool_splits(args.domain_dirs, s, args.seed) for s in SPLITS}
        table = summary_table(args.domain_dirs, parse_params(args.params))
        for split, rows in pooled.items():
            write_jsonl(Path(args.out_dir) / f"{split}.jsonl", rows)
        with atomic_path(args.summary) as tmp:
            table.to_csv(tmp, index=False)
        print(table.to_string(index=False))


if __name__ == "__main__":
    run_cli(main)
