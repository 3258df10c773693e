"""Random projection of gradients: the LESS/ELREA baseline that GradientSpace argues against.

Three kinds, each fixed by ``(kind, d, dim, seed)`` alone, so a saved projector is regenerated exactly:

* ``rademacher``: the projector LESS uses, from its own library: TRAK's projectors (``trak.projectors``,
  PyPI ``traker``). LESS (``less/data_selection/collect_grad_reps.py``, ``get_trak_projector`` and
  ``collect_grads``) builds ``CudaProjector(grad_dim, proj_dim, seed=0, proj_type=rademacher, device,
  dtype, block_size=128, max_batch_size=16)`` when CUDA and ``fast_jl`` run, else TRAK's
  ``BasicProjector`` with the same arguments; so do we (backend ``"fast_jl"`` or ``"basic"``), except
  ``max_batch_size`` 32 (:data:`FAST_JL_MAX_BATCH`: the same matrix, fewer draws of it). The two
  backends draw different matrices, and ``BasicProjector`` draws with the device's own generator (a CUDA
  draw differs from a CPU one), so the backend and device are saved with the projector and one drawn
  on CUDA cannot be reloaded without CUDA. ``BasicProjector`` generates the (d, 128) blocks of its
  Rademacher matrix on the device from the seeds ``seed + 1000 * block`` on every ``project`` call
  (8.9 s for 8 gradients at d = 460,800, p = 1024 in issue 11; 12 s of CPU time on one thread here).
  On the CPU we therefore generate the same matrix once, block by block with TRAK's own
  ``generate_sketch_matrix``, keep it as int8 (d * p bytes: 0.47 GB at d = 460,800, p = 1024) and
  multiply in float32 blocks of 128 columns converted into one reused (d, 128) buffer;
  the result equals ``BasicProjector.project`` up to float32 summation order. Above
  ``cache_limit_bytes`` (default 8 GiB) the matrix is not kept and ``BasicProjector`` regenerates it
  per call, as TRAK does; the CPU projects in float32 (LESS's dtype would be the CPU model's, float32 too).
  On a GPU without ``fast_jl`` we follow LESS's ``BasicProjector`` call: its ``dtype`` is the model's
  (LESS: ``dtype = next(model.parameters()).dtype``, bfloat16 at paper scale; :func:`projector_dtype`),
  so TRAK draws and multiplies the matrix in that dtype (a bfloat16 entry costs half the RNG and
  matmul traffic of a float32 one; +-1 is exact in either), and its block is LESS's 128 columns where a
  (d, 128) block fits ``GPU_BLOCK_BYTES`` (4 GiB), else the largest that fits (ours, a departure:
  ``min(128, dim, floor(GPU_BLOCK_BYTES / (itemsize d)))``, 19 bfloat16 columns at the paper's d =
  109M, where a 128-column block would be 26 GiB beside a 50 GiB gradient step). The block size and
  dtype fix TRAK's draw (seeds ``seed + 1000 * block``), so both are saved with the projector. This
  fallback regenerates all d * dim entries on every ``project`` call (slow: gs.plan counts it); callers
  amortise it over several gradient batches per call as LESS's ``project_interval`` does
  (:func:`project_in_buffers`, ``gradients.projection_rows`` rows a call). Departures from LESS: a
  float32 input is cast straight to the projector's dtype (LESS stacks its gradients as float16 first),
  the (b, dim) result is returned as float32, and the matrix is not scaled (TRAK's is not either;
  cosines ignore the scale).
* ``sparse``: very sparse random projections (Li, Hastie & Church, KDD 2006; entries +-sqrt(s) with
  probability 1/(2s), s = sqrt(d)) through scikit-learn's ``SparseRandomProjection``; cheap on a CPU.
* ``gaussian``: scikit-learn's dense ``GaussianRandomProjection``, for small d.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import joblib
import numpy as np
import torch

from gs.checks import int_param
from gs.io import InputError, atomic_path

KINDS = ("sparse", "gaussian", "rademacher")
BACKENDS = ("fast_jl", "basic")
LESS_BLOCK_SIZE = 128  # LESS collect_grad_reps.py: ``block_size = 128``
# TRAK's own default (trak/traker.py ``proj_max_batch_size=32``); LESS passes 16 (collect_grad_reps.py
# ``projector_batch_size = 16``). fast_jl draws the same matrix at either: each thread seeds its curand state from
# its output column, feature tile and the seed alone (fast_jl_kernel.cuh ``jl_random::init``), never the batch, and
# each row's sum is its own; so 32 rows a launch give LESS's projection and draw the d x p entries half as often.
FAST_JL_MAX_BATCH = 32
CACHE_LIMIT_BYTES = 8 * 2**30  # ours: the largest int8 matrix kept on the CPU
GPU_BLOCK_BYTES = 4 * 2**30  # ours: the largest (d, block) block BasicProjector keeps on a GPU
# Gradient rows gathered per project call (gradients.projection_rows): LESS collect_grad_reps.py
# ``project_interval = 16`` (16 one-sample batches a call).
DEFAULT_BUFFER_ROWS = 16

T = TypeVar("T")

log = logging.getLogger(__name__)


def basic_block_size(
    d: int, dim: int, device_type: str, dtype: torch.dtype = torch.float32, budget: int = GPU_BLOCK_BYTES
) -> int:
    """Columns of ``BasicProjector``'s (d, block) block of ``dtype`` entries: LESS's 128 (at most ``dim``),
    on a CUDA device at most ``floor(budget / (itemsize d))``.

    Raises:
        InputError: on CUDA, one column of d entries exceeds ``budget``.
    """
    block = min(LESS_BLOCK_SIZE, dim)
    if device_type != "cuda":
        return block
    size = torch.empty((), dtype=dtype).element_size()
    if size * d > budget:
        raise InputError(
            f"rademacher projector: one {dtype} column of d={d} ({size * d / 2**30:.2f} GiB) exceeds "
            f"gs.gradients.projection.GPU_BLOCK_BYTES ({budget / 2**30:.2f} GiB); "
            "BasicProjector cannot run, install fast_jl"
        )
    return min(block, budget // (size * d))


def projector_dtype(model_dtype: torch.dtype, device: str | torch.device) -> torch.dtype:
    """The dtype of the TRAK projector for gradients of a model of ``model_dtype`` on ``device``: the
    model's on a GPU (LESS ``collect_grads``: ``dtype = next(model.parameters()).dtype``), float32 on
    the CPU (the int8-cached matrix multiplied in float32)."""
    return model_dtype if torch.device(device).type == "cuda" else torch.float32


def fast_jl_available(device: torch.device) -> bool:
    """Whether TRAK's ``CudaProjector`` runs here: a CUDA device and a working ``fast_jl`` (LESS's test run)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        import fast_jl  # noqa: F401

        sms = torch.cuda.get_device_properties(device).multi_processor_count
        fast_jl.project_rademacher_8(torch.zeros(8, 1_000, device=device), 512, 0, sms)
    except Exception:  # LESS's get_trak_projector: any failure falls back to BasicProjector
        return False
    return True


