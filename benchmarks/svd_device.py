"""Time the online SVD on the GPU against the CPU on the same stream of gradient-sized blocks.

Each device gets the same seeded blocks ``(batch, d)`` float32 (a rank-``true_rank`` signal plus
noise), fed through :func:`gs.gradients.svd.make_online_svd` (Brand, state dtype ``auto``: float64 on the CPU,
float32 on the GPU). Both are warmed up on one block, then timed over ``--blocks`` blocks. The last
line is ``svd cpu/cuda=X.XX angle_deg=Y.YYYY``: the speed-up of the GPU and the largest principal angle
between the two runs' top-``rank`` subspaces (the float32 GPU state against the float64 CPU one).

    python benchmarks/svd_device.py --d 2000000 --blocks 20     # needs a CUDA device
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from gs.gradients.svd import make_online_svd, principal_angles
from gs.io import InputError, run_cli


def blocks(n_blocks: int, batch: int, d: int, true_rank: int, seed: int):
    """Seeded synthetic gradient blocks ``(batch, d)`` float32: decaying rank-``true_rank`` signal + noise."""
    gen = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, true_rank, generator=gen))[0].T  # (true_rank, d)
    scales = torch.linspace(10.0, 2.0, true_rank)
    for _ in range(n_blocks):
        coef = torch.randn(batch, true_rank, generator=gen) * scales
        yield coef @ basis + 0.5 * torch.randn(batch, d, generator=gen) / d**0.5


def run(device: str, args: argparse.Namespace) -> tuple[float, np.ndarray]:
    svd = make_online_svd("brand", args.rank, device=device)
    stream = list(blocks(args.blocks + 1, args.batch, args.d, args.true_rank, args.seed))
    svd.partial_fit(stream[0].to(device))
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for block in stream[1:]:
        svd.partial_fit(block.to(device))
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, np.asarray(svd.components_, dtype=np.float64)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Online SVD on the GPU against the CPU.")
    parser.add_argument("--d", type=int, default=2_000_000)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--true-rank", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise InputError("benchmarks/svd_device.py needs a CUDA device (none is visible)")
    cpu_s, cpu_v = run("cpu", args)
    gpu_s, gpu_v = run("cuda", args)
    angle = float(np.degrees(principal_angles(cpu_v, gpu_v).max()))
    shape = f"d={args.d} rank={args.rank} batch={args.batch} blocks={args.blocks}"
    print(f"device: {torch.cuda.get_device_name()}; {shape}")
    print(f"cpu {cpu_s:.2f} s, cuda {gpu_s:.2f} s")
    print(f"svd cpu/cuda={cpu_s / gpu_s:.2f} angle_deg={angle:.4f}")


if __name__ == "__main__":
    run_cli(main)
