"""The evaluation's work per target task (gs.plan.tasks, Planner._evaluation) against hand counts on a
tiny config, the note for an lm-eval task of unknown size, and the ClusterUCB reference plan's
GPU-hours line."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Three suite tasks of a throwaway task folder: one of each kind a prepared split is scored as.
TASK_YAMLS = {
    "t_gen": "task: t_gen\ndataset_path: json\noutput_type: generate_until\ngeneration_kwargs: {max_gen_toks: 9}\n",
    "t_choice": "task: t_choice\ndataset_path: json\noutput_type: multiple_choice\n",
    "t_lik": "task: t_lik\ndataset_path: json\noutput_type: loglikelihood\n",
}


@pytest.fixture
def task_dir(tmp_path, monkeypatch):
    """gs.evaluation.tasks reading the three tasks above as the suite's."""
    import gs.evaluation.tasks as tasks

    for name, text in TASK_YAMLS.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    monkeypatch.setattr(tasks, "TASKS_DIR", tmp_path)
    return tmp_path


def _tiny(plan_inputs, tasks, limit=None):
    """The test config with one part p (test 5, reference 7, a derived 3-choice split of reference) and one
    target t scored on ``tasks``; batch 2 for generation and likelihood, answers capped at 8 tokens."""
    config, hf = plan_inputs
    config["data"]["parts"] = {
        "p": {
            "train": {"source": "gsm_symbolic", "n": 10},
            "validation": {"source": "gsm_symbolic", "n": 3},
            "test": {"source": "gsm_symbolic", "n": 5},
            "reference": {"source": "gsm_symbolic", "n": 7},
            "choice": {"from": "reference", "choices": 3},
        }
    }
    config["targets"] = {"t": {"validation": {"part": "p", "split": "validation"}, "tasks": tasks}}
    config["selection"].update(targets=["t"], finetune_targets=["t"])
    config["plan"]["prompt_tokens"] = 16
    config["evaluation"].update(limit=limit, batch_size=2, targets=None)
    config["evaluation"]["likelihood"] = {"batch_size": 2, "max_answer_tokens": 8, "chunk_tokens": 4}
    return config, hf


def test_evaluation_work_per_task_by_hand(plan_inputs, task_dir):
    """One generation task (5 prompts, its own max_gen_toks 6 over the YAML's 9), one 3-choice task (7
    questions of the reference split, 21 requests) and one likelihood task (7 answers): decode steps
    ceil(5/2) x 6, prefill ceil(5/2) x 16 tokens of a traced 16 + 6 - 1, likelihood batches
    ceil(21/2) + ceil(7/2) (prompt 16 + answer 8 each, as traced)."""
    from gs.plan.stages import Planner

    tasks = [
        {"task": "t_gen", "data": {"part": "p", "split": "test"}, "max_gen_toks": 6},
        {"task": "t_choice", "data": {"part": "p", "split": "choice"}},
        {"task": "t_lik", "data": {"part": "p", "split": "reference"}},
    ]
    config, hf = _tiny(plan_inputs, tasks)
    planner = Planner(config, hf, draw_rate=2e7)
    stages = {s.stage: s for s in planner._evaluation(2)}
    base = stages["evaluation (base)"]
    dec, lik = base.work
    assert dec.repeats == {"decode": 3 * 6, "prefill": pytest.approx(3 * 16 / 21)}
    assert lik.repeats == {"likelihood": pytest.approx(11 + 4)}
    # The selection systems: their own target's tasks, the same counts.
    assert [w.repeats for w in stages["evaluation (select-t)"].work] == [dec.repeats, lik.repeats]
    # Without the spec's max_gen_toks the YAML's 9; evaluation.limit caps every task (lm-eval's limit).
    tasks[0].pop("max_gen_toks")
    config, hf = _tiny(plan_inputs, tasks, limit=4)
    dec, lik = next(s for s in Planner(config, hf)._evaluation(2) if s.stage == "evaluation (base)").work
    assert dec.repeats == {"decode": 2 * 9, "prefill": pytest.approx(2 * 16 / 24)}
    assert lik.repeats == {"likelihood": pytest.approx(math.ceil(4 * 3 / 2) + 2)}


