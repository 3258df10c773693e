"""The resource planner: a fake-tensor trace against a real CPU run of the same step, the layer
extrapolation against a full-depth trace, and the fits / does-not-fit checks on hand-made numbers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from gs.plan import devices, host
from gs.plan.projector import gpu_projector
from gs.plan.report import check, predict
from gs.plan.resources import RuleResources, rule_resources
from gs.plan.stages import Stage, Work
from gs.plan.trace import Trace, gradient_step, trace_step, train_step, with_layers

LORA = {"rank": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
# A small Llama whose step memory (logits of a 32k vocabulary, MLP activations) dwarfs the allocator's noise.
TINY = dict(
    hidden_size=256,
    intermediate_size=1024,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=32000,
    max_position_embeddings=1024,
    tie_word_embeddings=False,
)


def _config(**over):
    from transformers import LlamaConfig

    return LlamaConfig(**{**TINY, **over})


# Run in a fresh process: build the model for real, attach LoRA with gs.training.attach_lora, note the
# resident set, run the real per-sample gradient step and read the peak resident set since then (VmHWM, reset).
REAL_STEP = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    from transformers import LlamaConfig, AutoModelForCausalLM
    from gs.training import LoraSpec, attach_lora
    from gs.gradients import per_sample_lora_gradients
    torch.set_num_threads(1)
    cfg = LlamaConfig(**json.loads(sys.argv[1]))
    b, t = int(sys.argv[2]), int(sys.argv[3])
    model = attach_lora(AutoModelForCausalLM.from_config(cfg), LoraSpec.from_config(json.loads(sys.argv[4])), 0)
    ids = torch.randint(0, cfg.vocab_size, (b, t), generator=torch.Generator().manual_seed(0))
    labels = ids.clone(); labels[:, : t // 2] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    per_sample_lora_gradients(model, {k: v[:1] for k, v in batch.items()})  # warm up lazy allocations
    page = resource.getpagesize()
    # Reset the peak (VmHWM) so that building the model does not count as the step's peak.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = int(open("/proc/self/statm").read().split()[1]) * page
    per_sample_lora_gradients(model, batch)
    status = open("/proc/self/status").read()
    peak = int(next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1]) * 1024
    print(json.dumps({"before": before, "peak": peak}))
    """
)


def test_traced_step_memory_matches_a_real_cpu_run():
    """Peak of the traced step above its weights vs the real process's RSS growth during the step."""
    b, t = 8, 256
    traced = trace_step(_config(), "float32", LORA, gradient_step(b, t))
    step_bytes = traced.peak_bytes - traced.breakdown.get("Parameter", 0) - traced.breakdown.get("Buffer", 0)
    run = subprocess.run(
        [sys.executable, "-c", REAL_STEP, json.dumps(TINY), str(b), str(t), json.dumps(LORA)],
        capture_output=True,
        text=True,
        check=True,
    )
    real = json.loads(run.stdout.strip().splitlines()[-1])
    grown = real["peak"] - real["before"]
    # The step holds hundreds of MB (logits (8, 256, 32000) float32 alone are 262 MB).
    assert step_bytes > 300e6
    assert grown == pytest.approx(step_bytes, rel=0.25)


def test_weights_and_lora_dimension_are_exact():
    """Traced parameter bytes and d against the counts by hand."""
    traced = trace_step(_config(), "float32", LORA, train_step(2, 16))
    h, inter, layers, vocab, kv = 256, 1024, 2, 32000, 2 * 64
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter + 2 * h  # q, o; k, v; MLP; two norms
    n_base = 2 * vocab * h + layers * per_layer + h  # embeddings, head, layers, final norm
    lora = layers * (8 * h + h * 8 + 8 * h + kv * 8)  # q: A (8, h), B (h, 8); v: A (8, h), B (kv, 8)
    assert traced.lora_dim == lora
    assert traced.weight_bytes == 4 * n_base


