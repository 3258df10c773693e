"""The plan against a finished run: each job's predicted host peak beside the ``max_rss`` that
Snakemake's ``benchmark:`` recorded for it and the job's own kernel high-water mark.

    python -m gs.plan.compare --plan results/plan/plan.csv --benchmarks benchmarks --logs logs \
        --out-md results/plan/measured.md

Snakemake samples a job's RSS (its process tree's, summed) every 0.5 s for the first 15 s, then every
30 s, so a peak reached later and held briefly is missed (``prepare_model``'s GGUF de-quantisation: 468 MiB
sampled, 1563 MiB by ``/usr/bin/time -v``). Every ``gs`` command ends its log with its own ``VmHWM``
(:func:`gs.io.run_cli`), exact but for its own process only. Both are lower bounds of the job's true
peak: the comparison is against the larger (``measured_mib``).

A plan row names its rule and its jobs (``jobs``: the wildcard values, space-separated); Snakemake
writes a job's benchmark to ``benchmarks/<rule>/<job>.tsv`` (the rules' ``benchmark:`` paths). A job
that ran for under ``min_seconds`` is listed but not counted: Snakemake samples memory once a
second or so, so a sub-second job's ``max_rss`` is whatever it had reached at the first sample.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

from gs.io import PEAK_LINE, InputError, atomic_path, run_cli


def read_benchmarks(benchmark_dir: Path) -> pd.DataFrame:
    """One row per ``benchmarks/<rule>/<job>.tsv``: rule, job, wall seconds, max_rss (MiB), CPU seconds.

    A benchmark file repeated (``repeat()``) contributes its largest ``max_rss`` and its mean time.
    """
    rows = []
    for path in sorted(benchmark_dir.glob("*/*.tsv")):
        bench = pd.read_csv(path, sep="\t")
        if "max_rss" not in bench.columns or bench.empty:
            raise InputError(f"{path}: not a Snakemake benchmark file (no max_rss column or no rows)")
        rss = pd.to_numeric(bench["max_rss"], errors="coerce")
        rows.append(
            {
                "rule": path.parent.name,
                "job": path.stem,
                "wall_s": float(bench["s"].mean()),
                "max_rss_mib": float(rss.max()),
                "cpu_s": float(pd.to_numeric(bench.get("cpu_time", pd.Series([float("nan")])), errors="coerce").mean()),
            }
        )
    return pd.DataFrame(rows, columns=["rule", "job", "wall_s", "max_rss_mib", "cpu_s"])


def read_log_peaks(log_dir: Path) -> dict[tuple[str, str], float]:
    """``{(rule, job): MiB}`` from the last :data:`gs.io.PEAK_LINE` of each ``logs/<rule>/<job>.log``."""
    pattern = re.compile(re.escape(PEAK_LINE).replace(re.escape("{mib}"), r"(\d+)"))
    peaks = {}
    for path in sorted(log_dir.glob("*/*.log")):
        found = pattern.findall(path.read_text(errors="replace"))
        if found:
            peaks[(path.parent.name, path.stem)] = float(found[-1])
    return peaks


def compare(
    plan: pd.DataFrame,
    measured: pd.DataFrame,
    *,
    min_seconds: float = 2.0,
    log_peaks: dict[tuple[str, str], float] | None = None,
) -> pd.DataFrame:
    """Each measured job beside its plan row: ``error_pct`` = (planned - measured) / measured x 100,
    measured = the larger of the benchmark's ``max_rss`` and the job's logged VmHWM (``log_peaks``).

    ``counted`` is false for jobs shorter than ``min_seconds`` (see the module doc) and for jobs no
    plan row names. Jobs of a plan row that did not run (another config) are not listed.
    """
    planned: dict[tuple[str, str], pd.Series] = {}
    for _, row in plan.iterrows():
        for job in str(row.get("jobs", "") or "").split():
            planned[(str(row["rule"]), job)] = row
    out = []
    for _, m in measured.iterrows():
        p = planned.get((m["rule"], m["job"]))
        host = None if p is None else float(p["host_peak_mib"])
        hwm = (log_peaks or {}).get((m["rule"], m["job"]))
        rss = max(float(m["max_rss_mib"]), hwm or 0.0)
        error = None if host is None or not rss else round(100 * (host - rss) / rss)
        out.append(
            {
                "rule": m["rule"],
                "job": m["job"],
                "stage": None if p is None else p["stage"],
                "max_rss_mib": round(float(m["max_rss_mib"]), 1),
                "vmhwm_mib": hwm,
                "measured_mib": round(rss, 1),
                "planned_mib": host,
                "error_pct": error,
                "wall_s": round(float(m["wall_s"]), 1),
                "planned_cpu_s": None if p is None else round(float(p["cpu_time_h"]) * 3600, 1),
                "counted": p is not None and float(m["wall_s"]) >= min_seconds,
            }
        )
    return pd.DataFrame(out)


def summary(table: pd.DataFrame, tolerance_pct: float = 30.0) -> str:
    """One line: how many counted jobs have their planned host peak within ``tolerance_pct``."""
    counted = table[table["counted"]]
    within = int((counted["error_pct"].abs() <= tolerance_pct).sum())
    return (
        f"planned host peak within {tolerance_pct:.0f}% of the measured peak: {within} of {len(counted)} jobs"
        f" ({len(table) - len(counted)} jobs under 2 s or without a plan row not counted)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The plan's host-memory predictions against the measured peaks.")
    parser.add_argument("--plan", default="results/plan/plan.csv")
    parser.add_argument("--benchmarks", default="benchmarks")
    parser.add_argument("--logs", default="logs", help="the jobs' logs (their VmHWM lines); absent: benchmarks only")
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--out-md", default=None)
    args = parser.parse_args(argv)
    if not Path(args.plan).is_file():
        raise InputError(f"{args.plan}: plan not found (run python -m gs.plan first)")
    measured = read_benchmarks(Path(args.benchmarks))
    if measured.empty:
        raise InputError(f"{args.benchmarks}: no benchmarks/<rule>/<job>.tsv files (run the workflow first)")
    peaks = read_log_peaks(Path(args.logs)) if Path(args.logs).is_dir() else {}
    table = compare(pd.read_csv(args.plan), measured, min_seconds=args.min_seconds, log_peaks=peaks)
    text = table.to_markdown(index=False) + "\n\n" + summary(table) + "\n"
    print(text)
    if args.out_md:
        Path(args.out_md).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.out_md) as tmp:
            Path(tmp).write_text(text)


if __name__ == "__main__":
    run_cli(main)
