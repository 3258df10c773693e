"""The CPU rehearsal of the paper path: config/rehearsal.yaml through the whole DAG, with the gradient
extraction killed mid-run (SIGKILL after 3 batches, a checkpoint every 2) and resumed by a rerun.

What it rehearses (config/rehearsal.yaml's header): hub datasets through ``datasets`` (repeated prompts,
WritingPrompts markers), a bfloat16 model, gradient checkpointing, the torch online SVD with resumable
state, TRAK's Rademacher projector, projected LESS influence, ClusterUCB's clustering at a step checkpoint
with on-demand draws, chunked likelihood with an answer cap, every clustering method and inference mode.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from workflow_tools import ROOT, fresh_copy, offline_env, run_snakemake

sys.path.insert(0, str(ROOT / "tests"))

from rehearsal_assets import write_assets  # noqa: E402

ENV = offline_env()


def _snakemake(work: Path, *args: str, env: dict[str, str] | None = None, timeout: int = 2400):
    return run_snakemake(
        "--cores", "2", "--configfile", "config/rehearsal.yaml", *args, cwd=work, env=env, timeout=timeout
    )


@pytest.mark.slow
def test_rehearsal_runs_the_paper_path_and_resumes_a_killed_extraction(tmp_path):
    work = fresh_copy(tmp_path / "wf")
    write_assets(work / "resources" / "rehearsal")

    # 1. Up to the extraction, killed at the first window end after 3 batches: batch 8 (windows of 8 one-sample
    # batches), its state checkpointed at that window's end (the first after checkpoint_every = 2 batches).
    killed = _snakemake(work, "--until", "extract_gradient_features", env={**ENV, "GS_TEST_DIE_AFTER_BATCHES": "3"})
    assert killed.returncode != 0, "the extraction was meant to be killed"
    res = work / "results"
    state = res / "gradients" / ".extract_state" / "state.pt"
    assert state.is_file(), (killed.stdout + killed.stderr)[-3000:]
    assert not (res / "gradients" / "features.npz").exists()

    # 2. The whole DAG: the extraction resumes from its state, every other stage runs.
    full = _snakemake(work)
    assert full.returncode == 0, (full.stdout + full.stderr)[-6000:]
    log = (work / "logs" / "extract_gradient_features" / "extract.log").read_text()
    assert "resuming the extraction" in log and "after 8 batches" in log, log[-2000:]
    assert not state.exists() and not state.parent.exists()

    # The resumed features equal an uninterrupted extraction of the same inputs.
    params = {
        k: v
        for k, v in __import__("yaml").safe_load((work / "config/rehearsal.yaml").read_text())["gradients"].items()
        if k != "shards"
    }
    fresh = tmp_path / "fresh"
    once = subprocess.run(
        [
            sys.executable,
            "-m",
            "gs.gradients.extraction",
            "--model-dir",
            "resources/models/rehearsal-tiny-llama",
            "--warmup",
            "results/gradients/warmup",
            "--train",
            "results/data/pool/train.jsonl",
            "--params",
            json.dumps(params),
            "--seed",
            "1234",
            "--out-dir",
            str(fresh),
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=900,
        env={**ENV, "OMP_NUM_THREADS": "1"},  # as Snakemake gives the one-thread job (bf16 sums)
    )
    assert once.returncode == 0, once.stderr[-3000:]
    with np.load(res / "gradients" / "features.npz") as a, np.load(fresh / "features.npz") as b:
        np.testing.assert_array_equal(a["ids"], b["ids"])
        for key in ("norms", "svd_coords", "singular_values", "elrea_features", "projected_64", "projected_256"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5, err_msg=key)

    # The paper path's pieces really ran: the model in the dtype the plan measured as faster here (dtype: auto;
    # bfloat16 where the CPU has it natively, as config/paper.yaml on a GPU), hub data cleaned, projected
    # influence, chunked likelihood.
    settings = json.loads((work / "resources/models/rehearsal-tiny-llama/gs_model.json").read_text())
    assert settings["dtype"] == "auto"
    chosen = json.loads((res / "plan" / "cpu_dtype.json").read_text())
    assert chosen["dtype"] in ("float32", "bfloat16") and chosen["line"].startswith(f"cpu dtype: {chosen['dtype']} (")
    base_eval = json.loads((res / "eval" / "base.json").read_text())
    assert base_eval["lm_eval"]["model_args"]["dtype"] == chosen["dtype"]
    writing = [json.loads(line) for line in (res / "data/writing/train.jsonl").read_text().splitlines()]
    assert writing and not any("<newline>" in r["output"] or "[ WP ]" in r["instruction"] for r in writing)
    assert len({r["instruction"] for r in writing}) == len(writing)  # repeated prompts dropped before taking n
    with np.load(res / "selection" / "influence.npz") as f:
        assert int(f["projection_dim"]) == 256 and str(f["projection_kind"]) == "rademacher"
    summary = json.loads((res / "gradients" / "extract.json").read_text())
    assert summary["n"] == 64
    main = pd.read_csv(res / "tables" / "main.csv")
    assert {
        "gradientspace-single",
        "gradientspace-elrea",
        "gradientspace-uniform",
        "gradientspace-oracle",
        "elrea-single",
        "semantic-single",
        "random-single",
        "oracle-single",
    } <= set(main["system"])
    likelihood = pd.read_csv(res / "tables" / "likelihood.csv")
    bpb = likelihood[[f"gs_{part}_likelihood" for part in ("math", "code", "finance", "writing")]].to_numpy(dtype=float)
    assert np.isfinite(bpb).all() and (bpb > 0).all()
    base = json.loads((res / "eval" / "base.json").read_text())
    assert "chunk" in json.dumps(base) or "likelihood" in json.dumps(base)
    for name in ("clusterucb.md", "clusterucb_budget.md", "ablation.md", "latency.md"):
        assert (res / "tables" / name).read_text().startswith("# "), name