def test_lm_eval_task_sizes_and_unknown_task_note(plan_inputs, task_dir):
    """mmlu from the stated table (14,042 x 4 one-token continuations, 5 shots); an lm-eval task not in it
    is planned at 1000 examples of plan.prompt_tokens and the stage says so."""
    from gs.evaluation.tasks import task_specs
    from gs.plan.stages import Planner
    from gs.plan.tasks import STATED_TASKS, task_work

    config, hf = _tiny(plan_inputs, [{"task": "mmlu", "num_fewshot": 0}, "gsm8k_cot", "no_such_task"])
    mmlu, gsm, unknown = (task_work(config, s, 16) for s in task_specs(config["targets"]))
    assert (mmlu.kind, mmlu.n, mmlu.requests, mmlu.answer_tokens) == ("multiple_choice", 14042, 4 * 14042, 1)
    assert mmlu.prompt_tokens == STATED_TASKS["mmlu"].question_tokens  # 0 shots asked: the question alone
    assert (gsm.kind, gsm.n, gsm.max_gen_toks) == ("generate_until", 1319, 256)  # lm-eval's default limit
    assert (unknown.n, unknown.prompt_tokens, unknown.note) == (
        1000,
        16,
        "no_such_task: size unknown: assumed 1000 examples of 16 prompt tokens (generate_until)",
    )
    config["evaluation"]["limit"] = 10
    stages = Planner(config, hf)._evaluation(2)
    assert all("no_such_task: size unknown: assumed 1000" in s.note for s in stages)
    base = next(s for s in stages if s.stage == "evaluation (base)")
    # limit 10 per task: gsm8k_cot 10 and the unknown task 10 prompts, mmlu 40 requests.
    assert base.work[0].repeats["decode"] == 5 * 256 + 5 * 256


@pytest.mark.slow  # traces Llama-2-7B's steps (~1 min) and reads the workflow's resources
def test_clusterucb_plan_fits_and_reports_its_gpu_hours():
    """config/clusterucb_paper.yaml plans on an H100-80GB under profiles/slurm: ClusterUCB's stages only
    (studies: [clusterucb]), every one fits, and the Markdown closes with ``gpu_hours total=<X>``, X = sum of
    jobs x gpu_time_h over the rows that hold a GPU, then ``gpu_hours planned=<X> floor=<Y> ratio=<X/Y>``."""
    from gs.plan import cli, devices
    from gs.plan.report import table

    config = cli.load_config(ROOT / "config" / "clusterucb_paper.yaml", ROOT / "config" / "config.yaml")
    assert "math" not in config["data"]["parts"] and set(config["targets"]) == {
        "mmlu",
        "bbh",
        "tydiqa",
        "gsm",
        "humaneval",
    }
    rows, notes = cli.plan(
        config,
        configfile=ROOT / "config" / "clusterucb_paper.yaml",
        baseline_bytes=400 * 2**20,
        cpu_flops=1e11,
        host_bandwidth=2e10,
        draw_rate=1e8,
    )
    assert [r.stage for r in rows if r.problems] == []
    assert {r.rule for r in rows} == {
        "prepare_model",
        "warmup_lora",
        "less_influence_shard",
        "merge_influence_shards",
        "clusterucb_clusters",
        "select_data",
        "prepare_part",
        "prepare_target",
        "pool_data",
        "tables_and_figures",
        "finetune_selected",
        "evaluate_system",
        "plan",
    }
    records = table(rows)
    md = cli._markdown(records, devices.gpu("H100-80GB"), "gpu", notes)
    *_, total_line, last = md.strip().splitlines()
    total = float(re.fullmatch(r"gpu_hours total=([0-9.]+)", total_line).group(1))
    on_gpu = [r for r in records if r["gpu"] > 0 or r["device_peak_gib"] > 0]
    assert total == pytest.approx(sum(len(r["jobs"].split()) * r["gpu_time_h"] for r in on_gpu), abs=0.01)
    # The last line: planned against the floor; the influence shards' shared validation floor counted once.
    planned, floor, ratio = map(float, re.fullmatch(r"gpu_hours planned=(\S+) floor=(\S+) ratio=(\S+)", last).groups())
    jobs = {id(r): len(r["jobs"].split()) for r in on_gpu}
    expected_floor = sum(
        jobs[id(r)] * (r["floor_gpu_h"] - r["floor_shared_gpu_h"]) + r["floor_shared_gpu_h"] for r in on_gpu
    )
    assert planned == pytest.approx(total, abs=0.01) and floor == pytest.approx(expected_floor, abs=0.02)
    assert ratio == pytest.approx(planned / floor, abs=0.01) and floor > 0
    # every stage that runs the model has a floor below its planned time
    assert all(0 < r["floor_gpu_h"] <= r["gpu_time_h"] + 1e-3 for r in on_gpu if r["device_peak_gib"] > 0)
    evaluation = [r.stage for r in rows if r.rule == "evaluate_system"]
    # the base model, and per target its three selections' LoRAs (no experts: no routed system)
    assert sorted(evaluation) == sorted(["evaluation (base)"] + [f"evaluation (select-{t})" for t in config["targets"]])
    influence = next(r for r in rows if r.rule == "less_influence_shard")
    assert len(influence.jobs.split()) == config["gradients"]["shards"] == 8
