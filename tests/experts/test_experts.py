"""Experts: the cluster -> expert plan, one LoRA per expert on the tiny model, the manifest, loading."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from gs.cluster.assignments import read_assignments, validate_assignments
from gs.experts.folders import expert_dirs, load_manifest
from gs.experts.plan import expert_labels, plan_experts
from gs.experts.train import main, train_experts, train_multitask
from gs.io import InputError, run_cli

PARAMS = {
    "lora": {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    # A large learning rate so that two Adam steps move LoRA B visibly away from its zero init.
    "train": {
        "epochs": 1,
        "learning_rate": 0.05,
        "batch_size": 4,
        "max_length": 48,
        "warmup_ratio": 0.0,
        "loss_on": "response",
        "max_steps": 2,
    },
    "min_cluster_size": 2,
    "small_clusters": "merge",
}


def make_records() -> list[dict]:
    math = [
        {
            "id": f"m{i}",
            "domain": "math",
            "instruction": f"What is {i} plus {i + 3}?",
            "input": "",
            "output": str(2 * i + 3),
        }
        for i in range(6)
    ]
    poems = [
        {
            "id": f"p{i}",
            "domain": "creative",
            "instruction": f"Write a short poem about the number {i}.",
            "input": "",
            "output": f"{i} sits alone,\nquiet as stone.",
        }
        for i in range(5)
    ]
    odd = [{"id": "x0", "domain": "code", "instruction": "Name a Python keyword.", "input": "", "output": "def"}]
    return math + poems + odd


def make_assignments() -> pd.DataFrame:
    # Cluster 0: the six math samples; 1: the five poems; 2: one sample (below min_cluster_size=2).
    rows = [(f"m{i}", 0) for i in range(6)] + [(f"p{i}", 1) for i in range(5)] + [("x0", 2)]
    return pd.DataFrame(rows, columns=["id", "cluster"])


@pytest.fixture(scope="module")
def experts_dir(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("experts") / "clusters"
    train_experts(tiny_model_dir, make_records(), make_assignments(), PARAMS, out, seed=0, method="toy")
    return out


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer("Write a short poem about the sea.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


# -- plan ------------------------------------------------------------------------------------------


def test_plan_merges_small_cluster_into_largest():
    assert plan_experts(make_assignments(), min_cluster_size=2, small_clusters="merge") == {0: 0, 1: 1, 2: 0}
    # Expert ids are contiguous over the kept clusters even when a small cluster sits in between.
    frame = pd.DataFrame({"id": list("abcdef"), "cluster": [0, 0, 1, 3, 3, 3]})
    assert plan_experts(frame, min_cluster_size=2, small_clusters="merge") == {0: 0, 1: 1, 3: 1}


def test_plan_ties_and_all_small():
    # Two largest clusters of equal size: the lower cluster id takes the merged samples.
    frame = pd.DataFrame({"id": list("abcde"), "cluster": [4, 4, 2, 2, 7]})
    assert plan_experts(frame, min_cluster_size=2, small_clusters="merge") == {2: 0, 4: 1, 7: 0}
    # Every cluster small: the largest keeps an expert, so there is always at least one.
    assert plan_experts(frame, min_cluster_size=10, small_clusters="merge") == {2: 0, 4: 0, 7: 0}


def test_plan_small_cluster_error_names_cluster_and_size():
    with pytest.raises(InputError, match=r"cluster 2 has 1 sample"):
        plan_experts(make_assignments(), min_cluster_size=2, small_clusters="error")
    assert plan_experts(make_assignments(), min_cluster_size=1, small_clusters="error") == {0: 0, 1: 1, 2: 2}
    with pytest.raises(InputError, match="small_clusters"):
        plan_experts(make_assignments(), min_cluster_size=2, small_clusters="drop")


@pytest.mark.parametrize(
    "frame, message",
    [
        (pd.DataFrame({"id": [], "cluster": []}), "empty"),
        (pd.DataFrame({"id": ["a"]}), "missing column"),
        (pd.DataFrame({"id": ["a", "a"], "cluster": [0, 1]}), "'a' is assigned more than once"),
        (pd.DataFrame({"id": ["a", "b"], "cluster": [0, -1]}), "'b' has cluster"),
        (pd.DataFrame({"id": ["a", "b"], "cluster": [0, "x"]}), "'b' has cluster"),
    ],
)
def test_bad_assignments(frame, message):
    with pytest.raises(InputError, match=message):
        validate_assignments(frame)


def test_read_assignments_keeps_ids_as_strings(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("id,cluster\n007,1\n8,0\n")
    frame = read_assignments(path)
    assert frame["id"].tolist() == ["007", "8"] and frame["cluster"].tolist() == [1, 0]
    with pytest.raises(InputError, match="not found"):
        read_assignments(tmp_path / "missing.csv")


def test_id_mismatch_names_the_id(tiny_model_dir, tmp_path):
    records, frame = make_records(), make_assignments()
    mapping = {0: 0, 1: 1, 2: 0}
    with pytest.raises(InputError, match="'x0' is in the assignments but not in the records"):
        train_experts(tiny_model_dir, records[:-1], frame, PARAMS, tmp_path / "out", seed=0)
    with pytest.raises(InputError, match="'m0' is in the records but has no cluster assignment"):
        expert_labels(records, frame.iloc[1:], mapping)
    with pytest.raises(InputError, match="'m1' appears more than once"):
        expert_labels(records + [records[1]], frame, mapping)
    assert not (tmp_path / "out").exists()


# -- training and the manifest ----------------------------------------------------------------------


def test_manifest(experts_dir):
    manifest = load_manifest(experts_dir)
    assert manifest["method"] == "toy" and manifest["kind"] == "experts"
    assert manifest["cluster_to_expert"] == {0: 0, 1: 1, 2: 0}
    assert manifest["merged"] == [{"cluster": 2, "size": 1, "expert": 0, "into_cluster": 0}]
    assert manifest["cluster_sizes"] == {"0": 6, "1": 5, "2": 1}
    experts = {e["expert"]: e for e in manifest["experts"]}
    assert sorted(experts) == [0, 1]
    assert experts[0]["n_train"] == 7 and experts[0]["clusters"] == [0, 2]
    assert experts[0]["domains"] == {"code": 1, "math": 6}
    assert experts[1]["n_train"] == 5 and experts[1]["domains"] == {"creative": 5}
    for e in experts.values():
        assert e["training"]["steps"] == 2 and e["training"]["samples"] == e["n_train"]
    dirs = expert_dirs(experts_dir)
    assert dirs == {0: experts_dir / "expert_0", 1: experts_dir / "expert_1"}
    for d in dirs.values():
        assert (d / "adapter_model.safetensors").is_file() and (d / "training.json").is_file()
    # Nothing but the manifest and the adapters: no temporary left behind.
    assert sorted(p.name for p in experts_dir.iterdir()) == ["expert_0", "expert_1", "experts.json"]


def test_adapters_are_plain_peft_and_trained(experts_dir, tiny_model_dir, tokenizer):
    from peft import PeftModel

    from gs.models.load import load_model
    from gs.models.lora import load_adapter

    weights = [load_file(str(d / "adapter_model.safetensors")) for d in expert_dirs(experts_dir).values()]
    # Reusing one base model must not nest adapters: 2 layers x (q, v) x (A, B) tensors, no more.
    for w in weights:
        assert len(w) == 8 and all(".lora_" in k for k in w)
        assert all(w[k].abs().max() > 0 for k in w if "lora_B" in k)  # B moved off its zero init
    # Two experts trained on different data end up with different adapters.
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0] if "lora_B" in k)

    d = experts_dir / "expert_1"
    plain = PeftModel.from_pretrained(load_model(tiny_model_dir, device="cpu"), str(d))
    ours = load_adapter(load_model(tiny_model_dir, device="cpu"), d)
    base = load_model(tiny_model_dir, device="cpu")
    torch.testing.assert_close(_logits(plain, tokenizer), _logits(ours, tokenizer))
    assert (_logits(plain, tokenizer) - _logits(base, tokenizer)).abs().max() > 1e-4


def test_multitask_manifest_has_one_expert(tiny_model_dir, tmp_path):
    params = {**PARAMS, "train": {**PARAMS["train"], "max_steps": 1}}
    out = tmp_path / "multitask"
    manifest = train_multitask(tiny_model_dir, make_records(), params, out, seed=0)
    assert manifest["kind"] == "multitask" and manifest["n_experts"] == 1
    assert manifest["experts"][0]["n_train"] == 12 and manifest["experts"][0]["training"]["steps"] == 1
    assert load_manifest(out)["cluster_to_expert"] == {}
    assert expert_dirs(out) == {0: out / "adapter"}


def test_missing_dir_manifest_or_adapter(experts_dir, tmp_path):
    with pytest.raises(InputError, match="experts folder not found"):
        expert_dirs(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(experts_dir, broken)
    (broken / "expert_1" / "adapter_config.json").unlink()
    with pytest.raises(InputError, match=r"expert_1: expert 1 adapter missing"):
        expert_dirs(broken)
    (broken / "experts.json").unlink()
    with pytest.raises(InputError, match=r"experts\.json: experts manifest not found"):
        load_manifest(broken)


def test_cli(tiny_model_dir, tmp_path, capsys):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in make_records()))
    assignments = tmp_path / "assignments.csv"
    make_assignments().to_csv(assignments, index=False)
    params = {**PARAMS, "train": {**PARAMS["train"], "max_steps": 1}}
    out = tmp_path / "out"
    argv = [
        "--model-dir",
        str(tiny_model_dir),
        "--train",
        str(train),
        "--assignments",
        str(assignments),
        "--params",
        json.dumps(params),
        "--seed",
        "3",
        "--method",
        "gradient",
        "--out",
        str(out),
    ]
    main(argv)
    manifest = load_manifest(out)
    assert manifest["method"] == "gradient" and manifest["seed"] == 3 and manifest["n_experts"] == 2

    bad = {**params, "small_clusters": "error"}
    argv[argv.index("--params") + 1] = json.dumps(bad)
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    assert exc.value.code == 1
    assert "error: cluster 2 has 1 sample(s)" in capsys.readouterr().err


# -- precision and memory: gradient checkpointing, bf16 base with float32 LoRA ------------------------


def _batch(tokenizer):
    from gs.data.prompting import collate, encode_example

    return collate([encode_example(tokenizer, r, 48, "response") for r in make_records()[:4]], tokenizer.pad_token_id)


def _checkpointing(model) -> bool:
    return any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_model_dir, tokenizer):
    from gs.models.load import load_model
    from gs.models.lora import LoraSpec, attach_lora, gradient_checkpointing, trainable_parameters

    batch = _batch(tokenizer)
    # Dropout on: checkpointing must replay the same dropout masks in its recomputation.
    lora = LoraSpec(rank=4, alpha=8, dropout=0.2, target_modules=["q_proj", "v_proj"])
    runs = []
    for enabled in (False, True):
        model = load_model(tiny_model_dir, device="cpu")
        peft_model = attach_lora(model, lora, seed=0)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():  # LoRA B starts at zero, which would zero every A gradient
            for name, p in trainable_parameters(peft_model):
                if "lora_B" in name:
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        calls = []
        # A module inside the checkpointed layer's forward: it runs again when the backward recomputes it.
        model.model.layers[0].self_attn.register_forward_hook(lambda *a, calls=calls: calls.append(1))
        peft_model.train()
        torch.manual_seed(3)
        with gradient_checkpointing(peft_model, enabled):
            assert _checkpointing(model) == enabled
            loss = peft_model(**batch, use_cache=False).loss
            loss.backward()
        assert not _checkpointing(model), "switched off after the block"
        assert not getattr(model, "_require_grads_hooks", None), "input-grad hook removed after the block"
        runs.append((loss.detach(), {n: p.grad.clone() for n, p in trainable_parameters(peft_model)}, len(calls)))
    (loss_plain, grads_plain, calls_plain), (loss_ckpt, grads_ckpt, calls_ckpt) = runs
    assert (calls_plain, calls_ckpt) == (1, 2), "the checkpointed layer runs again in the backward pass"
    torch.testing.assert_close(loss_ckpt, loss_plain)
    assert grads_plain.keys() == grads_ckpt.keys() and len(grads_plain) == 8
    for name, g in grads_plain.items():
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(grads_ckpt[name], g, msg=name)


def test_training_with_checkpointing_matches_training_without(tiny_model_dir, tokenizer, tmp_path):
    from gs.models.load import load_model
    from gs.models.lora import LoraSpec, TrainSpec, train_lora

    lora = LoraSpec(rank=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj"])
    out = {}
    for enabled in (False, True):
        train = TrainSpec.from_config({**PARAMS["train"], "max_steps": 3, "gradient_checkpointing": enabled})
        assert train.gradient_checkpointing is enabled
        model = load_model(tiny_model_dir, device="cpu")
        summary = train_lora(model, tokenizer, make_records(), lora, train, tmp_path / str(enabled), seed=0)
        out[enabled] = (summary, load_file(tmp_path / str(enabled) / "adapter_model.safetensors"))
    assert out[True][0]["train"]["gradient_checkpointing"] is True
    for key in ("first_loss", "last_loss"):
        assert out[True][0][key] == pytest.approx(out[False][0][key], rel=1e-5)
    for name, w in out[False][1].items():
        torch.testing.assert_close(out[True][1][name], w, msg=name)


def test_bf16_base_keeps_bf16_weights_and_trains_float32_lora(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    from gs.models.load import load_model
    from gs.models.lora import LoraSpec, TrainSpec, attach_lora, train_lora, trainable_parameters

    lora = LoraSpec(rank=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = load_model(tiny_model_dir, dtype="bfloat16", device="cpu")
    peft_model = attach_lora(model, lora, seed=0)
    trainable = dict(trainable_parameters(peft_model))
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    frozen = {p.dtype for n, p in peft_model.named_parameters() if n not in trainable}
    assert frozen == {torch.bfloat16}
    peft_model.unload()

    optimizers = []
    adamw = torch.optim.AdamW

    class Recorded(adamw):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            optimizers.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", Recorded)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train = TrainSpec.from_config({**PARAMS["train"], "gradient_checkpointing": True})
    summary = train_lora(model, tokenizer, make_records(), lora, train, tmp_path / "a", seed=0)
    assert np.isfinite([summary["first_loss"], summary["last_loss"]]).all()
    states = [t for s in optimizers[0].state.values() for k, t in s.items() if k != "step"]
    assert len(states) == 2 * 8 and {t.dtype for t in states} == {torch.float32}
    saved = load_file(tmp_path / "a" / "adapter_model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}
    assert any(t.abs().sum() > 0 for n, t in saved.items() if "lora_B" in n), "the adapter was trained"
    # The base weights are frozen and stay bf16 (unloaded again, untouched).
    for name, p in model.named_parameters():
        assert p.dtype == torch.bfloat16
        assert torch.equal(p, before[name]), name


def test_gradient_accumulation_gives_the_full_batch_gradient(tiny_model_dir, tokenizer):
    """Four samples of unequal answer lengths, one pass each: the accumulated gradient and loss equal one
    plain peft forward and backward over the four padded together (the mean over all answer tokens)."""
    from gs.data.prompting import collate, encode_example
    from gs.models.load import load_model
    from gs.models.lora import LoraSpec, _accumulate_gradients, attach_lora, trainable_parameters

    records = [make_records()[i] for i in (0, 1, 6, 7)]  # two short answers, two poems
    encoded = [encode_example(tokenizer, r, 48, "response") for r in records]
    assert len({sum(x != -100 for x in e["labels"]) for e in encoded}) > 1
    model = attach_lora(load_model(tiny_model_dir, device="cpu"), LoraSpec.from_config(PARAMS["lora"]), seed=0)
    params = dict(trainable_parameters(model))
    with torch.no_grad():  # lora_B starts at zero: move it so that lora_A's gradient is not zero too
        for p in params.values():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    full = model(**collate(encoded, tokenizer.pad_token_id), use_cache=False).loss
    full.backward()
    expected = {n: p.grad.clone() for n, p in params.items()}
    model.zero_grad(set_to_none=True)
    loss = _accumulate_gradients(model, encoded, 1, tokenizer)
    assert loss == pytest.approx(full.item(), rel=1e-5)
    for name, g in expected.items():
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(params[name].grad, g, rtol=1e-4, atol=1e-6, msg=name)


def test_accumulation_counts_optimiser_steps_of_the_whole_batch(tiny_model_dir, tokenizer, tmp_path):
    """12 samples, 2 a pass x 3 passes a step, one epoch: ceil(12 / 6) = 2 optimiser steps."""
    from gs.models.load import load_model
    from gs.models.lora import LoraSpec, TrainSpec, train_lora

    train = TrainSpec.from_config(
        {**PARAMS["train"], "batch_size": 2, "gradient_accumulation_steps": 3, "max_steps": None}
    )
    model = load_model(tiny_model_dir, device="cpu")
    summary = train_lora(
        model, tokenizer, make_records(), LoraSpec.from_config(PARAMS["lora"]), train, tmp_path / "a", seed=0
    )
    assert len(make_records()) == 12 and summary["steps"] == 2
