"""TRAK's Rademacher projector on a GPU as :mod:`gs.projection` builds it: device memory and work per call.

``plan.fast_jl`` says whether the planned env runs ``fast_jl`` (gs.projection then uses TRAK's
``CudaProjector``), else the plan counts ``BasicProjector`` with :func:`gs.projection.basic_block_size`
columns. Both follow TRAK 0.3.2's ``trak/projectors.py`` and fast_jl 0.1.3's ``fast_jl.cu``:

* ``CudaProjector``: ``fast_jl`` allocates a float32 (B', tiles, p) output, B' = b rounded up to the
  kernel's batch (8 for b <= 8, 16 for b <= 16, at most ``max_batch_size`` 16: LESS), tiles = the
  GPU's SM count, and sums it over tiles into the (b, p) projection (counted with the stage's
  projected block). Work: 2 b d p FLOPs in float32 and one read of the (b, d) input.
* ``BasicProjector``: a (d, block) float32 block on the device, regenerated for each of the
  ceil(p / block) blocks on every call: ``bernoulli_`` writes 4 bytes an entry and the in-place
  ``*= 2`` and ``-= 1`` read and write 8 each (20 bytes an entry, d p entries a call, the RNG taken as
  bandwidth-bound), then the block's matmul reads the block (4 bytes an entry) and the (b, d) input
  again for every block. Work: 2 b d p FLOPs.

Time of a call: :func:`gs.plan.devices.gpu_seconds` of these FLOPs and bytes in float32 (an estimate
from the datasheet and the plan's MFU and bandwidth efficiency, not a measurement).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

F32 = 4
RNG_BYTES_PER_ENTRY = 4 + 8 + 8  # BasicProjector.generate_sketch_matrix: bernoulli_, *= 2.0, -= 1.0


@dataclass(frozen=True)
class ProjectorCost:
    """One GPU projector: ``backend`` (``fast_jl`` or ``basic``), its ``block`` (basic: columns),
    the device bytes it holds, and per ``project`` call its FLOPs and bytes streamed."""

    backend: str
    block: int | None
    device_bytes: int
    flops: float
    bytes_streamed: float


def fast_jl_batch(b: int, max_batch_size: int = 16) -> int:
    """``CudaProjector.project``'s kernel batch for a (b, d) input (TRAK: 8, 16 or 32, capped)."""
    size = 8 if b <= 8 else 16 if b <= 16 else 32
    return min(max_batch_size, size)


def gpu_projector(d: int, p: int, b: int, fast_jl: bool, sms: int) -> ProjectorCost:
    """The projector gs.projection builds for (b, d) gradients to p coordinates on a GPU with ``sms`` SMs.

    Raises:
        InputError: without fast_jl, one float32 column of d exceeds :data:`gs.projection.GPU_BLOCK_BYTES`.
    """
    from gs.projection import LESS_MAX_BATCH_SIZE, basic_block_size

    flops = 2.0 * b * d * p
    if fast_jl:
        e = fast_jl_batch(b, LESS_MAX_BATCH_SIZE)
        out = F32 * math.ceil(b / e) * e * min(d, sms) * p
        return ProjectorCost("fast_jl", None, out, flops, F32 * b * d + 2 * out)
    block = basic_block_size(d, p, "cuda")
    blocks = math.ceil(p / block)
    streamed = blocks * (RNG_BYTES_PER_ENTRY * d * block + F32 * b * d) + F32 * d * p
    return ProjectorCost("basic", block, F32 * d * block, flops, float(streamed))
