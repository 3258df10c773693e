"""Command line of the planner: read the config as Snakemake does, plan every stage, print and write
the table, and fail with one line naming the stages that do not fit."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import pandas as pd

from gs.gradients.projection import FAST_JL_MAX_BATCH
from gs.io import InputError, atomic_path, markdown_table, read_config_file, studies, take_own_sections
from gs.models.dtype import CpuDtypeChoice, write_choice
from gs.models.dtype import choose as choose_cpu_dtype
from gs.plan import devices
from gs.plan.arch import model_config
from gs.plan.host import cached_baselines
from gs.plan.lengths import PoolLengths, pool_lengths
from gs.plan.report import Row, predict, table
from gs.plan.resources import RuleResources, read_profile, rule_resources, workflow_resources
from gs.plan.stages import MODEL_IMPORTS, Planner, Stage
from gs.plan.stages import experts_per_method as planner_k

BASELINE_WORKERS = 2  # import baselines measured at once (subprocesses of the plan job)
DEFAULTS = {"gpu": "H100-80GB", "run_on": "cpu", "profile": None, "mfu": 0.4, "bandwidth_efficiency": 0.7}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Snakemake's config update: nested mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(configfile: str | Path, base: str | Path = "config/config.yaml") -> dict[str, Any]:
    """``base`` (the Snakefile's ``configfile:``) updated by ``configfile``, as ``--configfile`` does, and
    ``configfile``'s own ``data.parts`` and ``targets`` in place of the base's (the Snakefile does the same)."""

    own = read_config_file(configfile)
    config = own
    if Path(base).is_file() and Path(base).resolve() != Path(configfile).resolve():
        config = _merge(read_config_file(base), own)
        take_own_sections(config, own)  # as the Snakefile does
    return config


def check_tasks(config: dict[str, Any]) -> None:
    """Every target's lm-eval task exists (lm-eval's own or a YAML of gs/lm_eval_tasks): one line otherwise."""
    from gs.evaluation.tasks import check_known, suite_tasks, task_specs

    specs = task_specs(config["targets"])
    if any(s.task not in suite_tasks() for s in specs):
        from lm_eval.tasks import TaskManager

        index = TaskManager()
        check_known(specs, index.all_tasks, index.all_groups)


def gpu_hours(records: list[dict[str, Any]]) -> float:
    """GPU-hours of the whole DAG: per row that holds a GPU (a device peak, or a GPU in its resources) its
    jobs (``jobs``, space-separated) x its ``gpu_time_h`` (a sharded stage's row is its largest shard, so the
    sum is an upper bound there). Host-only rows (their time is host work) hold no GPU and are left out."""
    return sum(len(str(r.get("jobs") or "").split()) * float(r["gpu_time_h"] or 0) for r in records if _holds_gpu(r))


def _holds_gpu(r: dict[str, Any]) -> bool:
    return float(r.get("device_peak_gib") or 0) > 0 or float(r.get("gpu") or 0) >= 1


def floor_hours(records: list[dict[str, Any]]) -> float:
    """GPU-hours of the whole DAG's floor (:func:`gs.plan.report.predict`): per row that holds a GPU, its
    jobs x its ``floor_gpu_h``, where the part every job of a row repeats (``floor_shared_gpu_h``: the
    validation gradients each influence shard recomputes) counts once."""
    total = 0.0
    for r in records:
        if _holds_gpu(r):
            jobs, shared = len(str(r.get("jobs") or "").split()), float(r.get("floor_shared_gpu_h") or 0)
            total += jobs * (float(r.get("floor_gpu_h") or 0) - shared) + (shared if jobs else 0)
    return total


def gpu_hours_line(records: list[dict[str, Any]]) -> str:
    """``gpu_hours planned=<X> floor=<Y> ratio=<X/Y>`` of the whole DAG."""
    planned, floor = gpu_hours(records), floor_hours(records)
    ratio = f"{planned / floor:.2f}" if floor > 0 else "n/a"
    return f"gpu_hours planned={planned:.2f} floor={floor:.2f} ratio={ratio}"


def _markdown(records: list[dict[str, Any]], gpu: devices.Gpu, run_on: str, notes: list[str]) -> str:
    cols = ["stage", "rule", "device_peak_gib", "host_peak_gib", "gpu_time_h", "floor_gpu_h", "planned_over_floor"]
    cols += ["cpu_time_h"]
    cols += ["mem_mb", "runtime_min", "gpu", "fits", "problems"]
    lines = [
        f"Resource plan: device memory and time on one {gpu.name} ({gpu.source}); jobs run on: {run_on}.",
        "",
        *markdown_table(cols, (["" if r[c] is None else r[c] for c in cols] for r in records)),
    ]
    stage_notes = [f"{r['stage']}: {r['note']}." for r in records if r.get("note")]
    total = f"gpu_hours total={gpu_hours(records):.2f}"
    return "\n".join(lines + [""] + stage_notes + notes + ["", total, gpu_hours_line(records)]) + "\n"


def _check_fast_jl(planned: bool) -> str:
    """Where this process sees a GPU, the plan's ``plan.fast_jl`` must match what runs here (a plan that counts
    CudaProjector where only BasicProjector runs would be many times short): one line otherwise. Elsewhere
    (a login node, a laptop) the claim stands as the config's, and the note says it was not checked."""
    import torch

    from gs.gradients.projection import fast_jl_available

    if not torch.cuda.is_available():
        return (
            "plan.fast_jl: true, as the config says: not checked here (no GPU); envs/build_fast_jl.sh builds it."
            if planned
            else ""
        )
    runs = fast_jl_available(torch.device("cuda"))
    if planned and not runs:
        raise InputError("plan.fast_jl: true, but fast_jl does not run on this GPU: bash envs/build_fast_jl.sh")
    return "" if planned or not runs else "fast_jl runs here but plan.fast_jl is false: the plan counts BasicProjector."


