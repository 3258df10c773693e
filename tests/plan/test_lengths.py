"""The plan's token lengths and floor (gs.plan.lengths): the length fit against direct traces, the pool's
estimated layout against gs.data.prepare's shuffle, padded batches by hand, and a stage's floor and
planned time against sums written out here."""

from __future__ import annotations

import random

import numpy as np
import pytest

from gs.plan.lengths import LengthFit, estimated_lengths, fit_lengths, shuffled_batches, window_batches
from gs.plan.trace import gradient_step, trace_step, train_step

LORA = {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def _config():
    from rehearsal_assets import tiny_llama_config

    return tiny_llama_config(512, hidden_size=64, intermediate_size=128, max_position_embeddings=256)


@pytest.mark.parametrize("step", [gradient_step, train_step])
def test_length_fit_matches_a_direct_trace_at_other_lengths(step):
    """Three traces fix the quadratic; a trace at lengths the fit never saw gives the same FLOPs."""
    hf = _config()
    traces = {t: trace_step(hf, "float32", LORA, step(2, t)) for t in fit_lengths(64)}
    assert sorted(traces) == [16, 32, 64]
    fit = LengthFit.from_traces(traces)
    phase = next(iter(traces[64].flops))
    for t in (7, 23, 50, 96):
        direct = trace_step(hf, "float32", LORA, step(2, t)).flops[phase]
        assert float(fit.flops_at(phase, np.array([t]))[0]) == pytest.approx(direct, rel=1e-9)


def test_window_batches_pad_each_batch_to_its_longest_after_sorting():
    lengths = np.array([5, 1, 9, 2, 7, 3, 8, 4])
    # windows of 4: [5, 1, 9, 2] sorted -> (1, 2), (5, 9); [7, 3, 8, 4] -> (3, 4), (7, 8).
    assert window_batches(lengths, 2, 4).tolist() == [2, 9, 4, 8]
    # window = batch: today's consecutive batches (5, 1), (9, 2), (7, 3), (8, 4).
    assert window_batches(lengths, 2, 2).tolist() == [5, 9, 7, 8]


def test_shuffled_batches_follow_train_lora_order():
    import torch

    lengths = np.arange(10) * 3 + 1
    order = torch.randperm(10, generator=torch.Generator().manual_seed(7)).tolist()
    expected = [max(lengths[order[s : s + 4]]) for s in (0, 4, 8)]
    assert shuffled_batches(lengths, 4, 7).tolist() == expected


def test_estimated_lengths_are_laid_out_as_the_pool_is_shuffled():
    config = {
        "seed": 3,
        "data": {"parts": {"a": {"train": {"n": 3}}, "b": {"train": {"n": 2}}}},
        "plan": {"token_estimates": {"a": 10, "b": 500}},
    }
    rows = [10, 10, 10, 400, 400]  # b's 500 cut at max_length 400
    random.Random(3).shuffle(rows)  # gs.data.prepare.pool_splits: parts in order, then one shuffle
    assert estimated_lengths(config, 400).tolist() == rows
    config["plan"]["token_estimates"].pop("b")
    assert estimated_lengths(config, 400) is None


def test_gradient_stage_floor_and_planned_time_from_the_lengths():
    """A pass's planned FLOPs are its padded batches' and its floor each sample's own, per pass."""
    from gs.plan.lengths import PoolLengths
    from gs.plan.stages import Planner

    hf = _config()
    lengths = np.array([10, 60, 12, 58, 30, 31, 64, 5])
    config = {
        "seed": 0,
        "data": {"parts": {"a": {"train": {"n": 8}}}},
        "gradients": {"batch_size": 2, "max_length": 64, "projection_rows": 4},
        "plan": {},
    }
    planner = Planner(config, hf, lengths=PoolLengths(lengths, "test"))
    work = planner._gradients(LORA, 2, 64, "float32", 0, [lengths], passes=2)
    # windows of 4: [10, 60, 12, 58] -> (10, 12), (58, 60); [30, 31, 64, 5] -> (5, 30), (31, 64).
    assert work.batch_lengths.tolist() == [12, 60, 30, 64] * 2
    per_batch = {t: trace_step(hf, "float32", LORA, gradient_step(2, t)).flops["gradient"] for t in (12, 60, 30, 64)}
    per_sample = {t: trace_step(hf, "float32", LORA, gradient_step(2, t)).flops["gradient"] / 2 for t in lengths}
    fit = work.fit
    planned = float(sum(fit.flops_at("gradient", np.array([t]))[0] for t in work.batch_lengths))
    assert planned == pytest.approx(2 * sum(per_batch.values()), rel=1e-6)
    assert work.floor_flops == pytest.approx(2 * sum(per_sample[t] for t in lengths), rel=1e-6)
    assert planned > work.floor_flops  # padding: every batch at its longer sample


def test_grouped_training_batches_follow_transformers_length_grouping():
    """With group_by_length the plan's micro-batches are transformers' get_length_grouped_indices order
    (its batch the optimiser step), each step cut into micro-batches, and they pad less than a plain shuffle."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    rng = np.random.default_rng(0)
    lengths = rng.choice([20, 400, 900], size=64)
    order = get_length_grouped_indices(lengths.tolist(), 8, generator=torch.Generator().manual_seed(5))
    ordered = lengths[order]
    # steps of 8 samples, micro-batches of 4
    expected = [int(ordered[s : s + 4].max()) for s in range(0, 64, 4)]
    grouped = shuffled_batches(lengths, 4, 5, step_samples=8, by_length=True)
    assert grouped.tolist() == expected
    plain = shuffled_batches(lengths, 4, 5, step_samples=8)
    assert grouped.sum() < plain.sum()


def test_dag_line_counts_jobs_and_shared_floor_once():
    """gpu_hours planned/floor: jobs x hours a row that holds a GPU; a floor every job repeats counts once."""
    from gs.plan.cli import floor_hours, gpu_hours_line

    records = [
        {
            "jobs": "shard0 shard1 shard2",
            "gpu_time_h": 2.0,
            "floor_gpu_h": 1.0,
            "floor_shared_gpu_h": 0.25,
            "device_peak_gib": 40.0,
            "gpu": 1,
        },
        {
            "jobs": "a b",
            "gpu_time_h": 1.0,
            "floor_gpu_h": 0.5,
            "floor_shared_gpu_h": 0.0,
            "device_peak_gib": 20.0,
            "gpu": 1,
        },
        {
            "jobs": "report",
            "gpu_time_h": 0.0,
            "floor_gpu_h": 0.0,
            "floor_shared_gpu_h": 0.0,
            "device_peak_gib": 0.0,
            "gpu": 0,
        },
    ]
    # planned: 3 x 2 + 2 x 1 = 8; floor: 3 x (1 - 0.25) + 0.25 + 2 x 0.5 = 3.5
    assert floor_hours(records) == pytest.approx(3.5)
    assert gpu_hours_line(records) == "gpu_hours planned=8.00 floor=3.50 ratio=2.29"
