"""Open-instruct conversation rows (princeton-nlp/less_data's processed train files) through the suite.

Sources (``jsonl`` and ``hf``) on rows written here, validation errors, the prepared records, and
:mod:`gs.data.prompting` on the embedded tokenizer (its ChatML chat template) and on the same
tokenizer without a template (:data:`FALLBACK_TEMPLATE`). Expected token ids are built by hand: the
texts below are typed out and each piece tokenised on its own.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hf_fixtures import write_hub_dataset

from gs.data.prepare import SPLITS, build_domain, load_records, validate_record, write_domain
from gs.data.prompting import IGNORE_INDEX, encode_example, format_prompt
from gs.data.sources import hf, jsonl
from gs.io import InputError


def conv(i: int, turns: int = 1, system: str | None = None) -> list[dict[str, str]]:
    """A conversation of ``turns`` user/assistant exchanges about number ``i``."""
    out = [{"role": "system", "content": system}] if system else []
    for t in range(turns):
        out += [
            {"role": "user", "content": f"Question {i}.{t}?"},
            {"role": "assistant", "content": f"Answer {i}.{t}."},
        ]
    return out


def less_row(i: int, turns: int = 1, dataset: str = "dolly") -> dict:
    return {"dataset": dataset, "id": f"{dataset}_{i}", "messages": conv(i, turns)}


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# --- sources -------------------------------------------------------------------------------------


def test_jsonl_reads_less_data_rows(tmp_path):
    rows = [less_row(0), less_row(1, turns=2, dataset="oasst1")]
    items = jsonl(2, 0, {"path": str(_write(tmp_path / "train.jsonl", rows)), "shuffle": False})
    assert [it["id"] for it in items] == ["dolly_0", "oasst1_1"]
    first, second = items
    assert first["messages"] == conv(0)
    assert (first["instruction"], first["input"], first["output"]) == ("Question 0.0?", "", "Answer 0.0.")
    assert first["meta"] == {"dataset": "dolly"}
    # Multi-turn: the first user turn and the last assistant turn.
    assert (second["instruction"], second["input"], second["output"]) == ("Question 1.0?", "", "Answer 1.1.")
    assert second["messages"] == conv(1, 2) and second["meta"] == {"dataset": "oasst1"}
    assert first["_where"].endswith("train.jsonl:1")


def test_jsonl_keeps_distinct_conversations_that_share_a_first_turn(tmp_path):
    """Two oasst-like branches share the first user turn; a repeated prompt is still dropped."""
    a = {"id": "a", "messages": conv(0, 2)}
    b = {"id": "b", "messages": [*conv(0, 1), {"role": "user", "content": "Other?"}, conv(0, 2)[-1]]}
    c = {"id": "c", "messages": [conv(0)[0], {"role": "assistant", "content": "Another answer."}]}
    d = {"id": "d", "messages": conv(0)}  # same prompt as c: dropped, as an instruction row would be
    items = jsonl(3, 0, {"path": str(_write(tmp_path / "t.jsonl", [a, b, c, d])), "shuffle": False})
    assert [it["id"] for it in items] == ["a", "b", "c"]


BAD_ROWS = [
    ({"dataset": "dolly", "id": "x"}, "row has neither 'messages' nor 'instruction'/'output'"),
    ({"id": "x", "messages": [{"role": "assistant", "content": "A"}]}, "field 'messages' has no user turn"),
    ({"id": "x", "messages": [{"role": "user", "content": "Q"}]}, "field 'messages' has no assistant turn"),
    ({"id": "x", "messages": [{"role": "bot", "content": "Q"}]}, "turn 0 has role 'bot'"),
    ({"id": "x", "messages": [{"role": "user", "content": 3}, conv(0)[1]]}, "turn 0 content must be a string"),
    ({"id": "x", "messages": [conv(0)[0], {"role": "assistant"}]}, "turn 1 must be an object with 'role'"),
    ({"id": "x", "messages": [*conv(0), {"role": "user", "content": "Q"}]}, "must end with an assistant turn"),
    ({"id": "x", "messages": []}, "field 'messages' must be a non-empty list"),
]


@pytest.mark.parametrize(("bad", "expected"), BAD_ROWS)
def test_jsonl_bad_conversation_is_one_line_naming_the_row(tmp_path, bad, expected):
    path = _write(tmp_path / "t.jsonl", [less_row(0), bad, less_row(2)])
    with pytest.raises(InputError) as e:
        jsonl(2, 0, {"path": str(path)})
    assert expected in str(e.value) and f"{path}:2" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.fixture()
def _private_datasets_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


@pytest.mark.usefixtures("_private_datasets_cache")
def test_hf_reads_a_messages_column(tmp_path):
    rows = [less_row(0), less_row(1, turns=2, dataset="cot"), less_row(2)]
    columns = {k: [r[k] for r in rows] for k in ("dataset", "id", "messages")}
    folder = write_hub_dataset(tmp_path / "less_data", {"train": columns})
    items = hf(3, 0, {"path": str(folder), "split": "train"})
    by_id = {it["id"]: it for it in items}
    assert sorted(by_id) == ["cot_1", "dolly_0", "dolly_2"]
    it = by_id["cot_1"]
    assert it["messages"] == conv(1, 2)
    assert (it["instruction"], it["input"], it["output"]) == ("Question 1.0?", "", "Answer 1.1.")
    assert it["meta"] == {"dataset": "cot", "source_row": 1}
    # Another column name, and a folder whose rows have no conversation column at all.
    renamed = write_hub_dataset(tmp_path / "renamed", {"train": {"conv": columns["messages"]}})
    assert hf(1, 0, {"path": str(renamed), "split": "train", "messages": "conv"})[0]["messages"] in [
        conv(0),
        conv(1, 2),
        conv(2),
    ]
    with pytest.raises(InputError, match="no 'templates' given and no conversation column 'messages'"):
        hf(1, 0, {"path": str(renamed), "split": "train"})


@pytest.mark.usefixtures("_private_datasets_cache")
def test_hf_bad_conversation_names_the_row(tmp_path):
    msgs = [conv(0), [{"role": "user", "content": "Q"}]]
    folder = write_hub_dataset(tmp_path / "bad", {"train": {"messages": msgs}})
    with pytest.raises(InputError, match=r"split 'train' row 1: field 'messages' has no assistant turn"):
        hf(1, 0, {"path": str(folder), "split": "train"})


# --- prepared records ----------------------------------------------------------------------------


def test_prepared_records_keep_messages_and_lineage(tmp_path):
    rows = [less_row(i, turns=1 + i % 2) for i in range(6)]
    path = _write(tmp_path / "pool.jsonl", rows)
    spec = {s: {"source": "jsonl", "n": 2, "options": {"path": str(path), "shuffle": False}} for s in SPLITS}
    out = build_domain("math", spec, seed=0)
    write_domain(out, tmp_path / "math")
    records = load_records(tmp_path / "math" / "train.jsonl")
    assert [r["id"] for r in records] == ["dolly_0", "dolly_1"]
    assert records[1]["messages"] == conv(1, 2)
    assert records[1]["output"] == "Answer 1.1."
    assert records[1]["meta"] == {"dataset": "dolly", "source": "jsonl", "source_id": "dolly_1"}
    # A prepared file read back as a jsonl source gives the same records.
    again = jsonl(2, 0, {"path": str(tmp_path / "math" / "train.jsonl"), "shuffle": False})
    assert [it["messages"] for it in again] == [r["messages"] for r in records]


def test_validate_record_checks_messages_agree_with_text_fields():
    good = {"instruction": "Question 0.0?", "input": "", "output": "Answer 0.1.", "messages": conv(0, 2)}
    assert validate_record(good, "r") is good
    with pytest.raises(InputError, match="r: field 'output' must be the last assistant turn of field 'messages'"):
        validate_record({**good, "output": "Answer 0.0."}, "r")
    with pytest.raises(InputError, match="r: field 'instruction' must be the first user turn"):
        validate_record({**good, "instruction": "Other?"}, "r")
    with pytest.raises(InputError, match="r: field 'messages' turn 1 has role 'tool'"):
        validate_record({**good, "messages": [conv(0)[0], {"role": "tool", "content": "x"}]}, "r")


# --- prompting -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_tokenizer(tokenizer):
    """The embedded tokenizer without its chat template: the FALLBACK_TEMPLATE path."""
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    return tok


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


SYSTEM = "Be brief."
# A conversation with a system turn and two exchanges; contents with spaces around (stripped).
MULTI = {
    "id": "m",
    "messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": " What is 2 + 2? "},
        {"role": "assistant", "content": "It is 4.\n"},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": " It is 6."},
    ],
    "instruction": " What is 2 + 2? ",
    "input": "",
    "output": " It is 6.",
}
# The text between answers, typed out: ChatML (the embedded template) and the fallback format.
CHATML_PIECES = [
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
    "\n<|im_start|>user\nAnd 3 + 3?<|im_end|>\n<|im_start|>assistant\n",
]
FALLBACK_PIECES = [
    "Be brief.\n\n### Instruction:\nWhat is 2 + 2?\n\n### Response:\n",
    "\n\n### Instruction:\nAnd 3 + 3?\n\n### Response:\n",
]


def _expected(tok, pieces: list[str]) -> tuple[list[int], list[bool]]:
    eos = tok.eos_token_id
    c1, c2 = (_ids(tok, p) for p in pieces)
    a1, a2 = _ids(tok, "It is 4.") + [eos], _ids(tok, "It is 6.") + [eos]
    ids = c1 + a1 + c2 + a2
    is_answer = [False] * len(c1) + [True] * len(a1) + [False] * len(c2) + [True] * len(a2)
    return ids, is_answer


@pytest.mark.parametrize("templated", [True, False], ids=["chat_template", "fallback"])
def test_multi_turn_labels_are_the_assistant_turns(tokenizer, plain_tokenizer, templated):
    tok = tokenizer if templated else plain_tokenizer
    assert bool(getattr(tok, "chat_template", None)) is templated
    ids, is_answer = _expected(tok, CHATML_PIECES if templated else FALLBACK_PIECES)
    response = encode_example(tok, MULTI, 512, "response")
    assert response["input_ids"] == ids
    assert response["labels"] == [t if a else IGNORE_INDEX for t, a in zip(ids, is_answer, strict=True)]
    instruction = encode_example(tok, MULTI, 512, "instruction")
    assert instruction["input_ids"] == ids
    assert instruction["labels"] == [IGNORE_INDEX if a else t for t, a in zip(ids, is_answer, strict=True)]
    assert encode_example(tok, MULTI, 512, "all") == {"input_ids": ids, "labels": ids}
    # The prompt is the conversation up to the last answer, with the generation prompt.
    pieces = CHATML_PIECES if templated else FALLBACK_PIECES
    assert format_prompt(tok, MULTI) == pieces[0] + "It is 4." + ("<|im_end|>" + pieces[1] if templated else pieces[1])


@pytest.mark.parametrize("templated", [True, False], ids=["chat_template", "fallback"])
def test_multi_turn_truncation_keeps_the_start(tokenizer, plain_tokenizer, templated):
    tok = tokenizer if templated else plain_tokenizer
    ids, is_answer = _expected(tok, CHATML_PIECES if templated else FALLBACK_PIECES)
    first_answer = is_answer.index(True)
    cut = first_answer + 2
    enc = encode_example(tok, MULTI, cut, "response")
    assert enc["input_ids"] == ids[:cut]
    assert enc["labels"] == [IGNORE_INDEX] * first_answer + ids[first_answer:cut]
    with pytest.raises(InputError, match="sample 'm': no response tokens to take the loss on"):
        encode_example(tok, MULTI, first_answer, "response")
    assert encode_example(tok, MULTI, first_answer, "instruction")["labels"] == ids[:first_answer]


@pytest.mark.parametrize("templated", [True, False], ids=["chat_template", "fallback"])
@pytest.mark.parametrize("loss_on", ["response", "instruction", "all"])
@pytest.mark.parametrize("max_length", [512, 12])
def test_single_exchange_equals_the_instruction_record(tokenizer, plain_tokenizer, templated, loss_on, max_length):
    tok = tokenizer if templated else plain_tokenizer
    plain = {"id": "p", "instruction": "Name a prime number.", "input": "", "output": "Seven is prime."}
    turns = [{"role": "user", "content": plain["instruction"]}, {"role": "assistant", "content": plain["output"]}]
    msgs = {**plain, "messages": turns}
    assert format_prompt(tok, msgs) == format_prompt(tok, plain)
    assert encode_example(tok, msgs, max_length, loss_on) == encode_example(tok, plain, max_length, loss_on)


@pytest.mark.parametrize("templated", [True, False], ids=["chat_template", "fallback"])
def test_single_exchange_with_a_system_turn(tokenizer, plain_tokenizer, templated):
    """[system, user, assistant] takes the single-turn path with the system turn in the prompt."""
    tok = tokenizer if templated else plain_tokenizer
    record = {
        "id": "s",
        "instruction": "What is 2 + 2?",
        "input": "",
        "output": "It is 4.",
        "messages": MULTI["messages"][:3],
    }
    prompt = CHATML_PIECES[0] if templated else FALLBACK_PIECES[0]
    assert format_prompt(tok, record) == prompt
    p, a = _ids(tok, prompt), _ids(tok, "It is 4.") + [tok.eos_token_id]
    assert encode_example(tok, record, 512, "response") == {"input_ids": p + a, "labels": [IGNORE_INDEX] * len(p) + a}


def test_chat_prompt_keeps_the_message_verbatim_and_format_prompt_strips_it(tokenizer):
    """lm-eval's contexts keep their whitespace (sciq's starts with a newline): gs-routed renders them verbatim,
    while a record's user message is stripped as training formats it."""
    from gs.data.prompting import FALLBACK_TEMPLATE, chat_prompt, format_prompt

    text = "\nQuestion: What is H2O?\nAnswer:"
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    assert chat_prompt(tokenizer, text) == expected
    assert "user\n\nQuestion" in expected
    assert format_prompt(tokenizer, {"instruction": text}) == chat_prompt(tokenizer, text.strip())

    class Plain:
        chat_template = None

    assert chat_prompt(Plain(), text) == FALLBACK_TEMPLATE.format(user=text)
