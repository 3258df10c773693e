"""Per-sample LoRA gradients: batched hooks against the per-sample loop and plain autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gs.data.prompting import IGNORE_INDEX, collate, encode_example
from gs.gradients.per_sample import (
    iter_gradients,
    length_batches,
    lora_parameters,
    per_sample_lora_gradients,
    per_sample_lora_gradients_loop,
)
from gs.io import InputError
from gs.models.lora import LoraSpec, attach_lora, load_adapter

RECORDS = [
    {"id": "a", "domain": "qa", "instruction": "Name a colour.", "input": "", "output": "Blue."},
    {
        "id": "b",
        "domain": "math",
        "instruction": "Add the numbers.",
        "input": "17 and 25",
        "output": "17 plus 25 is 42, because 17 + 20 = 37 and 37 + 5 = 42.",
    },
    {
        "id": "c",
        "domain": "qa",
        "instruction": "Say hi",
        "input": "",
        "output": "Hi there, nice to meet you!",
    },
    {
        "id": "d",
        "domain": "code",
        "instruction": "Write a Python function that returns the square of its argument, with a docstring.",
        "input": "",
        "output": 'def square(x):\n    """Return x squared."""\n    return x * x',
    },
    {"id": "e", "domain": "qa", "instruction": "Opposite of up?", "input": "", "output": "Down"},
]
MAX_LENGTH = 96


def rel_err(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row ||a - b|| / ||b||."""
    return (a - b).norm(dim=1) / b.norm(dim=1)


def make_lora(model):
    """LoRA r=4 on q_proj/v_proj with non-zero B (peft's zero B would make every A gradient zero)."""
    model = attach_lora(model, LoraSpec(rank=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj"]), seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in lora_parameters(model):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


@pytest.fixture()
def lora_model(tiny_model):
    return make_lora(tiny_model)


def make_batch(tokenizer, records=RECORDS, loss_on="response"):
    examples = [encode_example(tokenizer, r, MAX_LENGTH, loss_on) for r in records]
    return collate(examples, tokenizer.pad_token_id)


@pytest.mark.parametrize("loss_on", ["response", "instruction"])
def test_batched_matches_loop(lora_model, tokenizer, loss_on):
    batch = make_batch(tokenizer, loss_on=loss_on)
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1  # padding is exercised
    grads = per_sample_lora_gradients(lora_model, batch)
    ref = per_sample_lora_gradients_loop(lora_model, batch)
    assert grads.dtype == torch.float32 and grads.shape == ref.shape
    assert (ref.norm(dim=1) > 0).all()
    assert rel_err(grads, ref).max() < 1e-5
    # Every parameter block is non-trivial (A gradients included, thanks to the non-zero B).
    start = 0
    for name, p in lora_parameters(lora_model):
        assert grads[:, start : start + p.numel()].abs().sum() > 0, name
        start += p.numel()


def test_dimension_and_order(lora_model, tokenizer):
    params = lora_parameters(lora_model)
    expected = [(n, p) for n, p in lora_model.named_parameters() if "lora_" in n and p.requires_grad]
    assert [n for n, _ in params] == [n for n, _ in expected]
    assert len(params) == 2 * 2 * 2  # 2 layers x {q_proj, v_proj} x {A, B}
    assert all(("lora_A" in n) == (i % 2 == 0) for i, (n, _) in enumerate(params))
    d = sum(p.numel() for _, p in params)
    # q_proj: A (4, 32) + B (32, 4); v_proj (2 kv heads of 8): A (4, 32) + B (16, 4); two layers.
    assert d == 2 * (128 + 128 + 128 + 64)
    grads = per_sample_lora_gradients(lora_model, make_batch(tokenizer, RECORDS[:2]))
    assert grads.shape == (2, d)


def test_sum_equals_autograd_of_summed_loss(lora_model, tokenizer):
    batch = make_batch(tokenizer)
    lora_model.train()
    grads = per_sample_lora_gradients(lora_model, batch)
    # Modes restored, and no parameter's .grad was written.
    assert lora_model.training and all(m.training for m in lora_model.modules())
    params = lora_parameters(lora_model)
    assert all(p.grad is None for _, p in params)

    # Independent loss: transformers' own per-sequence mean loss, one unpadded sample at a time.
    lora_model.eval()
    total = 0.0
    for i in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][i].sum())
        out = lora_model(input_ids=batch["input_ids"][i : i + 1, :n], labels=batch["labels"][i : i + 1, :n])
        total = total + out.loss
    summed = torch.autograd.grad(total, [p for _, p in params])
    start = 0
    for (name, p), g in zip(params, summed, strict=True):
        block = grads[:, start : start + p.numel()].sum(0).view_as(p)
        assert torch.allclose(block, g, rtol=1e-4, atol=1e-6), name
        start += p.numel()
    assert start == grads.shape[1]


