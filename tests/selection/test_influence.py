"""The LESS influence pass (gs.selection.influence) end to end on the tiny model, against an independent computation.

The expected influence is computed here with plain transformers + peft + torch autograd, one sample at a
time, LESS's Adam formula written out in numpy, float64 cosines, the mean over validation samples and
the learning-rate-weighted sum over checkpoints; projected runs use TRAK's BasicProjector directly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from trak.projectors import BasicProjector, ProjectionType

from gs.data.prompting import encode_example
from gs.io import InputError, write_jsonl
from gs.selection.influence import compute_influence, main
from gs.selection.select import adam_precondition

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MAX_LENGTH = 40
LRS = [3.0e-4, 1.0e-4]  # the two checkpoints' mean learning rates


def _record(i: str, domain: str, q: str, a: str) -> dict:
    return {"id": i, "domain": domain, "instruction": q, "input": "", "output": a}


# Pool ids deliberately not in sorted order: the output must follow the pool's order.
POOL = [
    _record("p5", "math", "Add 2 and 3.", "5"),
    _record("p1", "writing", "Write one line about rain.", "Rain taps softly on the roof."),
    _record("p9", "code", "Write a Python function that doubles x.", "def double(x):\n    return 2 * x"),
    _record("p0", "math", "What is 7 times 6?", "42"),
    _record("p3", "writing", "Describe the sea.", "The sea rolls grey and wide."),
]
TARGETS = {
    "math": [_record("m1", "math", "Subtract 4 from 10.", "6"), _record("m2", "math", "Half of 8?", "4")],
    "writing": [
        _record("w1", "writing", "A sentence about snow.", "Snow falls without a sound."),
        _record("w2", "writing", "Describe a forest.", "Tall pines stand in silence."),
        _record("w3", "writing", "One line about the sun.", "The sun warms the stones."),
    ],
}


@pytest.fixture(scope="module")
def warmup(tiny_model_dir, tmp_path_factory):
    """Two checkpoints of a LoRA on the tiny model (random A and B), each with Adam moments and a mean lr."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("warmup")
    torch.manual_seed(3)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    rng = np.random.default_rng(0)
    for epoch, lr in enumerate(LRS, start=1):
        with torch.no_grad():
            for _, p in model.named_parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn_like(p))  # a different adapter per checkpoint
        ckpt = out / f"checkpoint-{epoch}"
        model.save_pretrained(ckpt)
        d = sum(p.numel() for p in model.parameters() if p.requires_grad)
        moments = {
            "exp_avg": torch.from_numpy(1e-3 * rng.standard_normal(d)).float(),
            "exp_avg_sq": torch.from_numpy(1e-6 * rng.random(d) ** 2).float(),
        }
        torch.save(moments, ckpt / "adam_moments.pt")
        (ckpt / "checkpoint.json").write_text(json.dumps({"epoch": epoch, "mean_lr": lr}))
    return out


