"""Peak memory of the online SVD (streamed blocks) versus the exact SVD of the stacked matrix.

Usage::

    python benchmarks/svd_memory.py [--n 2000 --d 100000 --rank 8 --batch 16 --seed 0]

Synthetic "gradients" ``(n, d)`` float32 come from a seeded generator, block by block: a random
rank-``true_rank`` signal with decaying scales plus isotropic noise. Each mode runs in its own
fresh subprocess that regenerates exactly the same rows:

* ``brand`` / ``frequent_directions``: each block is generated, fed to
  :func:`gs.gradients.svd.make_online_svd` and dropped, so the full matrix never exists; for Brand the
  coordinates of all rows are also taken from ``seen_coordinates()`` (no second pass).
* ``stacked``: all blocks are written into one ``(n, d)`` float32 array, then
  :func:`gs.gradients.svd.exact_top_svd` (``method="gram"``: float64 Gram matrix accumulated over column
  chunks, so no float64 copy of the matrix) and the coordinates ``M @ V^T``.

* ``brand_float32``: the same Brand stream with float32 state (the GPU default; here on the CPU).
* ``brand_numpy``: the previous numpy-float64 implementation of :mod:`gs.gradients.svd` (read from git,
  ``--baseline-rev``), the baseline the torch port is compared with side by side (ratios printed).

Peak memory is the growth of the child's peak resident set size (``ru_maxrss``) over its value
right after imports, so it counts every allocation, LAPACK/BLAS workspaces included. The
``tracemalloc`` peak (numpy-tracked allocations only, which misses workspaces numpy's linalg
allocates with plain ``malloc``) is shown alongside. The generator's own ``(true_rank, d)`` basis
is part of both. The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator

import numpy as np

MODES = ("brand", "brand_float32", "brand_numpy", "frequent_directions", "stacked")
BASELINE_REV = "64f2903"  # the last commit with the numpy-float64 gs/gradients/svd.py


def _baseline_module(rev: str):
    """The numpy implementation of ``gs/gradients/svd.py`` at git revision ``rev``, imported as a module."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = subprocess.run(
        ["git", "-C", root, "show", f"{rev}:gs/gradients/svd.py"], capture_output=True, text=True, check=True
    )
    path = os.path.join(tempfile.mkdtemp(), "svd_numpy_baseline.py")
    with open(path, "w") as f:
        f.write(src.stdout)
    spec = importlib.util.spec_from_file_location("svd_numpy_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def batches(n: int, d: int, batch: int, true_rank: int, noise: float, seed: int) -> Iterator[np.ndarray]:
    """Blocks ``(<= batch, d)`` float32 of the synthetic matrix, the same for every mode."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((true_rank, d), dtype=np.float32) / np.float32(np.sqrt(d))
    scales = (10.0 * 0.8 ** np.arange(true_rank)).astype(np.float32)
    per_entry = np.float32(noise / np.sqrt(d))
    for start in range(0, n, batch):
        b = min(batch, n - start)
        coeff = rng.standard_normal((b, true_rank), dtype=np.float32) * scales
        x = coeff @ basis
        x += per_entry * rng.standard_normal((b, d), dtype=np.float32)
        yield x


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_child(args: argparse.Namespace) -> None:
    """Run one mode, save its components to ``args.out``, print a JSON line of measurements."""
    from gs.gradients.svd import exact_top_svd, make_online_svd

    gen = {key: getattr(args, key) for key in ("n", "d", "batch", "true_rank", "noise", "seed")}
    base_rss = _peak_rss_mb()
    tracemalloc.start()
    t0 = time.perf_counter()
    if args.child == "stacked":
        matrix = np.empty((args.n, args.d), dtype=np.float32)
        row = 0
        for x in batches(**gen):
            matrix[row : row + x.shape[0]] = x
            row += x.shape[0]
        sig, comps = exact_top_svd(matrix, args.rank, method="gram")
        coords = matrix @ comps.T.astype(np.float32)
    else:
        if args.child == "brand_numpy":
            svd = _baseline_module(args.baseline_rev).make_online_svd("brand", args.rank)
        elif args.child == "brand_float32":
            svd = make_online_svd("brand", args.rank, device="cpu", dtype="float32")
        else:
            svd = make_online_svd(args.child, args.rank, device="cpu")
        for x in batches(**gen):
            svd.partial_fit(x)
        sig, comps = svd.singular_values_, svd.components_
        coords = svd.seen_coordinates()
    seconds = time.perf_counter() - t0
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    np.savez(args.out, sig=sig, comps=comps)
    result = {
        "mode": args.child,
        "rss_peak_mb": _peak_rss_mb() - base_rss,
        "tracemalloc_peak_mb": traced_peak / 2**20,
        "seconds": seconds,
        "coords": None if coords is None else list(coords.shape),
    }
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="rows (samples)")
    p.add_argument("--d", type=int, default=100_000, help="columns (gradient dimension)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--true-rank", type=int, default=8, help="rank of the synthetic signal")
    p.add_argument("--noise", type=float, default=0.5, help="noise norm per row (signal norms ~2-10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--baseline-rev", default=BASELINE_REV, help="git revision of the numpy gs/gradients/svd.py baseline"
    )
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        run_child(args)
        return
    from gs.gradients.svd import principal_angles, relative_singular_value_error

    print(
        f"n={args.n} d={args.d} float32 ({args.n * args.d * 4 / 2**20:.0f} MiB stacked), rank={args.rank}, "
        f"batch={args.batch}, true_rank={args.true_rank}, noise={args.noise}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    results, fits = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in MODES:
            out = os.path.join(tmp, f"{mode}.npz")
            cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--out", out]
            for key in ("n", "d", "rank", "batch", "true_rank", "noise", "seed", "baseline_rev"):
                cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr)
                raise SystemExit(f"child {mode} failed with exit code {proc.returncode}")
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
            with np.load(out) as f:
                fits[mode] = (f["sig"], f["comps"])
    ref_sig, ref_comps = fits["stacked"]
    header = (
        f"{'mode':<20} {'peak RSS MiB':>12} {'tracemalloc MiB':>15} {'seconds':>8} "
        f"{'max angle deg':>13} {'sv rel err':>10}"
    )
    print(header)
    print("-" * len(header))
    angles = {}
    for mode in MODES:
        sig, comps = fits[mode]
        k = min(len(sig), len(ref_sig))
        angles[mode] = float(np.degrees(principal_angles(comps[:k], ref_comps[:k]).max()))
        err = relative_singular_value_error(sig, ref_sig)
        r = results[mode]
        angle = float(np.degrees(principal_angles(fits[mode][1], fits["brand_numpy"][1]).max()))
        print(
            f"{mode:<20} {r['rss_peak_mb']:>12.1f} {r['tracemalloc_peak_mb']:>15.1f} {r['seconds']:>8.1f} "
            f"{angles[mode]:>13.2e} {err:>10.2e}"
        )
    online, stacked = results["brand"]["rss_peak_mb"], results["stacked"]["rss_peak_mb"]
    print("peak = growth of the child's peak RSS after imports; angle and error are against 'stacked'.")
    print("tracemalloc sees numpy's allocations only (not torch's): compare the RSS column across modes.")
    # Peak formula of gs.gradients.svd.OnlineSVD: d (2 m + 3 b) state words, + d b for the float32 block's
    # conversion to a float64 state; m = rank (no oversampling). The generator's basis is extra.
    m, b, d = args.rank, args.batch, args.d
    for mode, word in (("brand", 8), ("brand_float32", 4)):
        formula = (d * (2 * m + 3 * b) * word + (d * b * 8 if word == 8 else 0)) / 2**20
        print(f"{mode}: formula peak {formula:.1f} MiB, measured {results[mode]['rss_peak_mb']:.1f} MiB")
    base = results["brand_numpy"]
    for mode in ("brand", "brand_float32"):
        r = results[mode]
        angle = float(np.degrees(principal_angles(fits[mode][1], fits["brand_numpy"][1]).max()))
        print(
            f"{mode} / brand_numpy: memory {r['rss_peak_mb'] / base['rss_peak_mb']:.2f}x, "
            f"time {r['seconds'] / base['seconds']:.2f}x, "
            f"angle between them {angle:.1e} deg"
        )
    print(
        f"online_peak_mb={online:.1f} stacked_peak_mb={stacked:.1f} "
        f"ratio=stacked/online={stacked / online:.1f} max_principal_angle_deg={angles['brand']:.2e}"
    )


if __name__ == "__main__":
    main()