def test_no_labelled_tokens_is_an_error(lora_model, tokenizer):
    batch = make_batch(tokenizer, RECORDS[:3])
    batch["labels"][1] = IGNORE_INDEX
    with pytest.raises(InputError, match=r"position\(s\) \[1\]"):
        per_sample_lora_gradients(lora_model, batch)
    with pytest.raises(InputError, match="no labelled tokens"):
        per_sample_lora_gradients_loop(lora_model, batch)
    empty = dict(RECORDS[0], id="empty", output="  ")
    with pytest.raises(InputError, match="empty"):
        list(iter_gradients(lora_model, tokenizer, [empty], batch_size=2, max_length=MAX_LENGTH, progress=False))


def test_nan_weight_is_an_error(lora_model, tokenizer):
    batch = make_batch(tokenizer, RECORDS[:2])
    with torch.no_grad():
        lora_parameters(lora_model)[1][1].view(-1)[0] = float("nan")
    with pytest.raises(InputError, match=r"non-finite.*\[0, 1\]"):
        per_sample_lora_gradients(lora_model, batch)


def _nan_in_sample_1(module, inputs, output):
    """Forward hook on the embeddings: a NaN in batch position 1 only."""
    output = output.clone()
    output[1, 0, 0] = float("nan")
    return output


def test_nan_in_one_sample(lora_model, tokenizer):
    """A NaN confined to one sample is reported at its position; 'zero' zeroes only that row."""
    batch = make_batch(tokenizer, RECORDS[:3])
    clean = per_sample_lora_gradients(lora_model, batch)

    handle = lora_model.get_input_embeddings().register_forward_hook(_nan_in_sample_1)
    try:
        with pytest.raises(InputError, match=r"position\(s\) \[1\]"):
            per_sample_lora_gradients(lora_model, batch)
        grads, bad = per_sample_lora_gradients(lora_model, batch, nonfinite="zero")
    finally:
        handle.remove()
    assert bad.tolist() == [False, True, False]
    assert (grads[1] == 0).all()
    assert rel_err(grads[[0, 2]], clean[[0, 2]]).max() < 1e-6
    # Through iter_gradients the message names the record id.
    handle = lora_model.get_input_embeddings().register_forward_hook(_nan_in_sample_1)
    try:
        with pytest.raises(InputError, match="'b'"):
            list(
                iter_gradients(lora_model, tokenizer, RECORDS[:3], batch_size=3, max_length=MAX_LENGTH, progress=False)
            )
    finally:
        handle.remove()