def plan(
    config: dict[str, Any],
    *,
    configfile: str | Path,
    snakefile: str | Path = "Snakefile",
    baseline_bytes: int | None = None,
    cpu_flops: float | None = None,
    host_bandwidth: float | None = None,
    declared: dict[str, dict[str, Any]] | None = None,
    full_depth: bool = False,
    draw_rate: float | None = None,
    dtype_choice: CpuDtypeChoice | None = None,
    lengths: PoolLengths | None = None,
) -> tuple[list[Row], list[str]]:
    """Rows of every stage of ``config`` and notes on where the numbers came from.

    ``baseline_bytes``/``cpu_flops``/``host_bandwidth``/``declared``/``draw_rate`` replace the measured
    import baseline, the measured CPU throughput (one rate, or rates by dtype), host memory bandwidth and
    Rademacher draw rate and the workflow's rule resources (tests). ``dtype_choice``: what ``dtype: auto``
    runs in on this CPU (:func:`gs.models.dtype.choose`, measured when None on a CPU run); on a GPU run
    ``auto`` is planned as bfloat16.
    """
    settings = {**DEFAULTS, **config.get("plan", {})}
    run_on = str(settings["run_on"])
    if run_on not in ("cpu", "gpu"):
        raise InputError(f"plan.run_on: expected cpu or gpu, got {run_on!r}")
    gpu = devices.gpu(str(settings["gpu"]))
    fast_jl_note = _check_fast_jl(bool(settings.get("fast_jl", False)))
    hf, source = model_config(config["model"])
    if run_on == "cpu" and dtype_choice is None:
        dtype_choice = choose_cpu_dtype(*hf_shapes(hf))
    auto_dtype = dtype_choice.dtype if run_on == "cpu" else "bfloat16"
    lengths = lengths if lengths is not None else pool_lengths(config)
    start = time.perf_counter()
    planner = Planner(config, hf, full_depth=full_depth, draw_rate=draw_rate, auto_dtype=auto_dtype, lengths=lengths)
    stages = planner.stages()
    n_methods = len(config["cluster"]["methods"]) + len(config["cluster"].get("ablation_dims", []))
    k = planner_k(config)
    # Both forms of the gradient passes (one job, shards), for the shard count that fits (shard_note).
    variants = {s: planner.gradient_jobs(s, n_methods, k) for s in (1, 2)}
    traced = time.perf_counter() - start
    model_module = f"transformers.models.{hf.model_type}.modeling_{hf.model_type}"

    def with_model(s):
        """A stage's imports; one that runs the model also imports peft and the architecture's module."""
        if s.work or MODEL_IMPORTS[0] in s.imports:
            return tuple(dict.fromkeys(s.imports + MODEL_IMPORTS + (model_module,)))
        return s.imports

    # Rule plan itself: this process (its imports, the workflow API, the model's module for the traces).
    own = Stage("resource plan", "plan", ["plan"], ("gs.plan.cli", "snakemake.api", model_module))
    stages = stages + [own]
    imports = {s.stage: with_model(s) for s in stages}
    import_sets = list(dict.fromkeys(list(imports.values()) + [with_model(s) for v in variants.values() for s in v]))
    if baseline_bytes is None:
        baselines, measured = cached_baselines(import_sets, workers=BASELINE_WORKERS)
    else:
        baselines, measured = {v: int(baseline_bytes) for v in import_sets}, import_sets
    own.host_extra = plan_host_bytes({v: baselines[v] for v in measured}, BASELINE_WORKERS)
    if cpu_flops is None:
        # Each dtype the stages compute in, at its own measured rate (bfloat16 is emulated, and many times
        # slower, on a CPU without AVX512-BF16 or AMX).
        used = {w.dtype for s in stages for w in s.work}
        used |= {cost.dtype for s in stages for cost, _ in s.projector_calls.values()}
        cpu_flops = {d: devices.measure_cpu_flops(1, dtype=d) for d in sorted(used | {"float32"})}
    if host_bandwidth is None:
        host_bandwidth = devices.measure_host_bandwidth()
    if declared is None:
        declared = workflow_resources(snakefile, configfile)
    profile = read_profile(settings["profile"])

    def row_of(s) -> Row:
        res = rule_resources(s.rule, declared.get(s.rule, {}), profile) if s.rule in declared else RuleResources()
        return predict(
            s,
            baselines[with_model(s)],
            run_on,
            gpu,
            float(settings["mfu"]),
            float(settings["bandwidth_efficiency"]),
            cpu_flops,
            res,
            host_bandwidth,
        )

    rows = [row_of(s) for s in stages]
    notes = [
        f"Model architecture: {source}; steps traced under FakeTensorMode in {traced:.0f} s.",
        lengths.describe()
        + " Gradient passes: batches sorted by length in windows of gradients.projection_rows samples"
        " (gs.gradients.per_sample.length_batches); training: shuffled micro-batches (gs.models.lora.train_lora);"
        " each batch at its padded length (gs.plan.lengths.LengthFit: the step traced at 3 lengths).",
        "Floor (floor_gpu_h): the model FLOPs a stage cannot do without at the plan's MFU: each sample once per"
        " pass it needs (extraction: its response and ELREA losses; LESS: each checkpoint) at its own length,"
        " no padding, no projection, SVD or host work, training without gradient checkpointing's second forward;"
        " evaluation and latency: their traced FLOPs (no memory-bound term). Validation sets are taken at"
        " max_length in both.",
        f"GPU time: FLOPs / ({gpu.name} peak x MFU {settings['mfu']}) or bytes streamed / "
        f"({gpu.bandwidth_tbs} TB/s x {settings['bandwidth_efficiency']}), the larger.",
        "CPU time: FLOPs / (measured matmul rate of the dtype the work runs in, per thread, x the rule's threads): "
        + ", ".join(f"{d} {devices.cpu_rate(cpu_flops, d) / 1e9:.1f} GFLOP/s" for d in _rated(cpu_flops))
        + ".",
        *([dtype_choice.describe()] if dtype_choice is not None else []),
        f"dtype auto is planned as {auto_dtype}"
        + (" (a GPU that supports bfloat16)." if run_on == "gpu" else " (the faster on this CPU, above)."),
        "Host peak: measured import baseline per stage + host arrays + "
        + ("the traced step." if run_on == "cpu" else "nothing of the model (loaded straight onto the GPU)."),
        "Host arithmetic (the coherence pass's float64 cluster sums on the host): bytes streamed / "
        f"(measured one-thread float64 add bandwidth {host_bandwidth / 1e9:.1f} GB/s), added to the stage's time.",
        f"Resources: the rules' own, updated by profile {settings['profile'] or '(none)'}.",
        "Projection ablation (gs.cluster.ablation, on the host on any run): "
        "its float32 projections at the CPU rate above"
        + (
            f" and TRAK's Rademacher draw at the measured one-thread {planner.draw_rate / 1e6:.0f} M entries/s."
            if planner.draw_rate is not None
            else "."
        ),
        "Rademacher projectors on a GPU (gs.plan.projector): "
        + (
            f"TRAK CudaProjector (plan.fast_jl: true): per launch of up to {FAST_JL_MAX_BATCH} rows (TRAK's default;"
            f" LESS's 16 draw the same matrix), 2 x {FAST_JL_MAX_BATCH} d p half tensor-core FLOPs"
            " and the d p entries drawn again in registers at 4 integer operations an entry (the GPU's INT32 rate"
            " x MFU); an estimate from fast_jl.cu's kernel, not a measurement."
            if settings.get("fast_jl", False)
            else "TRAK BasicProjector fallback (plan.fast_jl: false) in the projector's dtype (the model's, "
            "as LESS collect_grads builds it), blocks under "
            "gs.gradients.projection.GPU_BLOCK_BYTES, d p entries regenerated a call "
            "at 6 bytes an entry of memory traffic "
            "per byte of the dtype (RNG and matmul read)."
        )
        + (f" {fast_jl_note}" if fast_jl_note else ""),
        shard_note(
            lambda s: [row_of(st) for st in planner.gradient_jobs(s, n_methods, k)],
            int(config["gradients"].get("shards", 1)),
            planner.n_pool,
            run_on,
        ),
    ]
    if run_on == "gpu":
        notes.append(rows_note(planner, n_methods, k, gpu))
    return rows, notes