def _per_sample_gradients(model_dir, adapter_dir, tokenizer, records) -> np.ndarray:
    """(n, d) float64: each record's gradient of its mean response-token loss, plain autograd, one at a time."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter_dir, is_trainable=True)
    model.eval()
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    rows = []
    for r in records:
        enc = encode_example(tokenizer, r, MAX_LENGTH, "response")
        ids = torch.tensor([enc["input_ids"]])
        labels = torch.tensor(enc["labels"])
        logits = model(input_ids=ids).logits[0, :-1]
        loss = F.cross_entropy(logits, labels[1:], ignore_index=-100)  # mean over the response tokens
        grads = torch.autograd.grad(loss, params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]).double().numpy())
    return np.stack(rows)


def _less_adam(g: np.ndarray, m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """LESS obtain_gradients_with_adam: m' / sqrt(v' + eps), no bias correction."""
    m1 = 0.9 * m + 0.1 * g
    v1 = 0.999 * v + 0.001 * g**2
    return m1 / np.sqrt(v1 + 1e-8)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _expected(model_dir, warmup_dir, tokenizer, project=None) -> tuple[np.ndarray, np.ndarray]:
    """(C, T, n) per-checkpoint and (T, n) weighted influence, computed independently."""
    per = []
    for c in range(len(LRS)):
        ckpt = warmup_dir / f"checkpoint-{c + 1}"
        moments = torch.load(ckpt / "adam_moments.pt")
        m, v = moments["exp_avg"].double().numpy(), moments["exp_avg_sq"].double().numpy()
        x = _less_adam(_per_sample_gradients(model_dir, ckpt, tokenizer, POOL), m, v)
        if project is not None:
            x = project(x)
        rows = []
        for t in sorted(TARGETS):
            val = _per_sample_gradients(model_dir, ckpt, tokenizer, TARGETS[t])
            if project is not None:
                val = project(val)
            rows.append((_unit(x) @ _unit(val).T).mean(axis=1))  # LESS matching.py: mean over validation
        per.append(np.stack(rows))
    per = np.stack(per)
    w = np.array(LRS) / sum(LRS)
    return per, np.tensordot(w, per, axes=1)


def _params(projection_dim=None, kind="rademacher") -> dict:
    return {
        "batch_size": 2,
        "max_length": MAX_LENGTH,
        "influence": {"projection_dim": projection_dim, "projection_kind": kind},
    }


def test_full_dimension_influence_matches_an_independent_computation(tiny_model_dir, warmup, tokenizer):
    got = compute_influence(str(tiny_model_dir), str(warmup), POOL, TARGETS, _params(), seed=0)
    per, scores = _expected(tiny_model_dir, warmup, tokenizer)
    assert got["ids"].tolist() == [r["id"] for r in POOL]
    assert got["targets"].tolist() == ["math", "writing"]
    np.testing.assert_allclose(got["weights"], [0.75, 0.25])
    np.testing.assert_allclose(got["per_checkpoint"], per, atol=2e-5)
    np.testing.assert_allclose(got["scores"], scores, atol=2e-5)
    assert int(got["gradient_computations"]) == len(POOL) * len(LRS)
    assert str(got["projection_kind"]) == "none" and int(got["projection_dim"]) == int(got["gradient_dim"])
    # the two checkpoints really differ, so the weighting is exercised
    assert np.abs(per[0] - per[1]).max() > 1e-3


def test_projected_influence_matches_trak_basic_projector_called_directly(tiny_model_dir, warmup, tokenizer):
    p, seed = 64, 5
    got = compute_influence(str(tiny_model_dir), str(warmup), POOL, TARGETS, _params(p), seed=seed)
    d = int(got["gradient_dim"])
    trak = BasicProjector(d, p, seed, ProjectionType.rademacher, torch.device("cpu"), block_size=128)

    def project(x: np.ndarray) -> np.ndarray:
        return trak.project(torch.from_numpy(x).float(), model_id=0).double().numpy()

    per, scores = _expected(tiny_model_dir, warmup, tokenizer, project)
    assert int(got["projection_dim"]) == p and str(got["projection_kind"]) == "rademacher"
    np.testing.assert_allclose(got["per_checkpoint"], per, atol=2e-5)
    np.testing.assert_allclose(got["scores"], scores, atol=2e-5)


def test_cli_writes_the_npz_and_rejects_a_bad_projection_dim(tiny_model_dir, warmup, tmp_path):
    write_jsonl(tmp_path / "pool.jsonl", POOL)
    targets = []
    for t, recs in TARGETS.items():
        write_jsonl(tmp_path / f"{t}.jsonl", recs)
        targets.append(f"{t}={tmp_path / f'{t}.jsonl'}")
    args = ["--model-dir", str(tiny_model_dir), "--warmup", str(warmup), "--train", str(tmp_path / "pool.jsonl")]
    args += ["--targets", *targets, "--seed", "0", "--out", str(tmp_path / "influence.npz")]
    main([*args, "--params", json.dumps(_params(16, "sparse"))])
    with np.load(tmp_path / "influence.npz") as f:
        assert f["scores"].shape == (2, len(POOL)) and int(f["projection_dim"]) == 16
        assert np.all(np.abs(f["scores"]) <= 1 + 1e-6)
    with pytest.raises(InputError, match="projection_dim"):
        compute_influence(str(tiny_model_dir), str(warmup), POOL, TARGETS, _params(0), seed=0)
    with pytest.raises(InputError, match="no checkpoint"):
        compute_influence(str(tiny_model_dir), str(tmp_path), POOL, TARGETS, _params(), seed=0)


def test_adam_precondition_on_torch_equals_less_formula_in_numpy():
    rng = np.random.default_rng(2)
    g, m = rng.standard_normal((4, 50)) * 1e-3, rng.standard_normal(50) * 1e-3
    v = rng.random(50) * 1e-6
    expected = _less_adam(g, m, v)
    got = adam_precondition(torch.from_numpy(g).float(), torch.from_numpy(m).float(), torch.from_numpy(v).float())
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(adam_precondition(g.astype(np.float32), m, v), expected, rtol=1e-6)
    with pytest.raises(InputError, match="all as numpy or all as torch"):
        adam_precondition(torch.from_numpy(g), m, v)


# --------------------------------------------------------------------------- subtasks (LESS's subtask max)


def _with_subtask(r: dict, subtask) -> dict:
    return {**r, "meta": {"subtask": subtask}}


# "math" has two subtasks, unequal in size and not contiguous (LESS's reshape needs neither, the per-label
# mean does); "writing" has none, so it is one subtask and must score exactly as without subtasks.
SUB_TARGETS = {
    "math": [
        _with_subtask(TARGETS["math"][0], "sub-b"),
        _with_subtask(_record("m3", "math", "What is 9 plus 9?", "18"), "sub-a"),
        _with_subtask(TARGETS["math"][1], "sub-b"),
    ],
    "writing": TARGETS["writing"],
}


def test_subtask_max_streamed_equals_the_offline_less_function(tiny_model_dir, warmup, tokenizer):
    """compute_influence with subtasks = gs.selection.less.influence_scores(..., target_groups=...) on the same
    gradients (computed here with plain autograd, LESS's Adam formula in numpy), both checkpoints, LESS's
    weights; the checkpoint sum is taken per subtask BEFORE the max over subtasks (matching.py :75-79)."""
    from gs.selection.less import influence_scores

    got = compute_influence(str(tiny_model_dir), str(warmup), POOL, SUB_TARGETS, _params(), seed=0)
    train, val = [], {t: [] for t in SUB_TARGETS}
    for c in range(len(LRS)):
        ckpt = warmup / f"checkpoint-{c + 1}"
        moments = torch.load(ckpt / "adam_moments.pt")
        m, v = moments["exp_avg"].double().numpy(), moments["exp_avg_sq"].double().numpy()
        train.append(_less_adam(_per_sample_gradients(tiny_model_dir, ckpt, tokenizer, POOL), m, v))
        for t, recs in SUB_TARGETS.items():
            val[t].append(_per_sample_gradients(tiny_model_dir, ckpt, tokenizer, recs))
    groups = {"math": np.array([1, 0, 1]), "writing": None}  # sub-a = 0, sub-b = 1 (sorted labels)
    expected = np.stack(
        [influence_scores(train, val[t], checkpoint_weights=LRS, target_groups=groups[t]) for t in sorted(SUB_TARGETS)]
    )
    assert got["targets"].tolist() == ["math", "writing"]
    np.testing.assert_allclose(got["scores"], expected, atol=2e-5)
    # The per-subtask arrays: rows target by target, subtasks sorted; "" for the target without subtasks.
    assert got["subtask_target"].tolist() == [0, 0, 1] and got["subtask"].tolist() == ["sub-a", "sub-b", ""]
    assert got["subtask_per_checkpoint"].shape == (len(LRS), 3, len(POOL))
    w = np.array(LRS) / sum(LRS)
    np.testing.assert_allclose(got["subtask_scores"], np.einsum("c,csn->sn", w, got["subtask_per_checkpoint"]))
    np.testing.assert_array_equal(got["scores"][0], got["subtask_scores"][:2].max(axis=0))
    np.testing.assert_array_equal(got["per_checkpoint"][:, 0], got["subtask_per_checkpoint"][:, :2].max(axis=1))
    # One subtask, the sum over the two subtasks' own validation samples: each subtask row is that mean.
    for s, rows in ((0, [1]), (1, [0, 2])):
        one = influence_scores(train, [vc[rows] for vc in val["math"]], checkpoint_weights=LRS)
        np.testing.assert_allclose(got["subtask_scores"][s], one, atol=2e-5)
    # The order matters here: the max after the checkpoint sum is not the sum of per-checkpoint maxima.
    assert np.abs(got["scores"][0] - w @ got["per_checkpoint"][:, 0]).max() > 1e-4
    # The target without subtasks scores as the pass on it alone does (up to float32 rounding: the pool
    # block is multiplied by 3 direction rows here, 1 there, as with 2 targets against 1 before subtasks).
    alone = compute_influence(str(tiny_model_dir), str(warmup), POOL, {"writing": TARGETS["writing"]}, _params(), 0)
    np.testing.assert_allclose(got["scores"][1], alone["scores"][0], rtol=0, atol=1e-7)
    np.testing.assert_allclose(got["per_checkpoint"][:, 1], alone["per_checkpoint"][:, 0], rtol=0, atol=1e-7)
    assert alone["subtask"].tolist() == [""] and alone["subtask_target"].tolist() == [0]
    np.testing.assert_array_equal(alone["subtask_scores"], alone["scores"])


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([_with_subtask(TARGETS["math"][0], 3)], r"target 'math': record 'm1' has meta.subtask 3, not a string"),
        (
            [_with_subtask(TARGETS["math"][0], "a"), TARGETS["math"][1]],
            r"target 'math': record 'm2' has no meta.subtask but others of its validation set do",
        ),
        ([], r"target 'math': no validation samples"),
    ],
)
def test_subtask_errors_are_one_line(tiny_model_dir, warmup, records, message):
    with pytest.raises(InputError, match=message):
        compute_influence(str(tiny_model_dir), str(warmup), POOL, {"math": records}, _params(), seed=0)


@pytest.mark.parametrize("projection_dim", [None, 64])
def test_windows_give_the_influence_of_consecutive_batches(
    tiny_model_dir, warmup, tokenizer, monkeypatch, projection_dim
):
    """projection_rows 4 with batch 4 (windows of one batch, as before windows) against 16 (one window of the
    5 pool records, batched by token length): every array of the output agrees, ids in pool order, and the
    projector is called once a window (per checkpoint: each target's validation set, then the pool)."""
    from gs.gradients.per_sample import length_batches
    from gs.gradients.projection import Projector

    # max_length 64: at the module's 40 the pool is cut to near one length and windows would change nothing.
    lengths = [len(encode_example(tokenizer, r, 64, "response")["input_ids"]) for r in POOL]
    assert [b.tolist() for b in length_batches(lengths, 4, 16)] == [[0, 1, 3, 4], [2]]  # not [0..3], [4]

    calls = []
    project = Projector.project
    monkeypatch.setattr(Projector, "project", lambda self, g: calls.append(g.shape[0]) or project(self, g))
    got = {}
    for rows in (4, 16):
        params = {**_params(projection_dim), "batch_size": 4, "max_length": 64, "projection_rows": rows}
        calls.clear()
        got[rows] = compute_influence(str(tiny_model_dir), str(warmup), POOL, SUB_TARGETS, params, seed=0)
        if projection_dim is not None:
            # math: 3 validation records, writing: 3; the pool: 4 + 1 rows a buffer, or all 5 in one window.
            assert calls == ([3, 3, 4, 1] if rows == 4 else [3, 3, 5]) * len(LRS)
    a, b = got[4], got[16]
    assert sorted(a) == sorted(b)
    assert a["ids"].tolist() == b["ids"].tolist() == [r["id"] for r in POOL]
    for key in sorted(a):
        if a[key].dtype.kind == "f":
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
        else:
            assert np.array_equal(a[key], b[key]), key
