"""The plan table: per stage, predicted device and host peaks and time beside the profile's resources,
and whether the stage fits them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gs.plan.devices import Gpu, cpu_rate, gpu_seconds, measure_host_bandwidth
from gs.plan.resources import RuleResources
from gs.plan.stages import Stage

GIB = 2**30


@dataclass
class Row:
    """One stage's predictions (bytes, seconds) and the resources it is given."""

    stage: str
    rule: str
    jobs: str
    device_bytes: int
    weight_bytes: int
    host_bytes: int
    gpu_seconds: float
    cpu_seconds: float
    resources: RuleResources
    problems: list[str]
    note: str = ""
    floor_gpu_seconds: float = 0.0
    floor_shared_gpu_seconds: float = 0.0

    @property
    def fits(self) -> bool:
        return not self.problems


def predict(
    stage: Stage,
    baseline: int,
    run_on: str,
    device: Gpu,
    mfu: float,
    bandwidth_efficiency: float,
    cpu_flops: float | dict[str, float],
    resources: RuleResources,
    host_bandwidth: float | None = None,
) -> Row:
    """A stage's row. Host peak = measured import baseline + host arrays + (on a CPU run) the traced
    step itself; on a GPU run :func:`gs.models.load.load_model` reads the weights straight onto the device.
    Time adds the stage's host arithmetic (``host_bytes_streamed`` / ``host_bandwidth`` bytes/s,
    measured by :func:`gs.plan.devices.measure_host_bandwidth` when not given): the loop waits for it;
    and, on either run, ``host_flops`` at this CPU's rate on the rule's threads plus ``host_seconds``.
    ``cpu_flops``: one FLOP/s for every dtype, or measured rates by dtype name (each work item's CPU time
    at the rate of the dtype it runs in; host arrays at float32's)."""
    weights = max((w.trace.weight_bytes for w in stage.work), default=0)
    host = baseline + sum(stage.host_extra.values())
    host += stage.device_bytes if run_on == "cpu" else 0
    gpu_s = cpu_s = 0.0
    threads = max(1, resources.threads)
    for work in stage.work:
        rate = cpu_rate(cpu_flops, work.dtype) * threads
        for phase, repeats in work.repeats.items():
            if work.fit is not None and work.batch_lengths is not None:  # each batch at its padded length
                lengths, counts = np.unique(work.batch_lengths, return_counts=True)
                flops, streamed = work.fit.flops_at(phase, lengths), work.fit.bytes_at(phase, lengths)
                gpu_s += sum(
                    int(c) * gpu_seconds(float(f), float(b), work.dtype, device, mfu, bandwidth_efficiency)
                    for c, f, b in zip(counts, flops, streamed, strict=True)
                )
                cpu_s += float((counts * flops).sum()) / rate
                continue
            flops = work.trace.flops.get(phase, 0)
            gpu_s += repeats * gpu_seconds(
                flops, work.trace.bytes_read.get(phase, 0), work.dtype, device, mfu, bandwidth_efficiency
            )
            cpu_s += repeats * flops / rate
    for cost, calls in stage.projector_calls.values():  # gs.plan.projector: work per call in its dtype
        gpu_s += calls * gpu_seconds(cost.flops, cost.bytes_streamed, cost.dtype, device, mfu, bandwidth_efficiency)
        gpu_s += calls * cost.int_ops / (device.int32_tops * 1e12 * mfu)
        cpu_s += calls * cost.flops / (cpu_rate(cpu_flops, cost.dtype) * max(1, resources.threads))
    if stage.device_bytes_streamed:  # on a GPU run at its bandwidth; on a CPU run the device is the host
        dev_s = stage.device_bytes_streamed / (device.bandwidth_tbs * 1e12 * bandwidth_efficiency)
        host_dev_s = stage.device_bytes_streamed / (host_bandwidth or measure_host_bandwidth())
        gpu_s, cpu_s = gpu_s + dev_s, cpu_s + host_dev_s
    if stage.host_bytes_streamed:
        host_s = stage.host_bytes_streamed / (host_bandwidth or measure_host_bandwidth())
        gpu_s, cpu_s = gpu_s + host_s, cpu_s + host_s
    # Host work on any device (gs.cluster.ablation projects on the CPU): its FLOPs and its timed draw.
    host_s = stage.host_flops / (cpu_rate(cpu_flops, "float32") * max(1, resources.threads)) + stage.host_seconds
    gpu_s, cpu_s = gpu_s + host_s, cpu_s + host_s
    row = Row(
        stage.stage, stage.rule, " ".join(stage.jobs), stage.device_bytes, weights, host, gpu_s, cpu_s, resources, []
    )
    row.problems = check(row, run_on, device)
    row.note = stage.note
    # The floor: the model's FLOPs the stage cannot do without, at the plan's MFU in the work's dtype.
    dtypes = {w.dtype for w in stage.work} or {"float32"}
    dtype = "bfloat16" if dtypes & {"bfloat16", "float16"} else "float32"
    row.floor_gpu_seconds = sum(gpu_seconds(w.floor_flops or 0.0, 0, w.dtype, device, mfu, 1.0) for w in stage.work)
    row.floor_shared_gpu_seconds = gpu_seconds(stage.floor_shared, 0, dtype, device, mfu, 1.0)
    return row


