"""Host memory outside the traced step: the process's own baseline (measured) and the host arrays
each stage allocates, from the shapes its code gives them; and the rate of the one host operation
timed here rather than counted in FLOPs (TRAK's Rademacher draw, :func:`measure_rademacher_rate`).

The baseline is the peak resident set of a fresh ``python`` that imports what the stage's process
imports (its ``gs`` module, and for model stages peft and the architecture's transformers modelling
module), measured in a subprocess: interpreter, torch, transformers, lm-eval and their libraries.
Measured once per environment: :func:`cached_baselines` keeps them until an installed version or a
``gs`` file changes. Array formulas name the code they follow; ``bytes`` are exact element counts x item size.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gs.io import InputError

F32, F64, I32 = 4, 8, 4
GRAM_BLOCK = 65536  # gs.cluster.quality.unit_gram / gs.cluster.ablation.gram: columns of x per float64 block


def baseline_command(imports: tuple[str, ...]) -> list[str]:
    """A ``python -c`` that imports ``imports`` and prints its peak RSS in KiB.

    The peak is ``VmHWM`` of ``/proc/self/status``, the high-water mark of the process's own memory
    map; ``ru_maxrss`` would not do: Linux carries the parent's peak into a child across ``exec``, so
    a child of the planner (itself holding torch) would report at least the planner's size.
    """
    code = "".join(f"import {m}\n" for m in imports)
    code += "print(next(int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM')))"
    return [sys.executable, "-c", code]


def measure_baselines(import_sets: list[tuple[str, ...]], workers: int = 2) -> dict[tuple[str, ...], int]:
    """Peak RSS in bytes of a fresh interpreter per import set (subprocesses, ``workers`` at a time).

    Raises:
        InputError: an import failed (the message names the module set and the error's last line).
    """

    def one(imports: tuple[str, ...]) -> int:
        run = subprocess.run(baseline_command(imports), capture_output=True, text=True, check=False)
        if run.returncode != 0:
            last = (run.stderr.strip().splitlines() or ["no output"])[-1]
            raise InputError(f"baseline import of {', '.join(imports)} failed: {last}")
        return int(run.stdout.strip().splitlines()[-1]) * 1024

    unique = sorted(set(import_sets))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return dict(zip(unique, pool.map(one, unique), strict=True))


def environment_fingerprint() -> str:
    """What an import baseline depends on: the interpreter, every installed distribution's version
    and the ``gs`` package's files (name, size, modification time). A SHA-256 hex digest."""
    import hashlib
    import importlib.metadata
    import json

    dists = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions())
    package = Path(__file__).resolve().parents[1]
    files = sorted((str(f.relative_to(package)), f.stat().st_size, f.stat().st_mtime_ns) for f in package.rglob("*.py"))
    payload = json.dumps([sys.executable, sys.version, dists, files])
    return hashlib.sha256(payload.encode()).hexdigest()


def baseline_cache_path() -> Path | None:
    """``$GS_PLAN_CACHE`` (``0``: no cache), else ``$XDG_CACHE_HOME`` or ``~/.cache``, then
    ``gradientspace-bench/import_baselines.json``."""
    from gs.io import user_cache_path

    return user_cache_path("GS_PLAN_CACHE", "import_baselines.json")


def cached_baselines(
    import_sets: list[tuple[str, ...]], workers: int = 2, path: Path | None = None
) -> tuple[dict[tuple[str, ...], int], list[tuple[str, ...]]]:
    """:func:`measure_baselines`, remembering each import set's baseline for this environment
    (:func:`environment_fingerprint`) in a JSON file (:func:`baseline_cache_path` by default): a
    fresh interpreter's import RSS does not change until the environment does. Measuring them costs
    about 3.5 s an import set (80 s for the test config's 23). Returns the baselines and the import
    sets measured now (none when all were cached)."""
    import json

    from gs.io import atomic_path

    path = baseline_cache_path() if path is None else path
    key = environment_fingerprint() if path is not None else ""
    cache: dict[str, int] = {}
    if path is not None and path.is_file():
        try:
            stored = json.loads(path.read_text())
            cache = stored.get("baselines", {}) if stored.get("environment") == key else {}
        except (OSError, ValueError, AttributeError):
            cache = {}
    name = " ".join
    missing = [v for v in dict.fromkeys(import_sets) if name(v) not in cache]
    if missing:
        cache.update({name(v): b for v, b in measure_baselines(missing, workers=workers).items()})
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as tmp:
                    Path(tmp).write_text(json.dumps({"environment": key, "baselines": cache}, indent=1))
            except OSError:
                pass  # a read-only home: measured every time
    return {v: int(cache[name(v)]) for v in import_sets}, missing