def test_iter_gradients_order_and_progress(lora_model, tokenizer, capsys):
    out = list(iter_gradients(lora_model, tokenizer, RECORDS, batch_size=2, max_length=MAX_LENGTH, progress=False))
    assert [len(ids) for ids, _ in out] == [2, 2, 1]
    assert [i for ids, _ in out for i in ids] == [r["id"] for r in RECORDS]
    assert all(g.device.type == "cpu" and g.dtype == torch.float32 for _, g in out)
    assert "per-sample gradients" not in capsys.readouterr().err
    stacked = torch.cat([g for _, g in out])
    whole = per_sample_lora_gradients(lora_model, make_batch(tokenizer))
    assert rel_err(stacked, whole).max() < 1e-5  # batching does not change a sample's gradient

    list(iter_gradients(lora_model, tokenizer, RECORDS[:1], batch_size=2, max_length=MAX_LENGTH))
    assert "per-sample gradients" in capsys.readouterr().err
    with pytest.raises(InputError, match="batch_size"):
        next(iter_gradients(lora_model, tokenizer, RECORDS, batch_size=0, max_length=MAX_LENGTH))


def test_length_batches_by_hand():
    lengths = [5, 3, 3, 9, 1, 2, 7, 4, 8, 6]
    # Windows [0..3], [4..7], [8, 9]; inside each a stable sort by length (the two 3s keep their order),
    # cut into batches of 2, each batch's positions listed in ascending order.
    # Window 0: lengths 5 3 3 9 -> order 1 2 0 3 -> [1, 2], [0, 3]
    # Window 1: lengths 1 2 7 4 -> order 4 5 7 6 -> [4, 5], [6, 7]
    # Window 2: lengths 8 6     -> order 9 8     -> [8, 9]
    got = length_batches(lengths, 2, 4)
    assert [b.tolist() for b in got] == [[1, 2], [0, 3], [4, 5], [6, 7], [8, 9]]
    assert all(b.dtype == np.int64 for b in got)
    # One window over all: 4(1) 5(2) 1(3) 2(3) 7(4) 0(5) 9(6) 6(7) 8(8) 3(9), batches of 3.
    assert [b.tolist() for b in length_batches(lengths, 3, 12)] == [[1, 4, 5], [0, 2, 7], [6, 8, 9], [3]]
    # window == batch_size: today's consecutive batches, whatever the lengths.
    assert [b.tolist() for b in length_batches(lengths, 3, 3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert length_batches([], 2, 4) == []
    for window in (3, 0, -2, 2.0, True):
        with pytest.raises(InputError, match="window must be a positive multiple of batch_size=2"):
            length_batches(lengths, 2, window)
    with pytest.raises(InputError, match="batch_size"):
        length_batches(lengths, 0, 4)


# Short and long records alternate, so consecutive batches of 2 pad each short one to a long one.
VARIED = [
    RECORDS[0],
    RECORDS[1],
    RECORDS[4],
    RECORDS[3],
    {"id": "f", "domain": "qa", "instruction": "Yes or no?", "input": "", "output": "Yes."},
    {
        "id": "g",
        "domain": "writing",
        "instruction": "Write two sentences about a lighthouse keeper and the winter storms.",
        "input": "",
        "output": "The keeper climbed the stairs each night to light the lamp. "
        "All winter the storms beat against the tower, and still it shone.",
    },
    {"id": "h", "domain": "qa", "instruction": "Capital of France?", "input": "", "output": "Paris."},
    {
        "id": "i",
        "domain": "math",
        "instruction": "Explain step by step how to multiply 23 by 47 by hand.",
        "input": "",
        "output": "23 times 40 is 920 and 23 times 7 is 161, so 23 times 47 is 920 + 161 = 1081.",
    },
    RECORDS[2],
    {"id": "j", "domain": "qa", "instruction": "Two plus two?", "input": "", "output": "Four."},
]


def padded_tokens(lengths: list[int], batches: list[np.ndarray]) -> int:
    """Tokens the batches run, padding included: each batch's longest length times its size."""
    return sum(max(lengths[i] for i in b.tolist()) * len(b) for b in batches)


def test_windows_cut_padding_by_a_count_made_by_hand(tokenizer):
    lengths = [len(encode_example(tokenizer, r, MAX_LENGTH, "response")["input_ids"]) for r in VARIED]
    assert lengths == [37, 78, 37, 64, 37, 69, 37, 96, 41, 37]  # the tokenizer's counts (record "i" cut at 96)
    # Consecutive pairs: 2 x (78 + 64 + 69 + 96 + 41) = 696 tokens.
    assert padded_tokens(lengths, length_batches(lengths, 2, 2)) == 696
    # Window 8 sorts positions 0..7 to 0 2 4 6 (37 each), 3 (64), 5 (69), 1 (78), 7 (96): pairs of widths
    # 37, 37, 69, 96; the last window is [8, 9] at 41: 2 x (37 + 37 + 69 + 96 + 41) = 560 tokens.
    batches = length_batches(lengths, 2, 8)
    assert [b.tolist() for b in batches] == [[0, 2], [4, 6], [3, 5], [1, 7], [8, 9]]
    assert padded_tokens(lengths, batches) == 560


def test_iter_gradients_in_windows_equals_consecutive_batches(lora_model, tokenizer, capsys):
    """window=8, batch 2 on records of very different lengths: the same rows, ids in input order, one yield
    per window; the progress bar still counts samples."""

    def run(**kw):
        return list(iter_gradients(lora_model, tokenizer, VARIED, batch_size=2, max_length=MAX_LENGTH, **kw))

    plain = run(progress=False)
    windowed = run(progress=True, window=8)
    assert "10/10" in capsys.readouterr().err
    assert [len(ids) for ids, _ in plain] == [2, 2, 2, 2, 2]
    assert [len(ids) for ids, _ in windowed] == [8, 2]
    assert [i for ids, _ in windowed for i in ids] == [r["id"] for r in VARIED]
    assert all(g.dtype == torch.float32 and g.device.type == "cpu" for _, g in windowed)
    ref = torch.cat([g for _, g in plain])
    got = torch.cat([g for _, g in windowed])
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-6, rtol=1e-5)
    on_device = list(
        iter_gradients(
            lora_model, tokenizer, VARIED, batch_size=2, max_length=MAX_LENGTH, progress=False, window=8, on_device=True
        )
    )
    assert torch.equal(torch.cat([g.cpu() for _, g in on_device]), got)
    assert all(g.device == next(lora_model.parameters()).device for _, g in on_device)
    with pytest.raises(InputError, match="window must be a positive multiple of batch_size=2"):
        next(iter_gradients(lora_model, tokenizer, VARIED, batch_size=2, max_length=MAX_LENGTH, window=3))


def test_windowed_error_names_the_record_of_the_sorted_batch(lora_model, tokenizer):
    """Batch positions map back to record ids through the length sort: window 4 over lengths 37 78 41 64
    batches [a, c] and [b, d], so batch position 1 of the first batch is record 'c'."""

    handle = lora_model.get_input_embeddings().register_forward_hook(_nan_in_sample_1)
    try:
        with pytest.raises(InputError, match=r"^non-finite \(NaN/inf\) gradient: record id\(s\) 'c'$"):
            list(
                iter_gradients(
                    lora_model, tokenizer, RECORDS[:4], batch_size=2, max_length=MAX_LENGTH, progress=False, window=4
                )
            )
    finally:
        handle.remove()


def test_attach_lora_is_seeded_and_load_roundtrip(tiny_model_dir, tokenizer, tmp_path):
    from gs.models.load import load_model

    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = attach_lora(
        load_model(tiny_model_dir, device="cpu"),
        LoraSpec(rank=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]),
        seed=7,
    )
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone
    second = attach_lora(
        load_model(tiny_model_dir, device="cpu"),
        LoraSpec(rank=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]),
        seed=7,
    )
    for (n1, p1), (n2, p2) in zip(lora_parameters(first), lora_parameters(second), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)

    with torch.no_grad():
        for _, p in lora_parameters(first):
            p.add_(0.05)
    first.save_pretrained(tmp_path / "adapter")
    loaded = load_adapter(load_model(tiny_model_dir, device="cpu"), tmp_path / "adapter", trainable=True)
    batch = make_batch(tokenizer, RECORDS[:2])
    assert rel_err(per_sample_lora_gradients(loaded, batch), per_sample_lora_gradients(first, batch)).max() < 1e-6

    with pytest.raises(InputError, match="no peft adapter here"):
        load_adapter(load_model(tiny_model_dir, device="cpu"), tmp_path / "missing")
    frozen = load_adapter(load_model(tiny_model_dir, device="cpu"), tmp_path / "adapter", trainable=False)
    with pytest.raises(InputError, match="no trainable LoRA"):
        lora_parameters(frozen)
    with pytest.raises(InputError, match="cannot attach LoRA"):
        attach_lora(
            load_model(tiny_model_dir, device="cpu"),
            LoraSpec(rank=4, alpha=8, dropout=0.0, target_modules=["no_such_proj"]),
            seed=0,
        )


