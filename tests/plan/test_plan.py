"""The resource planner: a fake-tensor trace against a real CPU run of the same step, the layer
extrapolation against a full-depth trace, and the fits / does-not-fit checks on hand-made numbers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gs.plan import devices, host
from gs.plan.projector import gpu_projector
from gs.plan.report import check, predict
from gs.plan.resources import RuleResources, rule_resources
from gs.plan.stages import Stage, Work, validation_size
from gs.plan.trace import Trace, gradient_step, trace_step, train_step, with_layers

LORA = {"rank": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
# A small Llama whose step memory (logits of a 32k vocabulary, MLP activations) dwarfs the allocator's noise.
TINY = dict(hidden_size=256, intermediate_size=1024, max_position_embeddings=1024, tie_word_embeddings=False)


def _config(**over):
    from rehearsal_assets import tiny_llama_config

    fields = {**TINY, **over}
    return tiny_llama_config(fields.pop("vocab_size", 32000), **fields)


# Run in a fresh process: build the model for real, attach LoRA with gs.models.lora.attach_lora, note the
# resident set, run the real per-sample gradient step and read the peak resident set since then (VmHWM, reset).
REAL_STEP = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    from transformers import LlamaConfig, AutoModelForCausalLM
    from gs.models.lora import LoraSpec, attach_lora
    from gs.gradients.per_sample import per_sample_lora_gradients
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
        [sys.executable, "-c", REAL_STEP, _config().to_json_string(), str(b), str(t), json.dumps(LORA)],
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
    # Host on a GPU run: the baseline only (gs.models.load.load_model puts the weights straight on the GPU).
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
    # fast_jl: float32 (8, 132, 8192) output (b = 4 padded to the kernel's batch of 8); the kernel multiplies
    # all 8 rows (2 x 8 d p half FLOPs) and draws each of the d p entries once in registers (4 integer ops).
    assert fast.backend == "fast_jl" and fast.device_bytes == 4 * 8 * 132 * 8192 == 34_603_008
    assert fast.flops == 2 * 8 * d * 8192 and fast.dtype == "float16" and fast.int_ops == 4 * d * 8192
    # 20 rows: one launch of 32 (TRAK's max_batch_size; LESS's 16 would launch twice), the matrix drawn once;
    # 40 rows: two launches of 32 (64 rows multiplied), each drawing the matrix again.
    twenty = gpu_projector(d, p, 20, True, 132)
    assert twenty.flops == 2 * 32 * d * 8192 and twenty.int_ops == 4 * d * 8192
    forty = gpu_projector(d, p, 40, True, 132)
    assert forty.flops == 2 * 64 * d * 8192 and forty.int_ops == 2 * 4 * d * 8192
    assert forty.device_bytes == 4 * 64 * 132 * 8192
    stage = _stage(GIB, 0.0)
    stage.projector_calls["projector"] = (fast, 10)
    h100 = devices.gpu("H100-80GB")
    row = predict(stage, 0, "gpu", h100, 0.5, 0.7, 1e9, RuleResources(mem_mb=64000, runtime=600, gpu=1))
    # 10 calls: the MMAs at 989 TFLOP/s x 0.5 (above the input's read at 3.35 TB/s x 0.7), the draw at
    # 132 SMs x 64 INT32 lanes x 1.98 GHz (16.7e12, as the table rounds it) x 0.5.
    mma = max(2 * 8 * d * 8192 / (989e12 * 0.5), fast.bytes_streamed / (3.35e12 * 0.7))
    assert row.gpu_seconds == pytest.approx(10 * (mma + 4 * d * 8192 / (16.7e12 * 0.5)), rel=1e-9)
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
    # gs.cluster.coherence.cluster_gradient_sums: per sample, 4 + 8 bytes (copy, float64) + 24 per method.
    assert host.coherence_host_traffic(1000, 7, 3) == 7 * 1000 * (4 + 8 + 3 * 24)
    stage.host_bytes_streamed = 20e9
    res = RuleResources(mem_mb=64000, runtime=60, gpu=1, threads=4)
    row = predict(stage, 0, "gpu", h100, 0.5, 0.7, 1e9, res, host_bandwidth=4e9)
    assert row.gpu_seconds == pytest.approx(10.0 + 5.0)  # 20 GB at 4 GB/s after the GPU's 10 s
    assert row.cpu_seconds == pytest.approx(10 * 989e12 * 0.5 / 4e9 + 5.0)
    assert 1e8 < devices.measure_host_bandwidth(size=2**20, seconds=0.05) < 1e12


# Run in a fresh process: the kept-gradient memory map as the extraction writes it
# (gs.gradients.extraction.open_kept_gradients), as gs.cluster.quality reads it (unit_gram) and as
# gs.cluster.ablation sweeps it
# (run_kept, its CLI's np.load(mmap_mode="r") path), each step's peak resident set (VmHWM, reset
# before it) above the resident set before it. Lazy imports (torch, TRAK, scikit-learn) are done first.
KEPT_RUN = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np
    from gs.cluster.ablation import AblationSpec, run_kept
    from gs.gradients.extraction import open_kept_gradients
    from gs.cluster.quality import unit_gram

    def reset():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return int(open("/proc/self/statm").read().split()[1]) * 4096

    def peak():
        status = open("/proc/self/status").read()
        return int(next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1]) * 1024

    n, d, p, b = (int(x) for x in sys.argv[2:6])
    path = Path(sys.argv[1])
    domains = [str(i % 2) for i in range(n)]
    spec = AblationSpec(dims=(8, p), seeds=1, kind="rademacher", k=2, rank=2, n_init=1, seed=0)
    rng = np.random.default_rng(0)
    run_kept(rng.standard_normal((n, 64), dtype=np.float32), domains, AblationSpec((8,), 1, "rademacher", 2, 2, 1, 0))
    out = {}
    before = reset()
    kept = open_kept_gradients(path, n, d, resume=False)
    for row in range(0, n, b):
        kept[row : row + b] = rng.standard_normal((min(b, n - row), d), dtype=np.float32)
    kept.flush()
    out["extract"] = peak() - before
    del kept
    before = reset()
    g = np.load(path, mmap_mode="r")
    unit_gram(g)
    out["quality"] = peak() - before
    del g
    before = reset()
    g = np.load(path, mmap_mode="r")
    run_kept(np.asarray(g, dtype=np.float32), domains, spec)
    out["ablation"] = peak() - before
    print(json.dumps(out))
    """
)