def rows_note(planner: Planner, n_methods: int, k: int, gpu: devices.Gpu, limit: int = 8192) -> str:
    """The largest ``gradients.projection_rows`` (a multiple of the batch) at which every gradient job's device
    peak fits ``gpu``: the window's rows, its buffered projection and (BasicProjector) cast grow with it."""
    from gs.gradients.passes import gradient_window
    from gs.gradients.projection import projection_rows

    grads = planner.config["gradients"]
    had, configured = "projection_rows" in grads, grads.get("projection_rows")
    batch, shards = int(grads["batch_size"]), int(grads.get("shards", 1))
    d = planner.gradient_passes(1, n_methods, k)[0].work[0].trace.lora_dim

    def peak(rows: int) -> int:
        grads["projection_rows"] = rows
        stages = planner.gradient_jobs(shards, n_methods, k)
        if studies(planner.config)[1]:
            stages += planner._selection(d)
        return max(s.device_bytes for s in stages)

    try:
        window = gradient_window(grads)
        if peak(batch) > gpu.memory_bytes:
            return f"Windows: no gradients.projection_rows fits {gpu.name}, not even one batch ({batch})."
        low, high = batch, batch
        while high < limit and peak(min(2 * high, limit)) <= gpu.memory_bytes:
            low = high = min(2 * high, limit)
        if high < limit:
            high = min(2 * high, limit)
            while high - low > batch:
                mid = (low + high) // 2 // batch * batch
                low, high = (mid, high) if peak(mid) <= gpu.memory_bytes else (low, mid)
    finally:
        if had:
            grads["projection_rows"] = configured
        else:
            grads.pop("projection_rows", None)
    state = "fits" if window <= low else "does NOT fit"
    return (
        f"Windows: gradients.projection_rows = {low} is the largest (a multiple of batch_size {batch}, at most "
        f"{limit}) at which every gradient job's device peak fits {gpu.name}; this config has "
        f"{projection_rows(grads)} (windows of {window}), which {state}."
    )