def test_layer_extrapolation_equals_full_depth_trace():
    """Tracing 1 and 2 layers and extending to 4 gives what tracing all 4 gives (gradient and train steps)."""
    cfg = _config(num_hidden_layers=4)
    for step in (gradient_step(2, 32), train_step(2, 32)):
        short = trace_step(cfg, "float32", LORA, step)
        full = trace_step(cfg, "float32", LORA, step, full_depth=True)
        assert short.peak_bytes == full.peak_bytes
        assert short.flops == full.flops
        assert (
            short.weight_bytes
            == full.weight_bytes
            == trace_step(with_layers(cfg, 4), "float32", None, train_step(1, 8), full_depth=True).weight_bytes
        )


GIB = 2**30


def _stage(peak: int, flops: float) -> Stage:
    trace = Trace(peak, {"Parameter": peak // 2}, {"train": int(flops)}, {}, weight_bytes=peak // 2, lora_dim=10)
    return Stage("s", "r", ["j"], ("gs.io",), [Work(trace, {"train": 10}, "bfloat16")])


def test_fits_and_does_not_fit():
    h100 = devices.gpu("H100-80GB")
    # 10 steps of 989e12 * 0.5 FLOPs at MFU 0.5 on 989 TFLOP/s: exactly 10 s on the GPU.
    stage = _stage(40 * GIB, 989e12 * 0.5)
    res = RuleResources(mem_mb=64000, runtime=1, gpu=1, threads=4)
    row = predict(stage, 1 * GIB, "gpu", h100, 0.5, 0.7, 1e9, res)
    assert row.gpu_seconds == pytest.approx(10.0)
    # Host on a GPU run: the baseline only (gs.models.load_model puts the weights straight on the GPU).
    assert row.host_bytes == 1 * GIB
    assert row.fits and row.problems == []

    too_big = predict(_stage(90 * GIB, 1.0), 0, "gpu", h100, 0.5, 0.7, 1e9, res)
    assert not too_big.fits and "device peak 90.0 GiB" in too_big.problems[0]

    no_gpu = predict(stage, 0, "gpu", h100, 0.5, 0.7, 1e9, RuleResources(mem_mb=64000, runtime=1, gpu=0))
    assert no_gpu.problems == ["needs a GPU but its resources give none"]

    small_host = predict(stage, 20 * GIB, "gpu", h100, 0.5, 0.7, 1e9, RuleResources(mem_mb=20000, runtime=1, gpu=1))
    assert small_host.problems == [f"host peak {20 * GIB / 1e6:.0f} MB > mem_mb 20000"]

    # A CPU run: host holds the whole traced step; time on 4 threads of 1 GFLOP/s each.
    cpu = predict(stage, GIB, "cpu", h100, 0.5, 0.7, 1e9, res)
    assert cpu.host_bytes == 41 * GIB
    assert cpu.cpu_seconds == pytest.approx(10 * 989e12 * 0.5 / 4e9)
    assert any(p.startswith("time ") for p in check(cpu, "cpu", h100))


def test_profile_resources_merge_like_snakemake():
    profile = {
        "default-resources": {"mem_mb": "16000 * attempt", "runtime": "60 * attempt"},
        "set-resources": {"r": {"mem_mb": "96000 * attempt"}},
        "set-threads": {"r": 8},
    }
    res = rule_resources("r", {"mem_mb": 8000, "gpu": 1, "_threads": 2}, profile)
    assert (res.mem_mb, res.runtime, res.gpu, res.threads) == (96000, 60, 1, 8)
    other = rule_resources("q", {"mem_mb": lambda wildcards, attempt: 8000 * attempt, "_threads": 2}, profile)
    assert (other.mem_mb, other.runtime, other.gpu, other.threads) == (8000, 60, 0, 2)


def test_gpu_projector_memory_and_time_follow_trak():
    d, p, b = 109_051_904, 8192, 4  # paper: Llama-3.1-8B LoRA r=128 q/k/v/o, LESS's 8192, gradients.batch_size 4
    fast = gpu_projector(d, p, b, True, 132)
    # fast_jl: float32 (8, 132, 8192) output (b = 4 padded to the kernel's batch of 8); 2 b d p FLOPs.
    assert fast.backend == "fast_jl" and fast.device_bytes == 4 * 8 * 132 * 8192 == 34_603_008
    assert fast.flops == 2 * 4 * d * 8192
    basic = gpu_projector(d, p, b, False, 132)
    # BasicProjector: 9 columns (4 GiB budget), 911 blocks; per block 20 B an entry generated, the (b, d)
    # input re-read, plus the block read once by the matmul over all p columns.
    assert basic.block == 9 and basic.device_bytes == 4 * d * 9
    assert basic.bytes_streamed == 911 * (20 * d * 9 + 4 * 4 * d) + 4 * d * 8192
    h100 = devices.gpu("H100-80GB")
    stage = _stage(GIB, 0.0)
    stage.projector_calls["projector"] = (basic, 100)
    row = predict(stage, 0, "gpu", h100, 0.5, 0.7, 1e9, RuleResources(mem_mb=64000, runtime=600, gpu=1))
    # bandwidth-bound: 100 calls x bytes / (3.35 TB/s x 0.7); the traced step has no FLOPs.
    assert row.gpu_seconds == pytest.approx(100 * basic.bytes_streamed / (3.35e12 * 0.7))
    assert row.gpu_seconds > 900  # 9.8 s a call: the fallback is slow
    # In bfloat16 (LESS: the model's dtype): 19 columns (floor(4 GiB / 2 d)), ceil(8192 / 19) = 432 blocks,
    # 5 x 2 B an entry generated, the bf16 input re-read per block, the float32 input cast once (4 + 2 B),
    # the block read once; the block and the cast input held.
    bf = gpu_projector(d, p, b, False, 132, "bfloat16")
    assert (bf.block, bf.dtype, bf.flops) == (19, "bfloat16", 2 * 4 * d * 8192)
    assert bf.device_bytes == 2 * d * 19 + 2 * 4 * d
    assert bf.bytes_streamed == 6 * 4 * d + 432 * (10 * d * 19 + 2 * 4 * d) + 2 * d * 8192
    stage.projector_calls["projector"] = (bf, 100)
    row_bf = predict(stage, 0, "gpu", h100, 0.5, 0.7, 1e9, RuleResources(mem_mb=64000, runtime=600, gpu=1))
    assert row_bf.gpu_seconds == pytest.approx(100 * bf.bytes_streamed / (3.35e12 * 0.7))
    assert 0.45 < row_bf.gpu_seconds / row.gpu_seconds < 0.5  # about half the traffic


def test_host_arithmetic_adds_its_streaming_time():
    h100 = devices.gpu("H100-80GB")
    stage = _stage(GIB, 989e12 * 0.5)  # 10 s on the GPU (as above)
    # gs.features.cluster_gradient_sums: per sample, 4 + 8 bytes (copy, float64) + 24 per method.
    assert host.coherence_host_traffic(1000, 7, 3) == 7 * 1000 * (4 + 8 + 3 * 24)
    stage.host_bytes_streamed = 20e9
    res = RuleResources(mem_mb=64000, runtime=60, gpu=1, threads=4)
    row = predict(stage, 0, "gpu", h100, 0.5, 0.7, 1e9, res, host_bandwidth=4e9)
    assert row.gpu_seconds == pytest.approx(10.0 + 5.0)  # 20 GB at 4 GB/s after the GPU's 10 s
    assert row.cpu_seconds == pytest.approx(10 * 989e12 * 0.5 / 4e9 + 5.0)
    assert 1e8 < devices.measure_host_bandwidth(size=2**20, seconds=0.05) < 1e12
