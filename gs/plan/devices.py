"""Named GPUs (memory, vendor peak throughput, memory bandwidth), this machine's measured CPU
throughput and the time a step takes on either.

Time of a phase = max(FLOPs / (peak x MFU), bytes streamed / (bandwidth x efficiency)): compute-bound
steps (training, gradients, likelihood, prefill) are set by the first term, decoding by the second.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gs.io import InputError


@dataclass(frozen=True)
class Gpu:
    """A GPU: memory (bytes), dense peak TFLOP/s in bf16/fp16 tensor cores and in fp32, bandwidth (TB/s),
    streaming multiprocessors (``sms``: fast_jl's feature tiles)."""

    name: str
    memory_bytes: int
    bf16_tflops: float
    fp32_tflops: float
    bandwidth_tbs: float
    source: str
    sms: int = 132
    int32_tops: float = 16.7  # INT32 operations/s (1e12): SMs x 64 INT32 lanes x boost clock


GB = 10**9
# Vendor datasheets, SXM parts, dense (without 2:4 sparsity). float32 weights run on the fp32 units:
# torch leaves TF32 matmuls off by default (torch.backends.cuda.matmul.allow_tf32 = False). SMs: NVIDIA's
# Hopper (H100/H200 SXM5: 132) and Ampere (A100: 108) architecture whitepapers; INT32: 64 lanes an SM in both
# whitepapers, at the boost clock (H100/H200 1.98 GHz: 132 x 64 x 1.98e9 = 16.7e12; A100 1.41 GHz: 9.7e12).
GPUS: dict[str, Gpu] = {
    "H100-80GB": Gpu("H100-80GB", 80 * GB, 989.0, 67.0, 3.35, "NVIDIA H100 Tensor Core GPU datasheet (SXM)", 132, 16.7),
    "A100-80GB": Gpu(
        "A100-80GB", 80 * GB, 312.0, 19.5, 2.039, "NVIDIA A100 Tensor Core GPU datasheet (SXM 80GB)", 108, 9.7
    ),
    "H200": Gpu("H200", 141 * GB, 989.0, 67.0, 4.8, "NVIDIA H200 Tensor Core GPU datasheet (SXM)", 132, 16.7),
}


def gpu(name: str) -> Gpu:
    """The :data:`GPUS` entry ``name``; an unknown name is an :class:`InputError`."""
    if name not in GPUS:
        raise InputError(f"plan.gpu: unknown GPU {name!r}; expected one of {', '.join(GPUS)}")
    return GPUS[name]


def gpu_seconds(
    flops: float, bytes_read: float, dtype: str, device: Gpu, mfu: float, bandwidth_efficiency: float
) -> float:
    """Seconds of a phase on ``device``: the larger of its compute and its memory-streaming time."""
    peak = (device.bf16_tflops if dtype in ("bfloat16", "float16") else device.fp32_tflops) * 1e12
    return max(flops / (peak * mfu), bytes_read / (device.bandwidth_tbs * 1e12 * bandwidth_efficiency))


def measure_host_bandwidth(size: int = 2**23, seconds: float = 0.5) -> float:
    """Measured bytes/s of an in-place float64 ``a.add_(b)`` on one thread (reads 16 and writes 8 bytes
    an element, as ``index_add_`` of a row into a float64 sum does), over ``size``-element arrays
    (64 MiB each, beyond the caches), repeated for about ``seconds``; the best repeat counts. One
    thread: a conservative rate for memory-bound host arithmetic (more threads share the memory bus)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = torch.zeros(size, dtype=torch.float64)
        b = torch.ones(size, dtype=torch.float64)
        a.add_(b)  # warm-up: pages touched
        best, spent = float("inf"), 0.0
        while spent < seconds:
            start = time.perf_counter()
            a.add_(b)
            took = time.perf_counter() - start
            best, spent = min(best, took), spent + took
    finally:
        torch.set_num_threads(before)
    return 24.0 * size / best


def measure_cpu_flops(threads: int = 1, size: int = 1024, seconds: float = 1.0, dtype: str = "float32") -> float:
    """Measured ``dtype`` matmul FLOP/s of this CPU on ``threads`` threads (``size`` cubed products,
    repeated for about ``seconds``; the best repeat counts). bfloat16 is many times slower than float32
    on a CPU without native bfloat16 (AVX2 only), faster on one with AVX512-BF16 or AMX."""
    import torch

    if threads < 1:
        raise InputError(f"threads must be at least 1, got {threads}")
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(size, size, generator=torch.Generator().manual_seed(0)).to(torch_dtype)
        torch.mm(a, a)  # warm-up
        best, spent = float("inf"), 0.0
        while spent < seconds:
            start = time.perf_counter()
            torch.mm(a, a)
            took = time.perf_counter() - start
            best, spent = min(best, took), spent + took
    finally:
        torch.set_num_threads(before)
    return 2.0 * size**3 / best


def cpu_rate(rates: float | dict[str, float], dtype: str) -> float:
    """FLOP/s of work in ``dtype`` from one rate (every dtype alike) or per-dtype measured rates
    (a dtype not measured runs at the float32 rate: host arrays, projections)."""
    if isinstance(rates, dict):
        return rates.get(dtype, rates["float32"])
    return float(rates)