def projector_bytes(kind: str, d: int, dim: int, run_on: str) -> int:
    """Host bytes of one :class:`gs.gradients.projection.Projector` of ``d`` inputs and ``dim`` outputs.

    ``sparse``: scikit-learn's ``SparseRandomProjection`` keeps a CSR matrix (dim, d) of density
    1/sqrt(d): float64 data and int32 indices per non-zero, int32 row pointers. ``gaussian``: a dense
    float64 (dim, d). ``rademacher`` (TRAK): on the CPU the int8 (dim, d) matrix when it is under
    :data:`gs.gradients.projection.CACHE_LIMIT_BYTES`, else TRAK's float32 (d, 128) block; on a GPU it lives there.
    """
    if kind == "sparse":
        nnz = math.ceil(dim * d / math.sqrt(d))
        return nnz * (F64 + I32) + (dim + 1) * I32
    if kind == "gaussian":
        return dim * d * F64
    if kind == "rademacher":
        import gs.gradients.projection as projection

        limit = int(getattr(projection, "CACHE_LIMIT_BYTES", 8 * 2**30))
        if run_on == "gpu":
            return 0
        return d * dim if d * dim <= limit else d * getattr(projection, "LESS_BLOCK_SIZE", 128) * F32
    raise InputError(f"gradients.projection.kind: unknown projector {kind!r}")


def svd_state_bytes(d: int, rank: int, batch: int) -> int:
    """The online SVD's streaming state, float32 ``d x (rank + batch)`` (``gs.gradients.extraction``: "Memory:
    O(d (r + b) + n r + n p)"; the basis and the incoming block)."""
    return F32 * d * (rank + batch)


def gradient_batch_host_bytes(d: int, batch: int) -> int:
    """A gradient batch on the host: ``iter_gradients``' ``grads.cpu()`` (b, d) float32, its
    normalised copy and the projector's float32 input: three (b, d) float32 arrays."""
    return 3 * F32 * batch * d


def extract_host_bytes(d: int, n: int, params: dict[str, Any], run_on: str) -> dict[str, int]:
    """Host arrays of ``gs.gradients.extraction.extract_features``: the per-batch parts of every projection and
    their concatenation (both alive while ``features.npz`` is written), the projectors, the SVD state
    when it runs on the CPU, its coordinates (n, r) and one gradient batch."""
    proj = params["projection"]
    dims = sorted({int(p) for p in proj["dims"]} | {int(proj["elrea_dim"])})
    from gs.gradients.passes import gradient_window

    rank, batch = int(params["svd"]["rank"]), int(params["batch_size"])
    out = {
        "projected features (parts + concatenated)": 2 * F32 * n * (sum(dims) + int(proj["elrea_dim"])),
        "projectors": sum(projector_bytes(proj.get("kind", "sparse"), d, p, run_on) for p in dims),
        "svd coordinates": F32 * n * rank,
    }
    if run_on == "cpu":  # on a GPU the windows stay on the device (the planner counts them there)
        out["gradient window"] = gradient_batch_host_bytes(d, gradient_window(params))
    if run_on == "cpu":
        out["svd state"] = svd_state_bytes(d, rank, batch)
    return out


def coherence_host_bytes(d: int, params: dict[str, Any], methods: int, k: int, run_on: str = "cpu") -> dict[str, int]:
    """``gs.cluster.coherence.cluster_gradient_sums``: a (k, d) float64 sum per method, the window
    (:func:`gs.gradients.passes.gradient_window` rows) as handed over (on the host on a CPU run) and one
    batch of it in float64."""
    from gs.gradients.passes import gradient_window

    window, batch = gradient_window(params), int(params["batch_size"])
    held = gradient_batch_host_bytes(d, window) if run_on == "cpu" else 0  # on a GPU the window stays there
    return {
        "cluster sums": methods * k * d * F64,
        "gradient window and a batch of it in float64": held + F64 * batch * d,
    }


