"""``dtype: auto``: the faster of float32 and bfloat16 for the model's own shapes on this CPU, by measurement.

bfloat16 halves the bytes of every weight, but only a CPU with native bfloat16 kernels (AVX512-BF16 or AMX)
computes it faster: on an AVX2-only CPU oneDNN emulates it and one SmolLM2-135M forward took 6x as long
as in float32 (issue 21: 30.0 s against 4.8 s on one thread). So ``auto`` is decided per machine, not
assumed: a timed ``(rows x hidden) @ (hidden x intermediate)`` product, the shape of a decoder MLP's
up-projection, on one thread (the evaluations' thread count) in each dtype; the faster wins and a tie
goes to float32. On a GPU ``auto`` is bfloat16 where the GPU supports it (else float32).

The choice is cached per machine (:func:`cache_path`, beside the planner's import baselines) under a key of
the CPU, the ISA caps in force (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``), torch's version and the
shape, so the plan measures it once and every later job on the machine reads the same choice. The plan
logs it as one line (:meth:`CpuDtypeChoice.line`) and writes it beside the plan for ``compute.md``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gs.io import InputError

AUTO = "auto"
CANDIDATES = ("float32", "bfloat16")  # timed in this order; float32 wins a tie
ROWS = 64  # tokens of one timed product: a batch of prompts' rows, as a forward of 8 x 8 tokens
CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")  # PyTorch's and oneDNN's documented kernel caps
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bfloat16 arithmetic


@dataclass(frozen=True)
class CpuDtypeChoice:
    """The measured choice: ``dtype``, seconds of one timed product in each candidate, the CPU it ran on."""

    dtype: str
    float32_s: float
    bfloat16_s: float
    cpu: str
    capability: str
    shape: tuple[int, int, int]

    def line(self) -> str:
        """``cpu dtype: float32 (float32 0.0023 s, bfloat16 0.0598 s)``: the line the plan prints."""
        return f"cpu dtype: {self.dtype} (float32 {self.float32_s:.4f} s, bfloat16 {self.bfloat16_s:.4f} s)"

    def describe(self) -> str:
        """The CPU and the measurement in one sentence (plan notes, ``compute.md``)."""
        rows, hidden, inner = self.shape
        return (
            f"{self.line()} on {self.cpu} ({self.capability}): one-thread ({rows} x {hidden}) @ ({hidden} x {inner}) "
            "product, best of repeats; the faster dtype is used wherever a config says dtype: auto on the CPU."
        )


def _cpuinfo(field: str) -> str | None:
    """The first ``field`` of ``/proc/cpuinfo`` (None where there is no such file or field)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where there is none)."""
    return set((_cpuinfo("flags") or "").split())


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s ``model name``, else :func:`platform.processor`)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_capability() -> str:
    """What torch dispatches to here and whether the CPU has native bfloat16, e.g. ``AVX512, avx512_bf16,
    amx_bf16`` or ``AVX2 (capped: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2)``."""
    try:
        import torch
    except ImportError:  # the report's env has no torch
        parts = ["capability unknown (no torch)"]
    else:
        parts = [str(torch.backends.cpu.get_cpu_capability())]
    parts += sorted(set(BF16_FLAGS) & cpu_flags())
    text = ", ".join(parts)
    caps = " ".join(f"{k}={os.environ[k]}" for k in CAPS if os.environ.get(k))
    return f"{text} (capped: {caps})" if caps else text


def time_product(dtype: str, rows: int, hidden: int, inner: int, seconds: float = 0.3) -> float:
    """Best seconds of one ``(rows x hidden) @ (hidden x inner)`` product in ``dtype`` on one thread,
    repeated for about ``seconds`` (at least three times) after one warm-up."""
    import torch

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(rows, hidden, generator=gen).to(torch_dtype)
        b = torch.randn(hidden, inner, generator=gen).to(torch_dtype)
        torch.mm(a, b)
        best, spent, repeats = float("inf"), 0.0, 0
        while spent < seconds or repeats < 3:
            start = time.perf_counter()
            torch.mm(a, b)
            took = time.perf_counter() - start
            best, spent, repeats = min(best, took), spent + took, repeats + 1
    finally:
        torch.set_num_threads(before)
    return best


def measure(hidden: int, inner: int, rows: int = ROWS) -> CpuDtypeChoice:
    """Time both candidates on this CPU and pick the faster (float32 on a tie)."""
    f32, bf16 = (time_product(d, rows, hidden, inner) for d in CANDIDATES)
    dtype = "bfloat16" if bf16 < f32 else "float32"
    return CpuDtypeChoice(dtype, f32, bf16, cpu_model(), cpu_capability(), (rows, hidden, inner))


def cache_path() -> Path | None:
    """``$GS_DTYPE_CACHE`` (``0``: no cache), else ``$XDG_CACHE_HOME`` or ``~/.cache``, then
    ``gradientspace-bench/cpu_dtype.json``."""
    from gs.io import user_cache_path

    return user_cache_path("GS_DTYPE_CACHE", "cpu_dtype.json")


def machine_key(hidden: int, inner: int, rows: int = ROWS) -> str:
    """What the choice depends on: the CPU, the kernel caps in force, torch's version and the shape."""
    import torch

    caps = {k: os.environ.get(k, "") for k in CAPS}
    return json.dumps([cpu_model(), sorted(cpu_flags()), caps, torch.__version__, [rows, hidden, inner]])


