"""The router table: each method's router, held-out accuracy as mean and spread over seeds.

Reads ``results/router/<method>/router.json`` (:mod:`gs.router.train`): ``heldout_by_seed`` holds the held-out
accuracy and the majority-class baseline at each of ``router.eval_seeds`` seeds (split and classifier
initialisation); the spread is :func:`gs.spread.spread` (mean, sample sd, min-max). A
``router.json`` without ``heldout_by_seed`` (written before it existed) counts its one ``heldout_accuracy``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd

from gs.io import InputError, atomic_path, markdown_table, read_json, run_cli
from gs.spread import fmt_spread, spread

TITLE = "Router accuracy (held-out training prompts, cluster ids as labels)"


def router_rows(router_dirs: dict[str, Path]) -> pd.DataFrame:
    """One row per method: ``seeds``, ``heldout_accuracy_<stat>`` and ``majority_baseline_<stat>`` for the
    :data:`gs.spread.STATS`, and the router's ``experts``, ``encoder``, ``heldout_accuracy`` (the configured
    seed's), ``n_heldout``, ``train_accuracy``, ``latency_ms_per_prompt``."""
    rows = []
    for method, folder in router_dirs.items():
        path = Path(folder) / "router.json"
        info = read_json(path, "router info")
        by_seed = info.get("heldout_by_seed") or [
            {
                "seed": info.get("seed"),
                "heldout_accuracy": info.get("heldout_accuracy"),
                "majority_baseline_accuracy": info.get("majority_baseline_accuracy"),
            }
        ]
        if not isinstance(by_seed, list) or not all(isinstance(r, dict) for r in by_seed):
            raise InputError(f"{path}: heldout_by_seed must be a list of objects")
        row: dict[str, Any] = {
            "method": method,
            "experts": len(info.get("expert_ids", [])),
            "encoder": info.get("encoder"),
        }
        acc = spread(r.get("heldout_accuracy") for r in by_seed)
        base = spread(r.get("majority_baseline_accuracy") for r in by_seed)
        row["seeds"] = acc.pop("n")
        base.pop("n")
        row.update({f"heldout_accuracy_{k}": v for k, v in acc.items()})
        row.update({f"majority_baseline_{k}": v for k, v in base.items()})
        row.update(
            {
                "heldout_accuracy": info.get("heldout_accuracy"),  # the configured seed's, as router.json
                "n_heldout": info.get("n_heldout"),
                "train_accuracy": info.get("train_accuracy"),
                "latency_ms_per_prompt": info.get("latency_ms_per_prompt"),
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def table_markdown(df: pd.DataFrame) -> str:
    lines = [
        f"# {TITLE}",
        "",
    ]
    rows = []
    for r in df.to_dict("records"):
        acc = fmt_spread(*(r[f"heldout_accuracy_{k}"] for k in ("mean", "sd", "min", "max")))
        base = fmt_spread(*(r[f"majority_baseline_{k}"] for k in ("mean", "sd", "min", "max")))
        train = "n/a" if r["train_accuracy"] is None else f"{float(r['train_accuracy']):.3f}"
        lat = "n/a" if r["latency_ms_per_prompt"] is None else f"{float(r['latency_ms_per_prompt']):.1f}"
        rows.append([r["method"], r["experts"], r["encoder"], r["seeds"], acc, base, r["n_heldout"], train, lat])
    columns = ["method", "experts", "encoder", "seeds", "held-out accuracy", "majority baseline", "n held out"]
    columns += ["train accuracy", "latency (ms/prompt)"]
    lines += markdown_table(columns, rows, "lrlrllrrr")
    note = (
        "\nHeld-out accuracy and the majority-class baseline (the training part's most frequent cluster): "
        "mean ± sd [min, max] over seeds (each seed draws its own stratified held-out split and classifier "
        "initialisation; gs.router.train). Train accuracy and latency: the router refitted on all prompts at the "
        "first seed.\n"
    )
    return "\n".join(lines) + "\n" + note


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Router table: held-out accuracy over seeds.")
    parser.add_argument("--routers", nargs="+", required=True, help="METHOD=router folder (router.json)")
    parser.add_argument("--out-table", required=True, help="stem: <stem>.csv and <stem>.md")
    args = parser.parse_args(argv)
    dirs = {}
    for item in args.routers:
        name, _, path = item.partition("=")
        if not path:
            raise InputError(f"--routers: expected METHOD=folder, got {item!r}")
        dirs[name] = Path(path)
    df = router_rows(dirs)
    stem = Path(args.out_table)
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        df.to_csv(tmp, index=False)
    with atomic_path(stem.with_suffix(".md")) as tmp:
        Path(tmp).write_text(table_markdown(df), encoding="utf-8")
    print(df.to_string(index=False))


if __name__ == "__main__":
    run_cli(main)