def coherence_host_traffic(d: int, n: int, methods: int) -> float:
    """Host bytes streamed by ``gs.cluster.coherence.cluster_gradient_sums`` over ``n`` samples: each (d,) row
    copied to the host and converted to float64 once (4 read + 8 written), then ``index_add_``-ed into
    one float64 cluster sum per method (8 + 8 read, 8 written)."""
    return float(n) * d * (F32 + F64 + methods * 3 * F64)


def influence_bytes(
    d: int,
    n: int,
    targets: int,
    checkpoints: int,
    batch: int,
    p: int | None,
    kind: str,
    run_on: str,
    subtasks: int | None = None,
    rows: int | None = None,
    buffer_itemsize: int = F32,
) -> tuple[dict[str, int], dict[str, int]]:
    """``gs.selection.influence.compute_influence``'s arrays beyond the model, as its module doc counts them:
    ``(host, device)``. ``p``: ``gradients.influence.projection_dim`` (None: full dimension d).
    ``subtasks``: S, the mean directions kept, one per subtask of each target summed over the targets
    (None: ``targets``, one each, as when no validation record carries ``meta.subtask``). ``rows``: the
    projection buffer's rows (:func:`gs.gradients.projection.project_in_buffers`; None or no projection:
    none), ``buffer_itemsize`` its entries' bytes (the projector's dtype).

    Host: the block ``iter_gradients`` hands over (4 b d), the float64 scores (the (C, S, n) per-subtask
    scores and, at the end, the (C, T, n) per-checkpoint, (S, n) and (T, n) weighted ones) and, for the
    CPU Rademacher projector, its int8 (d, p) matrix and a float32 (d, 128) conversion block. Device:
    the gradients still held (4 b d), the block moved back (4 b d, one with the first on the CPU), the
    Adam direction and a temporary (8 b d), a checkpoint's moments (8 d), the projected block and the
    S subtask means (4 b p + 4 S p); a GPU Rademacher projector is counted by the planner
    (:func:`gs.plan.projector.gpu_projector`). On a CPU run every device array is a host array.
    """
    proj = d if p is None else int(p)
    s = targets if subtasks is None else int(subtasks)
    # iter_gradients hands over a window of `rows` samples (gs.gradients.passes.gradient_window) on the host.
    held = max(batch, rows or 0)
    host_arrays = {"gradient window": F32 * held * d, "scores": F64 * n * (checkpoints * (s + targets) + s + targets)}
    device = {
        "gradients + Adam direction": (F32 * batch * d if run_on == "gpu" else 0) + 2 * F32 * batch * d,
        "moments": F64 * d,
        "projected block + subtask means": F32 * (max(batch, rows or 0) + s) * proj,
    }
    if p is not None and rows:
        device["projection buffer"] = buffer_itemsize * rows * d
    if p is not None:
        if kind == "rademacher" and run_on == "cpu":
            host_arrays["projector"] = projector_bytes(kind, d, proj, run_on) + F32 * d * min(128, proj)
        elif kind != "rademacher":
            host_arrays["projector"] = projector_bytes(kind, d, proj, run_on)
    if run_on == "cpu":
        return {**host_arrays, **device}, {}
    return host_arrays, device


def features_file_bytes(n: int, params: dict[str, Any]) -> int:
    """``features.npz`` loaded whole (float32): SVD coordinates, every projection, ELREA's features."""
    proj = params["projection"]
    dims = sorted({int(p) for p in proj["dims"]} | {int(proj["elrea_dim"])})
    return F32 * n * (int(params["svd"]["rank"]) + sum(dims) + int(proj["elrea_dim"]) + 1)


def kept_gradients_bytes(n: int, d: int) -> int:
    """``gradients.npy`` (n, d) float32 (``gradients.keep_gradients``) through a memory map
    (:func:`gs.gradients.extraction.open_kept_gradients`, ``numpy.load(mmap_mode="r")``): every page written (the
    extraction) or read (the ablation, the quality Gram matrix) stays in the process's resident set
    while the map is open, dirty or clean, so the whole file counts once every row is touched."""
    return F32 * n * d


