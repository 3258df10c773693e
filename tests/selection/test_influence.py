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