def test_kept_gradient_arrays_match_a_real_run(tmp_path):
    """Planned host arrays of the kept gradients against the real code's resident-set growth: the
    extraction's memory map written row block by row block (4 n d), gs.cluster.quality's Gram matrix over it
    (the map read whole and one (n, 65536) float64 block) and gs.cluster.ablation's sweep (the larger phase:
    the map, float64 unit rows, their float32 copy, TRAK's (d, 128) float32 block and the sketch).
    Expected sizes by hand below; the sweep's projection phase (16 n d + 4 d 128) is the larger here."""
    n, d, p, b = 48, 300_000, 128, 8
    assert host.kept_gradients_bytes(n, d) == 4 * n * d
    # unit_gram's blocks of 65536 columns: 4 full and 37,856. The previous block's float64 copy is still alive
    # beside the current one's, and the map is read up to the current block: largest at the 4th full block
    # (4 x 65536 columns read, two full blocks) rather than the last (all read, a full and a 37,856 block).
    assert sum(host.quality_gram_bytes(n, d).values()) == 4 * n * 4 * 65536 + 8 * n * 2 * 65536
    assert 4 * n * 4 * 65536 + 8 * n * 2 * 65536 > 4 * n * d + 8 * n * (65536 + 37856)
    # at d = 460,800 (7 full blocks and 2,048) the peak is the 7th block: 7 x 65536 columns read, two full blocks
    assert sum(host.quality_gram_bytes(96, 460_800).values()) == 4 * 96 * 7 * 65536 + 8 * 96 * 2 * 65536
    planned_ablation = host.ablation_host_bytes(n, d, p, "rademacher")
    assert sum(planned_ablation.values()) == 4 * n * d + 8 * n * d + 4 * n * d + 4 * d * 128 + 4 * n * p
    # the normalisation phase (the map and two float64 copies, 20 n d) is smaller at these sizes
    assert 20 * n * d < sum(planned_ablation.values())
    run = subprocess.run(
        [sys.executable, "-c", KEPT_RUN, str(tmp_path / "gradients.npy"), str(n), str(d), str(p), str(b)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    real = json.loads(run.stdout.strip().splitlines()[-1])
    print(real)
    # the written batch itself (4 b d) is the extraction's "gradient batch", planned beside the map
    assert real["extract"] == pytest.approx(host.kept_gradients_bytes(n, d) + 4 * b * d, rel=0.15)
    assert real["quality"] == pytest.approx(sum(host.quality_gram_bytes(n, d).values()), rel=0.15)
    assert real["ablation"] == pytest.approx(sum(planned_ablation.values()), rel=0.15)


def _tiny_planner(**over):
    """The Planner on config/test.yaml (over config/config.yaml) with a tiny Llama and a fixed draw rate."""
    from rehearsal_assets import tiny_plan_inputs

    from gs.plan.stages import Planner

    config, hf = tiny_plan_inputs()
    for section, values in over.items():
        config[section] = {**config[section], **values}
    return Planner(config, hf, draw_rate=2e7), config


@pytest.fixture(scope="module")
def tiny_stages():
    """The test config's planner, config and stages (traced once for the tests below)."""
    planner, config = _tiny_planner()
    return planner, config, planner.stages()


def test_every_rule_of_the_workflow_has_a_stage(tiny_stages):
    """Rules named in rules/*.smk against the planned stages: the default form, the shard form with
    Frequent Directions (its basis merge and second pass) and rule plan, which gs.plan.cli adds itself."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    rules = set()
    for smk in (root / "rules").glob("*.smk"):
        rules |= set(re.findall(r"^rule (\w+):", smk.read_text(), re.M))
    planned = {s.rule for s in tiny_stages[2]}
    fd, _ = _tiny_planner(gradients={"svd": {"method": "frequent_directions", "rank": 2}, "keep_gradients": False})
    planned |= {s.rule for s in fd.gradient_passes(2, 3, 2) + fd.influence_pass(2)}
    # A target with its own validation source (not a part's split) adds rule prepare_target.
    fd.config["targets"]["math"]["validation"] = {"source": "gsm_symbolic", "n": 4}
    planned |= {s.rule for s in fd._prepare_domains()}
    assert "ablation" in rules and "router_table" in rules
    assert rules - planned == {"plan"}


def test_ablation_router_table_and_kept_gradient_stages(tiny_stages):
    """The test config (n = 16, keep_gradients, ablation dims [8, 16, 32] over 5 Rademacher seeds): the
    ablation's arrays and time by hand; the extraction and the quality stage count the memory map."""
    _, config, all_stages = tiny_stages
    stages = {s.rule: s for s in all_stages if s.rule != "cluster_samples"}
    d, n = stages["extract_gradient_features"].work[0].trace.lora_dim, 16
    ab = stages["ablation"]
    assert ab.jobs == ["ablation"] and "trak.projectors" in ab.imports
    block = 32  # min(128, P_max = 32): one (d, 32) float32 block, drawn once per seed
    arrays = {k: v for k, v in ab.host_extra.items() if k != "features.npz"}
    assert sum(arrays.values()) == max(4 * n * d + 16 * n * d, 4 * n * d + 12 * n * d + 4 * d * block + 4 * n * 32)
    assert ab.host_seconds == pytest.approx(5 * d * block / 2e7)
    assert ab.host_flops == pytest.approx(5 * 2 * n * d * block + 4 * 2 * n * n * d)
    assert stages["extract_gradient_features"].host_extra["kept gradients (memory map, pages written)"] == 4 * n * d
    assert sum(v for k, v in stages["cluster_quality"].host_extra.items() if "kept" in k or "float64" in k) == (
        4 * n * d + 8 * n * d  # one block of d < 65536 columns
    )
    methods = config["cluster"]["methods"]
    assert stages["router_table"].host_extra == {"table": 8 * len(methods) * (8 + 2 * 5)}
    # Time of the ablation on either run: FLOPs at the CPU rate on the rule's one thread, plus the draw.
    h100 = devices.gpu("H100-80GB")
    for run_on in ("cpu", "gpu"):
        row = predict(ab, 0, run_on, h100, 0.5, 0.7, 1e9, RuleResources(), host_bandwidth=1e10)
        assert row.cpu_seconds == row.gpu_seconds == pytest.approx(ab.host_flops / 1e9 + ab.host_seconds)
    # Without kept gradients: features.npz only in the ablation, no memory map in the extraction.
    plain, _ = _tiny_planner(gradients={"keep_gradients": False})
    assert list(plain._ablation(d, 123).host_extra) == ["features.npz"] and plain._ablation(d, 1).host_seconds == 0
    assert not any("kept" in k for k in plain.gradient_passes(1, 3, 2)[0].host_extra)


def test_experts_are_planned_only_for_evaluated_methods():
    """A method no system evaluates keeps its router (the router table) but trains no experts."""
    planner, _ = _tiny_planner(evaluation={"modes": {"gradientspace": ["single"], "semantic": []}})
    stages = {s.rule: s for s in planner.stages()}
    assert stages["train_experts"].jobs == ["gradientspace"]
    assert stages["train_router"].jobs == ["gradientspace", "semantic"]


def test_plan_job_counts_its_baseline_children():
    """Rule plan: the two largest import baselines measured at once, or the bandwidth probe if larger."""
    from gs.plan.cli import plan_host_bytes

    baselines = {("a",): 900, ("b",): 500, ("c",): 700}
    assert sum(plan_host_bytes(baselines, 2).values()) == 2**27  # 128 MiB probe > 1600 bytes
    big = {k: v * 2**20 for k, v in baselines.items()}
    assert sum(plan_host_bytes(big, 2).values()) == (900 + 700) * 2**20
    assert host.measure_rademacher_rate(size=2**16, seconds=0.02) > 1e5


@pytest.mark.parametrize(("lookahead", "arms"), [(1, "clusterucb"), (3, "clusterucb"), (3, "gradientspace")])
def test_selection_stage_runs_the_drawn_samples_influence(plan_inputs, lookahead, arms):
    """select_data computes ClusterUCB's draws on demand (gs.selection.on_demand): the plan runs the gradient step
    on budget_fraction of the pool, pull by pull, plus the largest validation set at every checkpoint, by hand;
    with a lookahead, pulls of that many and, at most, k (lookahead - 1) samples computed and never drawn, k the
    arms' count (ClusterUCB's own k, or the cluster method's)."""
    import copy
    import math

    from gs.plan.stages import Planner

    config, hf = plan_inputs
    config = copy.deepcopy(config)
    config["selection"].update(lookahead=lookahead, clusters=arms)
    planner = Planner(config, hf)
    sel = next(s for s in planner.stages() if s.rule == "select_data")
    n, gb = planner.n_pool, int(config["gradients"]["batch_size"])
    ckpts = math.ceil(float(config["gradients"]["warmup"]["train"]["epochs"]))
    drawn = math.ceil(float(config["selection"]["budget_fraction"]) * n)
    parts = config["data"]["parts"]
    val = max(
        int(parts[config["targets"][t]["validation"]["part"]]["validation"]["n"])
        for t in config["selection"]["targets"]
    )
    # A pull asks for max(draw_size, lookahead) samples and batches them alone (gs.selection.on_demand):
    # ceil(size / batch) a pull.
    size = max(int(config["selection"].get("draw_size", 1)), lookahead)
    k = int(config["selection"]["ucb_clustering"]["k"] if arms == "clusterucb" else config["cluster"]["k"])
    assert k != int(config["cluster"]["k"] if arms == "clusterucb" else config["selection"]["ucb_clustering"]["k"])
    computed = min(n, drawn + k * (size - int(config["selection"].get("draw_size", 1))))
    pulls = [min(size, computed - start) for start in range(0, computed, size)]
    batches = sum(math.ceil(p / gb) for p in pulls) + math.ceil(val / gb)
    assert sel.work and sel.work[0].repeats == {"gradient": ckpts * batches}
    assert sel.host_extra["influence scores"] == 8 * (ckpts + 1) * len(config["selection"]["targets"]) * n
    assert "gs.selection.on_demand" in sel.imports


def test_cpu_evaluation_in_another_dtype_counts_the_prepared_folder_read(plan_inputs):
    """On a CPU run whose evaluation dtype differs from the prepared folder's, every evaluation stage holds
    the folder's weights as read (n_params x 4 bytes of float32 safetensors, memory-mapped) beside its own."""
    from transformers import AutoModelForCausalLM

    from gs.plan.stages import Planner

    config, hf = plan_inputs
    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(hf).parameters())
    key = "prepared folder read for the cast"
    for eval_dtype, expected in (("bfloat16", 4 * n_params), ("float32", None)):
        config["evaluation"]["dtype"] = eval_dtype
        config["model"]["dtype"] = "float32"
        stages = [s for s in Planner(config, hf).stages() if s.rule == "evaluate_system"]
        assert stages and all(s.host_extra.get(key) == expected for s in stages), eval_dtype


def test_evaluation_batch_size_by_mode_is_planned_per_mode(plan_inputs):
    """evaluation.batch_size_by_mode sets one mode's generation batch (gs.evaluation.run.generation_batch_size):
    its decode steps are ceil(n / b) x max_gen_toks a task at that b, the other modes' at batch_size."""
    import copy
    import math

    from gs.evaluation.run import generation_batch_size
    from gs.plan.stages import Planner
    from gs.plan.tasks import target_work

    config, hf = plan_inputs
    config = copy.deepcopy(config)
    config["evaluation"]["modes"] = {"gradientspace": ["single", "uniform"]}
    config["evaluation"].update(batch_size=4, batch_size_by_mode={"uniform": 1})
    params = config["evaluation"]
    assert generation_batch_size({"mode": "uniform"}, params) == 1
    assert generation_batch_size({"mode": "single"}, params) == 4
    assert generation_batch_size({}, {}) == 8  # the schema's "absent: 8"
    planner = Planner(config, hf)
    stages = {s.stage: s for s in planner.stages() if s.rule == "evaluate_system"}
    gen = [w for t in config["targets"] for w in target_work(config, [t], planner.prompt) if w.kind == "generate_until"]
    assert gen
    for mode, b in (("uniform", 1), ("single", 4)):
        decode = stages[f"evaluation ({mode})"].work[0].repeats["decode"]
        assert decode == sum(math.ceil(w.n / b) * w.max_gen_toks for w in gen), mode


def test_import_baselines_are_measured_once_per_environment(tmp_path, monkeypatch):
    """The second plan in one environment reads the baselines the first measured; a changed
    environment (another installed version) measures again; GS_PLAN_CACHE=0 keeps nothing."""
    calls = []

    def fake_measure(sets, workers=2):
        calls.append(list(sets))
        return {v: 100 * len(v) for v in sets}

    monkeypatch.setattr(host, "measure_baselines", fake_measure)
    monkeypatch.setattr(host, "environment_fingerprint", lambda: "env-1")
    path = tmp_path / "cache.json"
    sets = [("a",), ("a", "b")]
    assert host.cached_baselines(sets, path=path) == ({("a",): 100, ("a", "b"): 200}, sets)
    assert host.cached_baselines(sets + [("c",)], path=path) == (
        {("a",): 100, ("a", "b"): 200, ("c",): 100},
        [("c",)],
    )
    assert calls == [sets, [("c",)]]
    monkeypatch.setattr(host, "environment_fingerprint", lambda: "env-2")
    assert host.cached_baselines(sets, path=path)[1] == sets  # measured again
    monkeypatch.setenv("GS_PLAN_CACHE", "0")
    assert host.baseline_cache_path() is None
    monkeypatch.setenv("GS_PLAN_CACHE", str(tmp_path / "other.json"))
    assert host.baseline_cache_path() == tmp_path / "other.json"


def test_environment_fingerprint_follows_the_gs_files():
    """Touching a gs file changes the fingerprint (its baseline may change with it)."""
    before = host.environment_fingerprint()
    target = Path(host.__file__)
    stat = target.stat()
    try:
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        assert host.environment_fingerprint() != before
    finally:
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert host.environment_fingerprint() == before


@pytest.mark.parametrize("shards", [1, 3])
def test_every_planned_stage_imports_the_module_its_rule_runs(shards):
    """The planner's host baseline imports what the job imports: for every planned stage, the module
    its rule runs (read from ``rules/*.smk``, not from the planner) is among the stage's imports."""
    import re
    from pathlib import Path

    rules = {}
    for smk in (Path(__file__).resolve().parents[2] / "rules").glob("*.smk"):
        for name, body in re.findall(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", smk.read_text(), re.S | re.M):
            rules[name] = re.findall(r"python -m (gs(?:\.\w+)+)", body)
    planner, _ = _tiny_planner(gradients={"shards": shards})
    checked = 0
    for stage in planner.stages():
        if stage.rule in rules and rules[stage.rule]:
            checked += 1
            assert set(rules[stage.rule]) <= set(stage.imports), (stage.rule, rules[stage.rule], stage.imports)
    assert checked >= 12


@pytest.mark.parametrize("studies", [["clusterucb"], ["gradientspace"]])
def test_a_study_alone_plans_the_rules_its_dry_run_lists(tmp_path, studies):
    """The planner's stages for one study against ``snakemake -n``'s jobs for the same config (the DAG
    decides, not the planner): the same rules, rule plan and the DAG's target ``all`` apart."""
    import re

    import yaml
    from workflow_tools import ROOT, run_snakemake, workflow_copy

    planner, config = _tiny_planner()
    planner.config["studies"] = studies
    if studies == ["clusterucb"]:
        planner.config["selection"] = {**planner.config["selection"], "compare_clusters": []}
    planned = {s.rule for s in planner.stages()}
    work = workflow_copy(tmp_path / "wf")
    own = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    own["studies"] = studies
    own["selection"]["compare_clusters"] = planner.config["selection"]["compare_clusters"]
    (work / "study.yaml").write_text(yaml.safe_dump(own), encoding="utf-8")
    result = run_snakemake("-n", "--configfile", "study.yaml", cwd=work, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    stats = result.stdout.split("Job stats:")[1].split("\ntotal")[0]
    listed = set(re.findall(r"^(\w+)\s+\d+$", stats, re.M)) - {"all", "plan"}
    # rules/data.smk makes one prepare_part rule per set of split files (prepare_part, prepare_part_2, ...)
    listed = {re.sub(r"^prepare_part_\d+$", "prepare_part", rule) for rule in listed}
    assert planned == listed


def test_plan_fast_jl_is_checked_where_a_gpu_is(monkeypatch):
    """plan.fast_jl: true on a machine whose GPU cannot run fast_jl stops the plan in one line; without a GPU
    the claim stands as the config's, said in a note; fast_jl running where the plan says false is noted."""
    import torch

    from gs.gradients import projection
    from gs.io import InputError
    from gs.plan.cli import _check_fast_jl

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "not checked here (no GPU)" in _check_fast_jl(True) and _check_fast_jl(False) == ""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(projection, "fast_jl_available", lambda device: False)
    with pytest.raises(InputError, match="fast_jl does not run on this GPU: bash envs/build_fast_jl.sh"):
        _check_fast_jl(True)
    assert _check_fast_jl(False) == ""
    monkeypatch.setattr(projection, "fast_jl_available", lambda device: True)
    assert _check_fast_jl(True) == "" and "counts BasicProjector" in _check_fast_jl(False)


def test_buffered_projection_calls_and_memory():
    """gs.gradients.projection.project_in_buffers gathers whole batches up to ``rows``: the planner's calls
    and rows a call by hand, and on a GPU run the influence pass's projector calls and its (rows, d) buffer in
    the projector's dtype (the model's, the one the gradients run in)."""
    from gs.plan.stages import buffered_calls

    assert buffered_calls(100, 4, 16) == (7, 16)  # 25 batches, 4 a call
    assert buffered_calls(100, 4, 6) == (25, 4)  # one batch fits: a batch a call, as without a buffer
    assert buffered_calls(100, 8, 4) == (13, 8)  # a batch larger than the buffer goes alone
    runs = {}
    for rows in (4, 16):
        planner, config = _tiny_planner(gradients={"projection_rows": rows}, plan={"run_on": "gpu"})
        runs[rows] = (planner.influence_pass(1)[0], config)
    stage, config = runs[16]
    b, n = int(config["gradients"]["batch_size"]), 16  # the test config's pool
    ckpts = math.ceil(float(config["gradients"]["warmup"]["train"]["epochs"]))
    n_val = sum(math.ceil(validation_size(config, t) / b) for t in config["selection"]["targets"])
    d = stage.work[0].trace.lora_dim
    ((cost, calls),) = stage.projector_calls.values()
    assert calls == ckpts * (math.ceil(math.ceil(n / b) / (16 // b)) + n_val)
    assert stage.work[0].dtype == "float32"  # the test config's gradients: a float32 projector on a GPU too
    assert stage.device_extra["projection buffer"] == 4 * 16 * d
    ((cost4, calls4),) = runs[4][0].projector_calls.values()
    assert calls4 == ckpts * (math.ceil(n / b) + n_val) > calls