def test_gradient_checkpointing_is_refused(lora_model, tokenizer):
    lora_model.gradient_checkpointing_enable()
    with pytest.raises(InputError, match="checkpointing"):
        per_sample_lora_gradients(lora_model, make_batch(tokenizer, RECORDS[:1]))


@pytest.mark.gpu
def test_batched_matches_loop_on_cuda(lora_model, tokenizer):
    model = lora_model.to("cuda")
    batch = make_batch(tokenizer)
    grads = per_sample_lora_gradients(model, batch)
    assert grads.device.type == "cuda"
    assert rel_err(grads, per_sample_lora_gradients_loop(model, batch)).max() < 1e-4


def test_bfloat16_model_gives_float32_gradients(lora_model, tokenizer):
    """A bfloat16 model: outer products and sums in float32, close to the float32 model's gradients."""
    import copy

    batch = make_batch(tokenizer)
    ref = per_sample_lora_gradients_loop(lora_model, batch)  # float32 model, plain autograd
    half = copy.deepcopy(lora_model).to(torch.bfloat16)
    grads = per_sample_lora_gradients(half, batch)
    assert grads.dtype == torch.float32
    # bfloat16 activations (8 mantissa bits) bound the agreement, not the accumulation.
    assert rel_err(grads, ref).max() < 0.05
    # Accumulated in float32: most entries are not bfloat16 numbers (a bfloat16 sum would be).
    assert (grads != grads.bfloat16().float()).float().mean() > 0.5
    assert grads.device == next(half.parameters()).device