def hf_shapes(hf: Any) -> tuple[int, int]:
    """``(hidden_size, intermediate_size)`` of a transformers config (the shapes ``dtype: auto`` is timed at)."""
    text = getattr(hf, "text_config", hf)
    hidden = int(text.hidden_size)
    return hidden, int(getattr(text, "intermediate_size", None) or 4 * hidden)


def _rated(cpu_flops: float | dict[str, float]) -> list[str]:
    return sorted(cpu_flops) if isinstance(cpu_flops, dict) else ["float32"]


def plan_host_bytes(baselines: dict[tuple[str, ...], int], workers: int) -> dict[str, int]:
    """Host arrays of rule ``plan`` beyond its own imports, at the larger of its two phases: the import
    baselines measured ``workers`` at a time in child processes (Snakemake's benchmark sums the RSS of
    the job's process tree; counted at the largest ``workers`` of them at once), then
    :func:`gs.plan.devices.measure_host_bandwidth`'s two float64 arrays of 2^23 (128 MiB)."""
    largest = sorted(baselines.values(), reverse=True)[:workers]  # none when every baseline was cached
    children = {f"import baselines measured {workers} at a time (the largest)": sum(largest)}
    probe = {"host bandwidth probe (two float64 arrays of 2^23)": 2 * 8 * 2**23}
    return max(children, probe, key=lambda phase: sum(phase.values()))


