"""Time per projected gradient row against rows per ``project`` call, the matrix regenerated on every call.

This is TRAK's ``BasicProjector`` as it runs on a GPU without ``fast_jl`` (and on the CPU above
``gs.gradients.projection.CACHE_LIMIT_BYTES``): every call draws all d x p Rademacher entries again, so the
LESS influence pass and ClusterUCB's clustering pass gather ``gradients.projection_rows`` rows per call
(:func:`gs.gradients.projection.project_in_buffers`). Here on the CPU (``cache_limit_bytes=0``), at 1, 8,
32 and 128 rows a call over the same 128 rows, one line per setting and last ``rows1/rows128=<r>``, the
time per row at 1 row a call over that at 128::

    OMP_NUM_THREADS=1 python benchmarks/projection_rows.py            # d = 50,000, p = 256 (about 40 s)
    OMP_NUM_THREADS=1 python benchmarks/projection_rows.py --d 200000 --p 512
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from gs.gradients.projection import Projector, project_in_buffers
from gs.models.dtype import cpu_capability, cpu_model


def seconds_per_row(proj: Projector, x: torch.Tensor, rows: int) -> float:
    """Wall seconds per row to project ``x`` (n, d) in one-row blocks gathered ``rows`` rows a call."""
    t0 = time.perf_counter()
    for _ in project_in_buffers(((i, x[i : i + 1]) for i in range(x.shape[0])), proj.project, rows):
        pass
    return (time.perf_counter() - t0) / x.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=50_000)
    parser.add_argument("--p", type=int, default=256)
    parser.add_argument("--n", type=int, default=128)
    args = parser.parse_args()
    proj = Projector("rademacher", args.d, args.p, 0, device="cpu", cache_limit_bytes=0)  # regenerated per call
    x = torch.randn(args.n, args.d, generator=torch.Generator().manual_seed(0))
    per_row = {}
    for rows in (1, 8, 32, 128):
        per_row[rows] = seconds_per_row(proj, x, rows)
        line = {"rows_per_call": rows, "seconds_per_row": round(per_row[rows], 5), "d": args.d, "p": args.p}
        print(json.dumps({**line, "cpu": f"{cpu_model()} ({cpu_capability()})", "threads": torch.get_num_threads()}))
    print(f"rows1/rows128={per_row[1] / per_row[128]:.1f}")


if __name__ == "__main__":
    main()
