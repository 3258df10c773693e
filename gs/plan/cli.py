"""Command line of the planner: read the config as Snakemake does, plan every stage, print and write
the table, and fail with one line naming the stages that do not fit."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from gs.io import InputError, atomic_path
from gs.plan import devices
from gs.plan.arch import model_config
from gs.plan.host import measure_baselines
from gs.plan.report import Row, predict, table
from gs.plan.resources import RuleResources, read_profile, rule_resources, workflow_resources
from gs.plan.stages import MODEL_IMPORTS, Planner

DEFAULTS = {"gpu": "H100-80GB", "run_on": "cpu", "profile": None, "mfu": 0.4, "bandwidth_efficiency": 0.7}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Snakemake's config update: nested mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(configfile: str | Path, base: str | Path = "config/config.yaml") -> dict[str, Any]:
    """``base`` (the Snakefile's ``configfile:``) updated by ``configfile``, as ``--configfile`` does."""

    def read(path: Path) -> dict[str, Any]:
        if not path.is_file():
            raise InputError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise InputError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: a config is a YAML mapping")
        return data

    config = read(Path(configfile))
    if Path(base).is_file() and Path(base).resolve() != Path(configfile).resolve():
        config = _merge(read(Path(base)), config)
    return config


def _markdown(records: list[dict[str, Any]], gpu: devices.Gpu, run_on: str, notes: list[str]) -> str:
    cols = ["stage", "rule", "device_peak_gib", "host_peak_gib", "gpu_time_h", "cpu_time_h"]
    cols += ["mem_mb", "runtime_min", "gpu", "fits", "problems"]
    lines = [
        f"Resource plan: device memory and time on one {gpu.name} ({gpu.source}); jobs run on: {run_on}.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in records:
        lines.append("| " + " | ".join("" if r[c] is None else str(r[c]) for c in cols) + " |")
    return "\n".join(lines + [""] + notes) + "\n"


def plan(
    config: dict[str, Any],
    *,
    configfile: str | Path,
    snakefile: str | Path = "Snakefile",
    baseline_bytes: int | None = None,
    cpu_flops: float | None = None,
    declared: dict[str, dict[str, Any]] | None = None,
    full_depth: bool = False,
) -> tuple[list[Row], list[str]]:
    """Rows of every stage of ``config`` and notes on where the numbers came from.

    ``baseline_bytes``/``cpu_flops``/``declared`` replace the measured import baseline, the measured
    CPU throughput and the workflow's rule resources (tests).
    """
    settings = {**DEFAULTS, **config.get("plan", {})}
    run_on = str(settings["run_on"])
    if run_on not in ("cpu", "gpu"):
        raise InputError(f"plan.run_on: expected cpu or gpu, got {run_on!r}")
    gpu = devices.gpu(str(settings["gpu"]))
    hf, source = model_config(config["model"])
    start = time.perf_counter()
    stages = Planner(config, hf, full_depth=full_depth).stages()
    traced = time.perf_counter() - start
    model_module = f"transformers.models.{hf.model_type}.modeling_{hf.model_type}"
    imports = {s.stage: s.imports + ((model_module,) if MODEL_IMPORTS[0] in s.imports else ()) for s in stages}
    if baseline_bytes is None:
        baselines = measure_baselines(list(imports.values()))
    else:
        baselines = {v: int(baseline_bytes) for v in imports.values()}
    if cpu_flops is None:
        cpu_flops = devices.measure_cpu_flops(1)
    if declared is None:
        declared = workflow_resources(snakefile, configfile)
    profile = read_profile(settings["profile"])
    rows = []
    for s in stages:
        res = rule_resources(s.rule, declared.get(s.rule, {}), profile) if s.rule in declared else RuleResources()
        rows.append(
            predict(
                s,
                baselines[imports[s.stage]],
                run_on,
                gpu,
                float(settings["mfu"]),
                float(settings["bandwidth_efficiency"]),
                cpu_flops,
                res,
            )
        )
    notes = [
        f"Model architecture: {source}; steps traced under FakeTensorMode in {traced:.0f} s.",
        f"GPU time: FLOPs / ({gpu.name} peak x MFU {settings['mfu']}) or bytes streamed / "
        f"({gpu.bandwidth_tbs} TB/s x {settings['bandwidth_efficiency']}), the larger.",
        f"CPU time: FLOPs / (measured float32 matmul {cpu_flops / 1e9:.1f} GFLOP/s per thread x the rule's threads).",
        "Host peak: measured import baseline per stage + host arrays + "
        + ("the traced step." if run_on == "cpu" else "the weights (loaded on the host first)."),
        f"Resources: the rules' own, updated by profile {settings['profile'] or '(none)'}.",
    ]
    return rows, notes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Predicted memory and time of every stage, against its resources.")
    parser.add_argument("--configfile", required=True)
    parser.add_argument("--snakefile", default="Snakefile")
    parser.add_argument("--out-csv", default="results/plan/plan.csv")
    parser.add_argument("--out-md", default="results/plan/plan.md")
    parser.add_argument(
        "--full-depth", action="store_true", help="trace every layer (slower; default: 1 and 2, extended)"
    )
    args = parser.parse_args(argv)
    config = load_config(args.configfile)
    from snakemake.utils import validate

    validate(config, "config/schema.yaml")
    rows, notes = plan(config, configfile=args.configfile, snakefile=args.snakefile, full_depth=args.full_depth)
    settings = {**DEFAULTS, **config.get("plan", {})}
    records = table(rows)
    md = _markdown(records, devices.gpu(settings["gpu"]), settings["run_on"], notes)
    print(md)
    bad = [r for r in rows if not r.fits]
    if bad:
        raise InputError(
            f"{args.configfile}: {len(bad)} stage(s) cannot fit: "
            + "; ".join(f"{r.rule} ({r.stage}): {', '.join(r.problems)}" for r in bad)
        )
    Path(args.out_csv).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out_csv) as tmp:
        pd.DataFrame(records).to_csv(tmp, index=False)
    Path(args.out_md).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out_md) as tmp:
        Path(tmp).write_text(md)