def shard_note(rows_for: Any, configured: int, n: int, run_on: str, limit: int = 256) -> str:
    """The smallest ``gradients.shards`` at which every job of the gradient passes (extraction,
    coherence, LESS influence, their merges) fits its runtime, with each job's time and memory there.

    ``rows_for(S)``: the plan rows of the passes with ``S`` shards; a shard job's time falls as
    ``ceil(n / S)``. Problems other than time there (memory that does not shrink with the slice, such
    as the model and the ``(., d)`` state on the device) are listed as not fixed by sharding.
    """
    top = min(limit, n)
    for s in range(1, top + 1):
        rows = rows_for(s)
        if not any(p.startswith("time ") for r in rows for p in r.problems):
            break
    else:
        return (
            f"Shards: no gradients.shards up to {top} fits every gradient job's runtime; this config has {configured}."
        )
    hours = "gpu_seconds" if run_on == "gpu" else "cpu_seconds"
    jobs = ", ".join(
        f"{r.rule} {getattr(r, hours) / 3600:.2f} h of {r.resources.runtime or 0:.0f} min,"
        f" host {r.host_bytes / 2**30:.1f} GiB"
        + (f", device {r.device_bytes / 2**30:.1f} GiB" if run_on == "gpu" and r.device_bytes else "")
        for r in rows
    )
    fit = "fits" if configured >= s else "does NOT fit: set at least this"
    note = (
        f"Shards: gradients.shards = {s} is the smallest shard count at which every gradient job fits its "
        f"runtime (per job: {jobs}); this config has {configured}, which {fit}."
    )
    others = [f"{r.rule}: {', '.join(p for p in r.problems if not p.startswith('time '))}" for r in rows if r.problems]
    others = [o for o in others if not o.endswith(": ")]
    return note + (f" Not fixed by sharding: {'; '.join(others)}." if others else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Predicted memory and time of every stage, against its resources.")
    parser.add_argument("--configfile", required=True)
    parser.add_argument("--snakefile", default="Snakefile")
    parser.add_argument("--out-csv", default="results/plan/plan.csv")
    parser.add_argument("--out-md", default="results/plan/plan.md")
    parser.add_argument(
        "--out-dtype", default=None, help="JSON of the CPU's measured dtype choice (dtype: auto), for compute.md"
    )
    parser.add_argument(
        "--full-depth", action="store_true", help="trace every layer (slower; default: 1 and 2, extended)"
    )
    parser.add_argument("--pool", default=None, help="the prepared pool (JSONL) whose token lengths the plan counts")
    parser.add_argument("--model-dir", default=None, help="the prepared model folder (its tokenizer counts them)")
    args = parser.parse_args(argv)
    config = load_config(args.configfile)
    from snakemake.utils import validate

    validate(config, "config/schema.yaml")
    check_tasks(config)
    settings = {**DEFAULTS, **config.get("plan", {})}
    choice = None
    if settings["run_on"] == "cpu":
        choice = choose_cpu_dtype(*hf_shapes(model_config(config["model"])[0]))
        print(choice.line(), flush=True)
    lengths = pool_lengths(config, pool_file=args.pool, model_dir=args.model_dir)
    print(lengths.describe(), flush=True)
    rows, notes = plan(
        config,
        configfile=args.configfile,
        snakefile=args.snakefile,
        full_depth=args.full_depth,
        dtype_choice=choice,
        lengths=lengths,
    )
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
    if args.out_dtype:
        write_choice(choice, args.out_dtype)