def ablation_host_bytes(n: int, d: int, p_max: int, kind: str) -> dict[str, int]:
    """Host arrays of ``gs.cluster.ablation.run_kept`` on the kept gradients (n, d) at its peak phase.

    Both phases hold the memory map read whole (:func:`kept_gradients_bytes`, ``np.asarray(g,
    float32)`` is a view of it). ``normalise_rows``: the float64 copy (8 n d), then beside it
    ``numpy.linalg.norm``'s squares (8 n d, freed) and the quotient (8 n d): 16 n d. ``project`` (per
    seed): the float64 unit rows (8 n d), their float32 contiguous copy handed to torch (4 n d), the
    projector (``rademacher``: TRAK ``BasicProjector``'s one (d, min(128, p_max)) float32 block,
    regenerated per block, never cached: ``cache_limit_bytes=0``; ``sparse``: scikit-learn's CSR
    matrix, :func:`projector_bytes`) and the (n, p_max) float32 sketch. The Gram matrices and
    decompositions in between are (n, n) or (n, p_max): small beside these.
    """
    mapped = {"kept gradients (memory map, read whole)": kept_gradients_bytes(n, d)}
    normalise = {**mapped, "float64 rows and their squares or quotient (normalise_rows)": 2 * F64 * n * d}
    projector = F32 * d * min(128, p_max) if kind == "rademacher" else projector_bytes(kind, d, p_max, "cpu")
    project = {
        **mapped,
        "float64 unit rows": F64 * n * d,
        "float32 copy projected": F32 * n * d,
        f"projector ({kind})": projector,
        "sketch (n, p_max) float32": F32 * n * p_max,
    }
    return max(normalise, project, key=lambda phase: sum(phase.values()))


def quality_gram_bytes(n: int, d: int, block: int = GRAM_BLOCK) -> dict[str, int]:
    """``gs.cluster.quality.unit_gram`` on the kept gradients (n, d) float32 memory map, at its peak block.

    Block ``i`` copies columns ``[i B, (i + 1) B)`` of every row to float64 (``np.asarray(x[:, a:b],
    float64)``) while the previous block's copy is still bound to ``part``; the map's pages are read
    column block by column block, so by block ``i`` it holds ``4 n min(d, (i + 1) B)`` bytes. The peak is
    the largest ``4 n min(d, (i + 1) B) + 8 n (w_{i-1} + w_i)`` over blocks of widths ``w``.
    """
    widths = [min(block, d - start) for start in range(0, d, block)]
    best = max(
        range(len(widths)),
        key=lambda i: F32 * n * min(d, (i + 1) * block) + F64 * n * sum(widths[max(0, i - 1) : i + 1]),
    )
    return {
        "kept gradients (memory map, pages read by the peak block)": F32 * n * min(d, (best + 1) * block),
        "float64 column blocks (unit_gram: previous and current)": F64 * n * sum(widths[max(0, best - 1) : best + 1]),
    }


def measure_rademacher_rate(size: int = 2**20, seconds: float = 0.3) -> float:
    """Measured entries/s of TRAK ``BasicProjector.generate_sketch_matrix``'s Rademacher draw on one
    thread: ``bernoulli_(p=0.5, generator)`` then ``*= 2`` and ``-= 1`` in place on a float32 tensor of
    ``size`` entries (4 MiB), repeated for about ``seconds``; the best repeat counts. The draw, not the
    matmul, dominates the CPU ablation (module doc of :mod:`gs.cluster.ablation`: about 40 ns an entry here)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(0)
        block = torch.empty(size, dtype=torch.float32)
        block.bernoulli_(p=0.5, generator=gen)  # warm-up: pages touched
        best, spent = float("inf"), 0.0
        while spent < seconds:
            start = time.perf_counter()
            block.bernoulli_(p=0.5, generator=gen)
            block *= 2.0
            block -= 1.0
            took = time.perf_counter() - start
            best, spent = min(best, took), spent + took
    finally:
        torch.set_num_threads(before)
    return size / best