def choose(hidden: int, inner: int, rows: int = ROWS, path: Path | None = None) -> CpuDtypeChoice:
    """:func:`measure`, remembered per machine (:func:`machine_key`) in :func:`cache_path`'s JSON file."""
    from gs.io import atomic_path

    path = cache_path() if path is None else path
    key = machine_key(hidden, inner, rows)
    cache: dict[str, Any] = {}
    if path is not None and path.is_file():
        try:
            cache = json.loads(path.read_text())
            if not isinstance(cache, dict):
                cache = {}
        except (OSError, ValueError):
            cache = {}
    if key in cache:
        stored = dict(cache[key])
        stored["shape"] = tuple(stored["shape"])
        return CpuDtypeChoice(**stored)
    choice = measure(hidden, inner, rows)
    if path is not None:
        cache[key] = asdict(choice)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                Path(tmp).write_text(json.dumps(cache, indent=1))
        except OSError:
            pass  # a read-only home: measured in every process
    return choice


def model_shapes(model_dir: str | os.PathLike) -> tuple[int, int]:
    """``(hidden_size, intermediate_size)`` from a Hugging Face folder's ``config.json``."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InputError(f"{path}: cannot read the model's config to choose dtype auto") from None
    config = config.get("text_config", config)
    hidden = int(config["hidden_size"])
    return hidden, int(config.get("intermediate_size") or 4 * hidden)


def resolve(name: str, device: str, shapes: tuple[int, int]) -> str:
    """The dtype name to run in: ``name`` itself unless it is ``auto``; then bfloat16 on a CUDA device
    that supports it (float32 on one that does not), and :func:`choose`'s choice on the CPU."""
    if name != AUTO:
        return name
    if str(device).startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return choose(*shapes).dtype


def write_choice(choice: CpuDtypeChoice | None, out: str | os.PathLike) -> None:
    """The choice as JSON (``dtype``, both timings, CPU, capability, shape), for ``compute.md``; ``None``
    (a GPU run, where ``auto`` is bfloat16) records the CPU the plan ran on and no timing."""
    from gs.io import write_json

    if choice is None:
        record = {"dtype": "bfloat16 on the GPU", "cpu": cpu_model(), "capability": cpu_capability()}
    else:
        record = asdict(choice)
    record["line"] = choice.line() if choice is not None else "cpu dtype: not measured (a GPU run)"
    write_json(out, record)