def test_iter_gradients_on_device(lora_model, tokenizer):
    out = list(
        iter_gradients(
            lora_model, tokenizer, RECORDS, batch_size=2, max_length=MAX_LENGTH, progress=False, on_device=True
        )
    )
    device = next(lora_model.parameters()).device
    assert all(g.device == device for _, g in out)
    ref = torch.cat(
        [
            g
            for _, g in iter_gradients(
                lora_model, tokenizer, RECORDS, batch_size=2, max_length=MAX_LENGTH, progress=False
            )
        ]
    )
    assert torch.equal(torch.cat([g.cpu() for _, g in out]), ref)


CONVERSATION = {
    "id": "m",
    "domain": "qa",
    "instruction": "Name a colour.",
    "input": "",
    "output": "Green.",
    "messages": [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
        {"role": "assistant", "content": "Green."},
    ],
}


def test_conversation_records_batch_with_plain_ones(lora_model, tokenizer):
    """A multi-turn ``messages`` record (open-instruct / less_data) batches with plain records, and its
    gradient is the whole conversation's (both answers), not its first-question/last-answer record's."""
    flat = {k: v for k, v in CONVERSATION.items() if k != "messages"}
    batch = make_batch(tokenizer, [RECORDS[0], CONVERSATION, flat])
    answers = (batch["labels"] != IGNORE_INDEX).sum(1)
    assert answers[1] > answers[2]  # two answers (each with EOS) against one
    grads = per_sample_lora_gradients(lora_model, batch)
    assert rel_err(grads, per_sample_lora_gradients_loop(lora_model, batch)).max() < 1e-5
    assert rel_err(grads[1:2], grads[2:3]).item() > 1e-3
