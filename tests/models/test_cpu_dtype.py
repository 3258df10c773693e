"""dtype: auto (gs.models.dtype): the faster of float32 and bfloat16 on this CPU, cached per machine, used by
every stage that loads the model, and counted by the planner at the measured rate of each dtype."""

import json
import os
import subprocess
import sys

import pytest
import torch

from gs.models import dtype as cpu_dtype
from gs.models.dtype import CpuDtypeChoice

AVX2_CAPS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _fake_times(monkeypatch, f32: float, bf16: float) -> list[str]:
    calls: list[str] = []

    def timed(dtype, rows, hidden, inner, seconds=0.3):
        calls.append(dtype)
        return {"float32": f32, "bfloat16": bf16}[dtype]

    monkeypatch.setattr(cpu_dtype, "time_product", timed)
    return calls


@pytest.mark.parametrize(
    ("f32", "bf16", "want"), [(1.0, 0.4, "bfloat16"), (0.2, 1.2, "float32"), (0.5, 0.5, "float32")]
)
def test_the_faster_dtype_wins_and_a_tie_goes_to_float32(monkeypatch, f32, bf16, want):
    _fake_times(monkeypatch, f32, bf16)
    choice = cpu_dtype.measure(64, 128)
    assert choice.dtype == want
    assert choice.line() == f"cpu dtype: {want} (float32 {f32:.4f} s, bfloat16 {bf16:.4f} s)"
    assert choice.shape == (cpu_dtype.ROWS, 64, 128)


def test_the_choice_is_cached_per_machine_and_shape(monkeypatch, tmp_path):
    for cap in cpu_dtype.CAPS:  # this run's own caps (CI under the AVX2 caps) are part of the key
        monkeypatch.delenv(cap, raising=False)
    calls = _fake_times(monkeypatch, 1.0, 0.5)
    path = tmp_path / "cpu_dtype.json"
    first = cpu_dtype.choose(64, 128, path=path)
    # Another measurement would now say float32: the cache keeps the machine's first answer.
    _fake_times(monkeypatch, 0.1, 0.5)
    assert cpu_dtype.choose(64, 128, path=path) == first
    assert first.dtype == "bfloat16" and calls == ["float32", "bfloat16"]
    # Another shape, or the kernel caps of an AVX2 CPU, is another key: measured again.
    assert cpu_dtype.choose(64, 256, path=path).dtype == "float32"
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert cpu_dtype.choose(64, 128, path=path).dtype == "float32"
    assert len(json.loads(path.read_text())) == 3


def test_cache_opt_out_and_location(monkeypatch, tmp_path):
    monkeypatch.setenv("GS_DTYPE_CACHE", "0")
    assert cpu_dtype.cache_path() is None
    monkeypatch.setenv("GS_DTYPE_CACHE", str(tmp_path / "x.json"))
    assert cpu_dtype.cache_path() == tmp_path / "x.json"
    monkeypatch.delenv("GS_DTYPE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cpu_dtype.cache_path() == tmp_path / "gradientspace-bench" / "cpu_dtype.json"


def test_an_explicit_dtype_is_kept_and_auto_is_bfloat16_on_a_gpu(monkeypatch):
    _fake_times(monkeypatch, 0.1, 9.9)
    assert cpu_dtype.resolve("float16", "cpu", (64, 128)) == "float16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert cpu_dtype.resolve("auto", "cuda", (64, 128)) == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert cpu_dtype.resolve("auto", "cuda:0", (64, 128)) == "float32"


@pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64", reason="x86 kernel caps")
def test_under_the_avx2_caps_bfloat16_is_emulated_and_float32_is_chosen(tmp_path):
    """PyTorch's and oneDNN's documented caps make this CPU an AVX2-only one: bfloat16 matmuls then have no
    native kernel (issue 21 measured 51x slower for this shape), and the measurement must say float32."""
    code = (
        "import json, torch; from gs.models.dtype import measure; c = measure(576, 1536);"
        "print(json.dumps([torch.backends.cpu.get_cpu_capability(), c.dtype, c.float32_s, c.bfloat16_s]))"
    )
    env = {**os.environ, **AVX2_CAPS, "GS_DTYPE_CACHE": "0"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    capability, chosen, f32, bf16 = json.loads(run.stdout.strip().splitlines()[-1])
    assert capability == "AVX2"
    assert chosen == "float32" and bf16 > 3 * f32


def test_load_model_runs_auto_in_the_measured_dtype(monkeypatch, tiny_model_dir, tmp_path):
    from gs.models.load import load_model, run_dtype
    from gs.models.prepare import prepare_model

    spec = {"name": "t", "source": "local", "path": str(tiny_model_dir), "dtype": "auto", "device": "cpu"}
    out = prepare_model(spec, tmp_path / "m")
    assert json.loads((out / "gs_model.json").read_text()) == {"dtype": "auto", "device": "cpu"}
    weights = {p.dtype for p in load_model(out, dtype="float32").parameters()}
    assert weights == {torch.float32}  # stored in float32, cast on load
    monkeypatch.setattr(cpu_dtype, "choose", lambda *a, **k: CpuDtypeChoice("bfloat16", 1.0, 0.5, "c", "x", (1, 2, 3)))
    assert run_dtype(out) == "bfloat16"
    assert {p.dtype for p in load_model(out).parameters()} == {torch.bfloat16}
    monkeypatch.setattr(cpu_dtype, "choose", lambda *a, **k: CpuDtypeChoice("float32", 0.5, 1.0, "c", "x", (1, 2, 3)))
    assert {p.dtype for p in load_model(out).parameters()} == {torch.float32}
    assert run_dtype(out, dtype="float16") == "float16"


def test_the_evaluation_records_the_dtype_that_ran(monkeypatch, tiny_model_dir):
    from gs.evaluation.run import model_args_for

    monkeypatch.setattr(cpu_dtype, "choose", lambda *a, **k: CpuDtypeChoice("bfloat16", 1.0, 0.5, "c", "x", (1, 2, 3)))
    system = {"name": "base", "model_dir": str(tiny_model_dir), "device": "cpu"}
    assert model_args_for(system, {"dtype": "auto"}, 0)["dtype"] == "bfloat16"
    assert model_args_for(system, {"dtype": "float32"}, 0)["dtype"] == "float32"


def test_planned_cpu_time_is_at_the_rate_of_the_dtype_the_work_runs_in():
    from gs.plan import devices
    from gs.plan.report import predict
    from gs.plan.resources import RuleResources
    from gs.plan.stages import Stage, Work
    from gs.plan.trace import Trace

    trace = Trace(10, {"Parameter": 5}, {"train": 4_000_000_000}, {}, weight_bytes=5, lora_dim=1)
    h100 = devices.gpu("H100-80GB")
    res = RuleResources(threads=2)
    rates = {"float32": 2e9, "bfloat16": 1e8}  # an AVX2 CPU: bfloat16 20x slower
    for dtype, seconds in (("float32", 3 * 4e9 / (2e9 * 2)), ("bfloat16", 3 * 4e9 / (1e8 * 2))):
        stage = Stage("s", "r", ["j"], ("gs.io",), [Work(trace, {"train": 3}, dtype)])
        row = predict(stage, 0, "cpu", h100, 0.4, 0.7, rates, res, host_bandwidth=1e9)
        assert row.cpu_seconds == pytest.approx(seconds)