def check(row: Row, run_on: str, device: Gpu) -> list[str]:
    """Why ``row`` does not fit its resources (empty when it fits).

    A GPU run needs every stage with a model step to ask for a GPU and to fit its memory; every run
    needs the host peak within ``mem_mb`` (MB, 10^6 bytes, as Snakemake counts it) and the predicted
    time (on the GPU, or on this CPU for a CPU run) within ``runtime`` (minutes), where the profile sets them.
    """
    res, problems = row.resources, []
    if run_on == "gpu" and row.device_bytes > 0:
        if res.gpu < 1:
            problems.append("needs a GPU but its resources give none")
        if row.device_bytes > device.memory_bytes:
            problems.append(
                f"device peak {row.device_bytes / GIB:.1f} GiB > {device.name}'s {device.memory_bytes / GIB:.1f} GiB"
            )
    if res.mem_mb is not None and row.host_bytes > res.mem_mb * 1e6:
        problems.append(f"host peak {row.host_bytes / 1e6:.0f} MB > mem_mb {res.mem_mb:.0f}")
    seconds = row.gpu_seconds if run_on == "gpu" else row.cpu_seconds
    if res.runtime is not None and seconds > res.runtime * 60:
        problems.append(f"time {seconds / 60:.0f} min > runtime {res.runtime:.0f} min")
    return problems


def table(rows: list[Row]) -> list[dict[str, Any]]:
    """Rows as records for CSV/Markdown (GiB, hours, the profile's MB/minutes as given)."""
    out = []
    for r in rows:
        res = r.resources
        out.append(
            {
                "stage": r.stage,
                "rule": r.rule,
                "device_peak_gib": round(r.device_bytes / GIB, 2),
                "weights_gib": round(r.weight_bytes / GIB, 2),
                "host_peak_gib": round(r.host_bytes / GIB, 2),
                "host_peak_mib": round(r.host_bytes / 2**20),
                "gpu_time_h": round(r.gpu_seconds / 3600, 3),
                "floor_gpu_h": round(r.floor_gpu_seconds / 3600, 3),
                "planned_over_floor": round(r.gpu_seconds / r.floor_gpu_seconds, 2) if r.floor_gpu_seconds else None,
                "floor_shared_gpu_h": round(r.floor_shared_gpu_seconds / 3600, 3),
                "cpu_time_h": round(r.cpu_seconds / 3600, 3),
                "mem_mb": res.mem_mb,
                "runtime_min": res.runtime,
                "gpu": res.gpu,
                "threads": res.threads,
                "fits": "yes" if r.fits else "no",
                "problems": "; ".join(r.problems),
                "jobs": r.jobs,
                "note": r.note,
            }
        )
    return out