def _as_torch(grads: Any) -> torch.Tensor:
    if isinstance(grads, torch.Tensor):
        return grads.detach()
    return torch.from_numpy(np.ascontiguousarray(np.asarray(grads)))


class _TrakRademacher:
    """TRAK's Rademacher projection (``CudaProjector`` or ``BasicProjector``), the CPU matrix kept as int8."""

    def __init__(
        self,
        d: int,
        dim: int,
        seed: int,
        device: torch.device,
        backend: str | None,
        cache_limit: int,
        block_size: int | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        from trak.projectors import BasicProjector, CudaProjector, ProjectionType

        if backend not in (None, *BACKENDS):
            raise InputError(f"unknown rademacher backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        fast = backend != "basic" and fast_jl_available(device)
        backend = backend or ("fast_jl" if fast else "basic")
        if backend == "fast_jl" and not fast:
            raise InputError(
                f"this projector uses TRAK's CudaProjector (fast_jl), which does not run on {device}: "
                "its matrix cannot be regenerated without CUDA and fast_jl"
            )
        self.backend, self.device, self.dim = backend, device, dim
        self.dtype = torch.float32 if backend == "fast_jl" else dtype  # BasicProjector's matrix and matmul
        self.block_size: int | None = None  # BasicProjector's columns per generated block
        # CPU cache of BasicProjector's matrix: (blocks, d, 128) int8, block i = columns [128 i, 128 (i + 1)).
        self.blocks: torch.Tensor | None = None
        self._buffer: torch.Tensor | None = None  # (d, 128) float32, reused for every block and call
        args = {"grad_dim": d, "proj_dim": dim, "seed": seed, "proj_type": ProjectionType.rademacher, "device": device}
        if backend == "fast_jl":
            self.trak = CudaProjector(**args, max_batch_size=FAST_JL_MAX_BATCH)
            return
        block = int(block_size) if block_size is not None else basic_block_size(d, dim, device.type, dtype)
        if device.type == "cuda":
            log.warning(
                "rademacher projector: fast_jl unavailable, TRAK BasicProjector fallback on %s (slow: regenerates "
                "%d x %d %s entries per call, %d-column blocks of %.2f GiB)",
                device,
                d,
                dim,
                dtype,
                block,
                torch.empty((), dtype=dtype).element_size() * d * block / 2**30,
            )
        self.trak = BasicProjector(**args, block_size=block, dtype=dtype)
        self.block_size = self.trak.block_size
        cached = d * self.trak.num_blocks * self.trak.block_size <= cache_limit
        if device.type == "cpu" and dtype == torch.float32 and cached:
            size = self.trak.block_size
            self.blocks = torch.zeros(self.trak.num_blocks, d, size, dtype=torch.int8)
            for i, state in enumerate(self.trak.generator_states):
                self.trak.generate_sketch_matrix(state)  # (d, block) +-1 float32, TRAK's own draw
                self.blocks[i, :, : min(size, dim - i * size)] = self.trak.proj_matrix[:, : dim - i * size]
            self.trak.free_memory()

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(b, d) -> (b, dim) float32 on ``self.device`` (computed in ``self.dtype``)."""
        x = x.to(self.device, self.dtype).contiguous()
        if self.blocks is None:
            return self.trak.project(x, model_id=0).float()
        if self._buffer is None:
            self._buffer = torch.empty(self.blocks.shape[1], self.blocks.shape[2], dtype=torch.float32)
        size = self.blocks.shape[2]
        out = torch.empty(x.shape[0], self.blocks.shape[0] * size, dtype=torch.float32)
        for i in range(self.blocks.shape[0]):
            self._buffer.copy_(self.blocks[i])  # int8 -> float32 into the reused (d, 128) buffer
            torch.mm(x, self._buffer, out=out[:, i * size : (i + 1) * size])
        return out[:, : self.dim].contiguous()


class Projector:
    """A seeded random projection from gradient space (d) to ``dim`` coordinates.

    ``device`` (``rademacher`` only): where TRAK projects; default CUDA when visible, else the CPU.
    ``backend`` (``rademacher`` only): ``"fast_jl"`` or ``"basic"``; default: ``fast_jl`` when it runs.
    ``block_size`` (``basic`` only): ``BasicProjector``'s columns per block; default
    :func:`basic_block_size` (a saved projector passes its own: the block fixes the matrix).
    ``dtype`` (``basic`` only): ``BasicProjector``'s dtype, LESS's model dtype on a GPU
    (:func:`projector_dtype`); default float32. Only float32 on the CPU keeps the int8 matrix.
    """

    def __init__(
        self,
        kind: str,
        d: int,
        dim: int,
        seed: int,
        *,
        device: str | torch.device | None = None,
        backend: str | None = None,
        cache_limit_bytes: int = CACHE_LIMIT_BYTES,
        block_size: int | None = None,
        dtype: str | torch.dtype = torch.float32,
    ) -> None:
        if kind not in KINDS:
            raise InputError(f"unknown projector {kind!r}; expected one of {', '.join(KINDS)}")
        if dim < 1 or d < 1:
            raise InputError(f"projection needs d >= 1 and dim >= 1, got d={d}, dim={dim}")
        self.kind, self.d, self.dim, self.seed = kind, int(d), int(dim), int(seed)
        self.backend: str | None = None
        if kind == "rademacher":
            dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            if isinstance(dtype, str):
                dtype = getattr(torch, dtype.removeprefix("torch."), None)
            if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
                raise InputError(f"rademacher projector: dtype must be a floating torch dtype, got {dtype!r}")
            self._trak = _TrakRademacher(
                self.d, self.dim, self.seed, dev, backend, int(cache_limit_bytes), block_size=block_size, dtype=dtype
            )
            self.backend = self._trak.backend
            return
        from sklearn.random_projection import GaussianRandomProjection, SparseRandomProjection

        cls = SparseRandomProjection if kind == "sparse" else GaussianRandomProjection
        kwargs = {"dense_output": True} if kind == "sparse" else {}
        self._proj = cls(n_components=self.dim, random_state=self.seed, **kwargs)
        # fit() only reads the number of features; a one-row placeholder avoids a (n, d) input.
        self._proj.fit(np.zeros((1, self.d), dtype=np.float32))

    def _check(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 2 or shape[1] != self.d:
            raise InputError(f"projector expects (b, {self.d}) gradients, got shape {tuple(shape)}")

    def project(self, grads: Any) -> torch.Tensor:
        """Project a (b, d) block (numpy or torch) to a (b, dim) float32 tensor (on the projector's
        device for ``rademacher``, else on the CPU)."""
        self._check(tuple(grads.shape))
        if self.kind == "rademacher":
            return self._trak.project(_as_torch(grads))
        x = grads.detach().cpu().numpy() if isinstance(grads, torch.Tensor) else np.asarray(grads)
        return torch.from_numpy(np.asarray(self._proj.transform(x.astype(np.float32, copy=False)), dtype=np.float32))

    def transform(self, grads: Any) -> np.ndarray:
        """Project a (b, d) block (numpy or torch) to (b, dim) float32 numpy."""
        return self.project(grads).cpu().numpy()

    def spec(self) -> dict[str, Any]:
        """What :func:`load_projector` needs to regenerate this projection (``backend`` and the drawing
        ``device`` type and ``BasicProjector``'s ``block_size`` and ``dtype`` for ``rademacher``, None otherwise)."""
        device = self._trak.device.type if self.kind == "rademacher" else None
        block = self._trak.block_size if self.kind == "rademacher" else None
        dtype = str(self._trak.dtype).removeprefix("torch.") if self.kind == "rademacher" else None
        return {
            "kind": self.kind,
            "d": self.d,
            "dim": self.dim,
            "seed": self.seed,
            "backend": self.backend,
            "device": device,
            "block_size": block,
            "dtype": dtype,
        }

    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp:
            joblib.dump(self.spec(), tmp)


def load_projector(path: str | os.PathLike) -> Projector:
    """Rebuild a saved projector (only its spec is stored; the matrix is regenerated on the device it was
    drawn on). Specs saved before ``rademacher`` existed (no ``backend``) load as they were; a
    ``rademacher`` spec without ``block_size`` (saved before it was chosen) used LESS's 128, one without
    ``dtype`` float32."""
    if not Path(path).is_file():
        raise InputError(f"{path}: projector file not found")
    spec = joblib.load(path)
    missing = [k for k in ("kind", "d", "dim", "seed") if k not in spec]
    if missing:
        raise InputError(f"{path}: projector spec lacks field(s) {missing}")
    if spec["kind"] != "rademacher":
        return Projector(spec["kind"], spec["d"], spec["dim"], spec["seed"])
    device = spec.get("device") or "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"{path}: this Rademacher projector was drawn on a CUDA device (TRAK {spec.get('backend')}); "
            "its matrix cannot be regenerated without one"
        )
    block = spec.get("block_size", LESS_BLOCK_SIZE) if spec.get("backend") != "fast_jl" else None
    return Projector(
        spec["kind"],
        spec["d"],
        spec["dim"],
        spec["seed"],
        device=device,
        backend=spec.get("backend"),
        block_size=block,
        dtype=spec.get("dtype") or "float32",
    )


def projection_rows(params: dict[str, Any]) -> int:
    """``gradients.projection_rows`` of a ``gradients`` section: gradient rows gathered per projector call
    (absent: :data:`DEFAULT_BUFFER_ROWS`)."""
    return int_param(params.get("projection_rows", DEFAULT_BUFFER_ROWS), "gradients.projection_rows", minimum=1)


def project_in_buffers(
    blocks: Iterable[tuple[T, torch.Tensor]],
    project: Callable[[torch.Tensor], torch.Tensor],
    rows: int,
    dtype: torch.dtype | None = None,
) -> Iterator[tuple[T, torch.Tensor]]:
    """Project a stream of ``(payload, (b_i, d) block)`` pairs with one ``project`` call per ``rows`` rows.

    Consecutive blocks are copied into one (rows, d) buffer of ``dtype`` (default: the first block's; the
    projector's own, so the copy is the cast the projector would make) until the next block would not fit;
    then the buffer's rows go through ``project`` at once and each block's payload comes back with its own
    (b_i, p) rows, in the stream's order. A block of more than ``rows`` rows is projected alone. Why: TRAK's
    ``BasicProjector`` regenerates its whole d x p matrix on every call (and the CPU's cached one is converted
    block by block), so the per-call cost is paid once per buffer rather than once per gradient batch;
    rows are projected independently, so the results equal per-block projection up to float summation order.
    Memory: ``rows x d`` of ``dtype`` beside the blocks.
    """
    if rows < 1:
        raise InputError(f"projection buffer: rows must be >= 1, got {rows}")
    buffer: torch.Tensor | None = None
    pending: list[tuple[T, int]] = []
    held = 0

    def flush() -> Iterator[tuple[T, torch.Tensor]]:
        nonlocal pending, held
        out = project(buffer[:held])
        if out.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr():
            out = out.clone()  # an identity "projection" (no projection): the buffer is refilled next
        start = 0
        for payload, n in pending:
            yield payload, out[start : start + n]
            start += n
        pending, held = [], 0

    for payload, block in blocks:
        b = block.shape[0]
        if held and held + b > rows:
            yield from flush()
        if b > rows:  # larger than the buffer: alone, as before buffering
            yield payload, project(block)
            continue
        if buffer is None:
            buffer = torch.empty(rows, block.shape[1], dtype=dtype or block.dtype, device=block.device)
        buffer[held : held + b].copy_(block)
        pending.append((payload, b))
        held += b
    if held:
        yield from flush()
