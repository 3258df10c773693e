"""bfloat16 against float32 on this CPU for the embedded model: one forward of SmolLM2-135M-Instruct on
8 x 128 tokens, one thread, in each dtype (best of ``--repeats``), and the product ``dtype: auto`` times
(:func:`gs.models.dtype.measure`). Run it natively and under the AVX2 caps, side by side:

    python benchmarks/cpu_dtype.py
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/cpu_dtype.py

The last line is ``bf16/f32=<r> capability=<...>``: the forward's time ratio (above 1: float32 is faster,
as on a CPU without AVX512-BF16 or AMX, where oneDNN emulates bfloat16). Uses the prepared model folder
(``resources/models/smollm2-135m-instruct``, from ``snakemake prepare_model`` or any run of the default).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from gs.io import InputError, run_cli
from gs.models.dtype import cpu_capability, cpu_model, measure


def forward_seconds(model_dir: Path, dtype: str, batch: int, tokens: int, repeats: int) -> float:
    """Best seconds of one no-grad forward of ``batch`` x ``tokens`` random tokens in ``dtype``."""
    from gs.models.load import load_model

    model = load_model(model_dir, dtype=dtype, device="cpu")
    ids = torch.randint(0, model.config.vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(0))
    best = float("inf")
    with torch.inference_mode():
        model(input_ids=ids[:1, :8])  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model(input_ids=ids, logits_to_keep=1)
            best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="resources/models/smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        raise InputError(f"{model_dir}: no prepared model (run: snakemake --cores 1 {model_dir})")
    torch.set_num_threads(1)
    times = {d: forward_seconds(model_dir, d, args.batch, args.tokens, args.repeats) for d in ("float32", "bfloat16")}
    print(f"cpu: {cpu_model()} ({cpu_capability()})")
    print(
        f"forward {args.batch} x {args.tokens} tokens, 1 thread: float32 {times['float32']:.2f} s, "
        f"bfloat16 {times['bfloat16']:.2f} s"
    )
    print(measure(576, 1536).line())
    print(f"bf16/f32={times['bfloat16'] / times['float32']:.2f} capability={torch.backends.cpu.get_cpu_capability()}")


if __name__ == "__main__":
    run_cli(main)
