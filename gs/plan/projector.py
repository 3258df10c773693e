"""TRAK's Rademacher projector on a GPU as :mod:`gs.gradients.projection` builds it: device memory and work per call.

``plan.fast_jl`` says whether the planned env runs ``fast_jl`` (gs.gradients.projection then uses TRAK's
``CudaProjector``), else the plan counts ``BasicProjector`` with :func:`gs.gradients.projection.basic_block_size`
columns. Both follow TRAK 0.3.2's ``trak/projectors.py`` and fast_jl 0.1.3's ``fast_jl.cu``:

* ``CudaProjector``: ``fast_jl`` allocates a float32 (B', tiles, p) output, B' = b rounded up to the
  kernel's batch E (8 for b <= 8, 16 for b <= 16, else 32, at most ``max_batch_size``:
  :data:`gs.gradients.projection.FAST_JL_MAX_BATCH`, 32), tiles = the
  GPU's SM count, and sums it over tiles into the (b, p) projection (counted with the stage's
  projected block). Work, from ``fast_jl_kernel.cuh`` and ``random.cuh``: each launch of E rows draws
  every one of the d p matrix entries again in registers (one ``curand`` XORWOW word for 16 entries,
  then a bit test, a select and a shift an entry and a ``half2`` store to shared memory for two:
  :data:`RNG_OPS_PER_ENTRY` integer operations an entry on the CUDA cores, timed at the GPU's INT32
  rate x MFU) and multiplies them into the E rows with ``wmma`` half tensor-core MMAs (2 E d p FLOPs at
  the bf16/fp16 tensor rate); ``ceil(b / E)`` launches a call. No matrix goes through memory, so a call's
  cost is these two, not bandwidth: an estimate from the kernel's source, not a measurement.
* ``BasicProjector``: a (d, block) block of the projector's dtype (gs.gradients.projection.projector_dtype: the
  model's, bfloat16 at paper scale; e bytes an entry) on the device, regenerated for each of the
  ceil(p / block) blocks on every call: ``bernoulli_`` writes e bytes an entry and the in-place
  ``*= 2`` and ``-= 1`` read and write 2 e each (5 e bytes an entry, d p entries a call, the RNG taken
  as bandwidth-bound), then the block's matmul reads the block (e bytes an entry) and the (b, d) input
  in the projector's dtype again for every block; a float32 input is cast once first (4 b d read,
  e b d written, a (b, d) copy held on the device). Work: 2 b d p FLOPs in the projector's dtype.

Time of a call: :func:`gs.plan.devices.gpu_seconds` of these FLOPs and bytes in the projector's dtype
(an estimate from the datasheet and the plan's MFU and bandwidth efficiency, not a measurement).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

F32 = 4
RNG_WORDS_PER_ENTRY = 1 + 2 + 2  # BasicProjector.generate_sketch_matrix: bernoulli_, *= 2.0, -= 1.0
# fast_jl random.cuh generate_factors_fragment<Rademacher>: per entry a bit test, a select and a shift, half a
# half2 store, and 1/16 of a curand() XORWOW word (about 8 operations): about 4 integer operations an entry.
RNG_OPS_PER_ENTRY = 4


@dataclass(frozen=True)
class ProjectorCost:
    """One GPU projector: ``backend`` (``fast_jl`` or ``basic``), its ``block`` (basic: columns),
    the device bytes it holds, per ``project`` call its FLOPs and bytes streamed, and the ``dtype``
    (a torch name) its FLOPs run in."""

    backend: str
    block: int | None
    device_bytes: int
    flops: float
    bytes_streamed: float
    dtype: str = "float32"
    int_ops: float = 0.0  # integer operations on the CUDA cores a call (fast_jl's in-register draw)


def fast_jl_batch(b: int, max_batch_size: int = 32) -> int:
    """``CudaProjector.project``'s kernel batch for a (b, d) input (TRAK: 8, 16 or 32, capped)."""
    size = 8 if b <= 8 else 16 if b <= 16 else 32
    return min(max_batch_size, size)


def gpu_projector(d: int, p: int, b: int, fast_jl: bool, sms: int, dtype: str = "float32") -> ProjectorCost:
    """The projector gs.gradients.projection builds for (b, d) float32 gradients to p coordinates on a GPU with
    ``sms`` SMs; ``dtype``: ``BasicProjector``'s (the model's, :func:`gs.gradients.projection.projector_dtype`).

    Raises:
        InputError: without fast_jl, one column of d entries exceeds :data:`gs.gradients.projection.GPU_BLOCK_BYTES`.
    """
    from gs.gradients.projection import FAST_JL_MAX_BATCH, basic_block_size

    flops = 2.0 * b * d * p
    if fast_jl:
        e = fast_jl_batch(b, FAST_JL_MAX_BATCH)
        launches = math.ceil(b / e)
        out = F32 * launches * e * min(d, sms) * p
        return ProjectorCost(
            "fast_jl",
            None,
            out,
            2.0 * launches * e * d * p,  # every launch multiplies E rows, padded rows included
            F32 * b * d + 2 * out,
            "float16",
            float(RNG_OPS_PER_ENTRY) * launches * d * p,
        )
    torch_dtype = getattr(torch, dtype)
    size = torch.empty((), dtype=torch_dtype).element_size()
    block = basic_block_size(d, p, "cuda", torch_dtype)
    blocks = math.ceil(p / block)
    cast = (F32 + size) * b * d if size != F32 else 0
    streamed = cast + blocks * (RNG_WORDS_PER_ENTRY * size * d * block + size * b * d) + size * d * p
    held = size * d * block + (size * b * d if size != F32 else 0)  # the block and the input's cast copy
    return ProjectorCost("basic", block, held, flops, float(streamed), dtype)
