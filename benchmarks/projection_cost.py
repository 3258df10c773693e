"""Cost of projecting the embedded default's pool: sparse against TRAK's Rademacher projector (CPU).

The default's shape: n = 96 gradients of d = 460,800 in batches of 8, projected to 64, 256 and 1024,
plus ELREA's 1024 of a second (instruction-token) gradient per batch. Prints one JSON line: set-up and
projection seconds, CPU seconds and peak RSS. Run each kind in its own process, side by side::

    OMP_NUM_THREADS=1 python benchmarks/projection_cost.py sparse
    OMP_NUM_THREADS=1 python benchmarks/projection_cost.py rademacher
"""

import json
import resource
import sys
import time

import torch

from gs.gradients.projection import Projector

kind = sys.argv[1]
n, d, b = 96, 460_800, 8
dims = [64, 256, 1024]
t0 = time.perf_counter()
projs = {p: Projector(kind, d, p, p) for p in dims}
setup = time.perf_counter() - t0
gen = torch.Generator().manual_seed(0)
t0 = time.perf_counter()
for _ in range(0, n, b):
    g, g2 = torch.randn(b, d, generator=gen), torch.randn(b, d, generator=gen)
    for pr in projs.values():
        pr.transform(g)
    projs[1024].transform(g2)  # ELREA's instruction-token gradients
ru = resource.getrusage(resource.RUSAGE_SELF)
print(
    json.dumps(
        {
            "kind": kind,
            "setup_s": round(setup, 2),
            "project_s": round(time.perf_counter() - t0, 2),
            "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
            "max_rss_gb": round(ru.ru_maxrss / 2**20, 2),
        }
    )
)
