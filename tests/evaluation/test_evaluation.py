"""Evaluation through lm-eval: the gs_* task YAMLs, their ``!function`` hooks, and the ``gs-routed`` model.

The end-to-end tests run ``lm_eval.simple_evaluate`` on the tiny random model with 2 examples per
domain and 8 new tokens, so their scores are near 0; they check that every response is RoutedLM's
own completion of its prompt and every metric the mean of its per-sample results. Known right and
wrong completions go through each task's ``process_results`` as lm-eval loads it from the YAML, and
through the whole of ``simple_evaluate`` (metrics of 1/2, 3/4...). Writing fluency and the rolling
windows of :func:`gs.evaluation.fluency.passage_nll` are recomputed with plain transformers forwards.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from gs.data.prompting import user_message
from gs.io import InputError, write_jsonl

ENDINGS = [
    "The lighthouse keeper finally slept.",
    "Nobody noticed the missing spoon.",
    "Rain fell upward for an hour.",
    "And that was the end of the parade.",
]
CODE_PROMPT = 'def add(a, b):\n    """Return the sum of a and b.\n    >>> add(2, 3)\n    5\n    """\n'
CODE_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"


def _records() -> dict[str, list[dict]]:
    """Two test records per domain, in the suite's format (:mod:`gs.data.prepare`)."""
    writing_instruction = (
        "Write a coherent passage of 4 short paragraphs. The end sentence of each paragraph must be, in order:"
    )
    return {
        "math": [
            {
                "id": f"math-test-{i:05d}",
                "domain": "math",
                "instruction": f"Tom has {n} apples and buys 2 more. How many apples does he have?",
                "input": "",
                "output": f"{n} + 2 = {n + 2}\n#### {n + 2}",
                "meta": {"answer": str(n + 2), "source": "test"},
            }
            for i, n in enumerate((40, 7))
        ],
        "finance": [
            {
                "id": f"finance-test-{i:05d}",
                "domain": "finance",
                "instruction": q,
                "input": "",
                "output": f"#### {a}",
                "meta": {"answer": a, "template": "test", "source": "test"},
            }
            for i, (q, a) in enumerate(
                [
                    ("A share costs $200.00 and pays $2.00 a year. What is its dividend yield, in percent?", "1.00"),
                    ("$1,000 earns 5% simple interest for 2 years. What is the interest, in dollars?", "100.00"),
                ]
            )
        ],
        "code": [
            {
                "id": f"code-test-{i:05d}",
                "domain": "code",
                "instruction": "Complete the following Python function. Answer with the complete function.",
                "input": prompt,
                "output": prompt + body,
                "meta": {"prompt": prompt, "test": test, "entry_point": entry, "task_id": f"Test/{i}"},
            }
            for i, (prompt, body, test, entry) in enumerate(
                [
                    (CODE_PROMPT, "    return a + b\n", CODE_TEST, "add"),
                    (
                        'def neg(x):\n    """Return -x."""\n',
                        "    return -x\n",
                        "def check(candidate):\n    assert candidate(3) == -3\n",
                        "neg",
                    ),
                ]
            )
        ],
        "writing": [
            {
                "id": f"writing-test-{i:05d}",
                "domain": "writing",
                "instruction": writing_instruction,
                "input": "\n".join(f"{k}. {s}" for k, s in enumerate(endings, 1)),
                "output": "",
                "meta": {"end_sentences": endings, "source": "test"},
            }
            for i, endings in enumerate([ENDINGS, ENDINGS[::-1]])
        ],
    }


REFERENCE_PASSAGE = "\n\n".join(f"It was a quiet day in the town. {s}" for s in ENDINGS)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Test splits, and reference splits: the test records, or for writing one held-out passage."""
    root = tmp_path_factory.mktemp("eval_data")
    for domain, rows in _records().items():
        write_jsonl(root / domain / "test.jsonl", rows)
        if domain == "writing":
            rows = [{**rows[0], "id": "writing-reference-00000", "output": REFERENCE_PASSAGE}]
        write_jsonl(root / domain / "reference.jsonl", rows)
    return root


GENERATION = ["gs_math", "gs_code", "gs_finance", "gs_writing"]
LIKELIHOOD = [f"{t}_likelihood" for t in GENERATION]


def _targets(tasks=(*GENERATION, *LIKELIHOOD), max_gen_toks=None, **extra) -> dict:
    """A config's ``targets`` for the test data folder: one target per part, each of ``tasks`` reading its
    part's test split (generation) or reference split (likelihood)."""
    targets: dict = {}
    for task in tasks:
        part = task.removeprefix("gs_").removesuffix("_likelihood")
        entry = {"task": task, "data": {"part": part, "split": "reference" if "likelihood" in task else "test"}}
        limit = (max_gen_toks or {}).get(task) if isinstance(max_gen_toks, dict) else max_gen_toks
        if limit and "likelihood" not in task:
            entry["max_gen_toks"] = limit
        entry.update(extra.get(task, {}))
        targets.setdefault(part, {"tasks": []})["tasks"].append(entry)
    return targets


def _task_dir(data_dir, out, **kw):
    from gs.evaluation.tasks import task_specs, write_task_dir

    return write_task_dir(task_specs(_targets(**kw)), data_dir, out)


@pytest.fixture()
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")


@pytest.fixture()
def guards_only_allowed():
    """Let the tests that score code through lm-eval run it where bubblewrap does not work (in-process
    guards only): an explicit opt-in (gs.evaluation.sandbox.allow_without_bubblewrap), undone afterwards."""
    from gs.evaluation.sandbox import allow_without_bubblewrap

    previous = allow_without_bubblewrap(True)
    yield
    allow_without_bubblewrap(previous)


@pytest.fixture()
def task_manager(data_dir, tmp_path, offline, guards_only_allowed):
    from lm_eval.tasks import TaskManager

    task_dir = _task_dir(data_dir, tmp_path / "tasks", max_gen_toks=8)
    return TaskManager(include_path=str(task_dir), include_defaults=False)


def _score(task, doc: dict, completion: str) -> dict[str, float]:
    return task.process_results(doc, [completion])


# ---------------------------------------------------------------------------------------------------
# Task YAMLs and hooks, as lm-eval loads them
# ---------------------------------------------------------------------------------------------------


def test_tasks_load_with_local_data_and_prompt(task_manager, data_dir):
    tasks = task_manager.load(GENERATION)["tasks"]
    assert sorted(tasks) == ["gs_code", "gs_finance", "gs_math", "gs_writing"]
    for name, task in tasks.items():
        docs = list(task.test_docs())
        assert len(docs) == 2
        # The prompt is the training user message; the data came from our folder, not results/.
        assert task.doc_to_text(docs[0]) == user_message(docs[0])
        assert docs[0]["domain"] == name.removeprefix("gs_")
        assert task.config.generation_kwargs["max_gen_toks"] == 8
        assert "\n\n" not in task.config.generation_kwargs["until"]
        assert task.config.dataset_kwargs["data_files"]["test"] == str(
            data_dir.resolve() / docs[0]["domain"] / "test.jsonl"
        )


def test_math_and_finance_hooks_score_right_1_and_wrong_0(task_manager):
    tasks = task_manager.load(["gs_math", "gs_finance"])["tasks"]
    math_doc = next(iter(tasks["gs_math"].test_docs()))  # gold 42
    assert _score(tasks["gs_math"], math_doc, "40 + 2 = 42\n#### 42") == {"exact_match": 1.0}
    assert _score(tasks["gs_math"], math_doc, "#### 41") == {"exact_match": 0.0}
    assert _score(tasks["gs_math"], math_doc, "") == {"exact_match": 0.0}
    finance_doc = next(iter(tasks["gs_finance"].test_docs()))  # gold 1.00 (percent)
    assert _score(tasks["gs_finance"], finance_doc, "Yield = 2 / 200 = 1.005%\n#### 1.005") == {"exact_match_1pct": 1.0}
    assert _score(tasks["gs_finance"], finance_doc, "#### 1.5") == {"exact_match_1pct": 0.0}


def test_code_hook_runs_the_tests(task_manager):
    task = task_manager.load(["gs_code"])["tasks"]["gs_code"]
    doc = next(iter(task.test_docs()))
    canonical = "```python\n" + CODE_PROMPT + "    return a + b\n```"
    assert _score(task, doc, canonical) == {"pass@1": 1.0}
    assert _score(task, doc, "    return a + b\n") == {"pass@1": 1.0}  # a continuation of the prompt
    assert _score(task, doc, "```python\n" + CODE_PROMPT + "    return a - b\n```") == {"pass@1": 0.0}


def test_code_hook_refuses_without_opt_in(task_manager, monkeypatch):
    task = task_manager.load(["gs_code"])["tasks"]["gs_code"]
    doc = next(iter(task.test_docs()))
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL")
    with pytest.raises(InputError, match="HF_ALLOW_CODE_EVAL"):
        _score(task, doc, "    return a + b\n")


def test_writing_hook_checks_the_endings(task_manager):
    task = task_manager.load(["gs_writing"])["tasks"]["gs_writing"]
    doc = next(iter(task.test_docs()))
    passage = "\n\n".join(f"Some opening words about the day. {s}" for s in ENDINGS)
    assert _score(task, doc, passage) == {"constraint": 1.0, "ending_match": 1.0}
    three_right = "\n\n".join(f"Words. {s}" for s in [*ENDINGS[:3], "Something else entirely."])
    assert _score(task, doc, three_right) == {"constraint": 0.0, "ending_match": 0.75}
    assert _score(task, doc, "One paragraph that ends nowhere.") == {"constraint": 0.0, "ending_match": 0.0}


# ---------------------------------------------------------------------------------------------------
# The gs-routed model through simple_evaluate
# ---------------------------------------------------------------------------------------------------


def _cut(text: str, stops: list[str]) -> str:
    """The text before the first of ``stops`` (written here, not taken from gs.evaluation.run)."""
    cuts = [text.find(s) for s in stops if s and s in text]
    return text[: min(cuts)] if cuts else text


GENERATION_METRICS = {
    "gs_math": ["exact_match"],
    "gs_code": ["pass@1"],
    "gs_finance": ["exact_match_1pct"],
    "gs_writing": ["constraint", "ending_match"],
}


@pytest.fixture(scope="module")
def wordy_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A tiny model like ``tiny_model_dir`` whose greedy completions are words that differ by prompt.

    The conftest model (initialiser std 0.02) answers every prompt with the same blank lines: an
    empty passage once stripped, whose perplexity is never computed, and one answer for all prompts,
    which cannot show a response landing on the wrong prompt. Here the weights are drawn with std 0.2
    and the (tied) embeddings of whitespace-only tokens are zeroed.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.initializer_range = 0.2
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    blank = [i for i in range(len(tok)) if not tok.decode([i]).strip()]
    with torch.no_grad():
        model.get_input_embeddings().weight[blank] = 0.0
    out = tmp_path_factory.mktemp("wordy_model")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_simple_evaluate_base_mode_on_tiny_model(task_manager, wordy_model_dir):
    import lm_eval

    import gs.evaluation.run  # noqa: F401 - registers gs-routed
    from gs.evaluation.routed_model import RoutedLM

    results = lm_eval.simple_evaluate(
        model="gs-routed",
        model_args={"model_dir": str(wordy_model_dir), "mode": "base", "device": "cpu"},
        tasks=list(GENERATION_METRICS),
        task_manager=task_manager,
        limit=2,
        log_samples=True,
        confirm_run_unsafe_code=True,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
    )
    reference = RoutedLM(wordy_model_dir, mode="base", device="cpu")
    responses = []
    for task, metrics in GENERATION_METRICS.items():
        samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
        assert [s["doc_id"] for s in samples] == [0, 1]
        for metric in metrics:
            # lm-eval's aggregate is the mean of the per-sample results it logged.
            value = results["results"][task][f"{metric},none"]
            assert value == pytest.approx(float(np.mean([s[metric] for s in samples])), abs=1e-12), (task, metric)
        for s in samples:
            prompt, gen_kwargs = s["arguments"][0]
            # The model saw the bare user message (RoutedLM applies the chat template itself).
            assert prompt == user_message(s["doc"])
            assert gen_kwargs["max_gen_toks"] == 8
            # Each response is RoutedLM's greedy completion of that prompt alone, cut at the task's stops.
            (alone,) = reference.generate([prompt], max_new_tokens=8, stop=gen_kwargs["until"], batch_size=1)
            assert s["filtered_resps"][0] == _cut(alone, gen_kwargs["until"]), (task, s["doc_id"])
            responses.append(s["filtered_resps"][0])
    assert len(set(responses)) == len(responses)  # one answer per prompt: a mix-up would show


class _KnownAnswers:
    """Stand-in RoutedLM that answers each prompt with a completion fixed in advance."""

    answers: dict[str, str] = {}

    def __init__(self, model_dir, **kwargs):
        self.last_routing: list[dict] = []
        self.last_timing: dict = {}
        self.tokenizer = None

    def generate(self, prompts, *, max_new_tokens, stop=None, domains=None, batch_size=8):
        self.last_routing = [{"experts": [], "weights": []} for _ in prompts]
        return [type(self).answers[p] for p in prompts]


def test_simple_evaluate_aggregates_the_hooks_scores(task_manager, monkeypatch):
    """Known right and wrong completions through lm-eval: each task's metric is the mean over its docs."""
    import lm_eval

    import gs.evaluation.routed_model
    from gs.evaluation.lm import GSRoutedLM

    records = _records()
    code_right = "```python\n" + CODE_PROMPT + "    return a + b\n```"
    three_endings = "\n\n".join(f"Words. {s}" for s in [*ENDINGS[::-1][:3], "Something else entirely."])
    completions = {
        "math": ["#### 42", "#### 10"],  # gold 42, 9
        "finance": ["#### 1.00", "#### 100.5"],  # gold 1.00; 100.00 within 1%
        "code": [code_right, "    return x\n"],  # passes; returns +x
        "writing": ["\n\n".join(f"Opening. {s}" for s in ENDINGS), three_endings],  # 4/4 endings, then 3/4
    }
    expected = {
        "gs_math": {"exact_match": (1 + 0) / 2},
        "gs_finance": {"exact_match_1pct": (1 + 1) / 2},
        "gs_code": {"pass@1": (1 + 0) / 2},
        "gs_writing": {"constraint": (1 + 0) / 2, "ending_match": (1 + 0.75) / 2},
    }
    _KnownAnswers.answers = {
        user_message(r): c for d, rows in records.items() for r, c in zip(rows, completions[d], strict=True)
    }
    monkeypatch.setattr(gs.evaluation.routed_model, "RoutedLM", _KnownAnswers)
    results = lm_eval.simple_evaluate(
        model=GSRoutedLM(model_dir="unused", mode="base"),
        tasks=list(GENERATION_METRICS),
        task_manager=task_manager,
        log_samples=True,
        confirm_run_unsafe_code=True,
        random_seed=0,
    )
    for task, metrics in expected.items():
        for metric, value in metrics.items():
            assert results["results"][task][f"{metric},none"] == pytest.approx(value, abs=1e-12), (task, metric)


def _plain_nll(model_dir: Path, text: str) -> tuple[float, int]:
    """NLL (nats) of ``text`` after the BOS token and its token count, from a plain transformers forward."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    inputs = torch.tensor([[prefix, *ids]])
    labels = torch.tensor([[-100, *ids]])
    with torch.no_grad():
        loss = model(input_ids=inputs, labels=labels).loss  # mean NLL over the len(ids) predicted tokens
    return float(loss) * len(ids), len(ids)


def test_cli_writes_the_report(data_dir, wordy_model_dir, tmp_path, offline):
    from gs.evaluation.run import main

    out = tmp_path / "eval" / "base.json"
    system = {"name": "base", "mode": "base", "model_dir": str(wordy_model_dir), "device": "cpu"}
    params = {"batch_size": 2}
    params["run_code_without_bubblewrap"] = True  # gs_code runs here even without bubblewrap
    targets = _targets(
        GENERATION,
        {"gs_writing": 12, "gs_math": 4, "gs_code": 8, "gs_finance": 8},
        gs_writing={"fluency": True},
    )
    argv = ["--system", json.dumps(system), "--data-dir", str(data_dir), "--targets", json.dumps(targets)]
    argv += ["--limit", "1"]
    main([*argv, "--params", json.dumps(params), "--seed", "3", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["seed"] == 3 and report["limit"] == 1
    assert set(report["tasks"]) == {"gs_math", "gs_code", "gs_finance", "gs_writing"}
    # The metric each domain is ranked by (the paper's: exact match, pass@1, 1% tolerance, the constraint).
    assert {t: p["metric"] for t, p in report["primary"].items()} == {
        "gs_math": "exact_match",
        "gs_code": "pass@1",
        "gs_finance": "exact_match_1pct",
        "gs_writing": "constraint",
    }
    for task, entry in report["tasks"].items():
        assert entry["n_examples"] == 1
        primary = report["primary"][task]
        (sample,) = entry["samples"]
        # The reported value is lm-eval's mean of the per-sample scores, here of the one sample.
        assert primary["value"] == sample["scores"][primary["metric"]]
        assert primary["value"] in (0.0, 1.0)
        assert entry["metric_info"][primary["metric"]]["higher_is_better"] is True
        assert set(sample) >= {"prompt", "completion", "scores", "routing"}
        assert sample["prompt"] == user_message(_records()[entry["target"]][0])
        assert sample["routing"] == {"experts": [], "weights": []}  # base mode: no expert
    assert report["tasks"]["gs_math"]["generation_kwargs"]["max_gen_toks"] == 4
    writing = report["tasks"]["gs_writing"]
    assert writing["generation_kwargs"]["max_gen_toks"] == 12
    # Fluency: the base model's perplexity of the passage alone, exp(NLL / tokens), recomputed here.
    passage = writing["samples"][0]["completion"].strip()
    assert passage, "the tiny model wrote nothing: fluency would not be computed"
    nll, n = _plain_nll(wordy_model_dir, passage)
    assert n > 0
    assert writing["samples"][0]["scores"]["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-4)
    assert writing["metrics"]["fluency_perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-4)
    assert writing["metrics"]["fluency_perplexity_median"] == pytest.approx(math.exp(nll / n), rel=1e-4)
    assert writing["fluency"]["n_passages"] == 1 and writing["fluency"]["n_empty"] == 0
    assert writing["metric_info"]["fluency_perplexity"]["higher_is_better"] is False
    assert report["lm_eval"]["version"] == "0.4.13"


def _rolling_nll(model, ids: list[int], prefix: int, window: int) -> float:
    """NLL of ``ids`` scored ``window`` tokens at a time, each forward seeing at most ``window`` tokens.

    Written from lm-eval's definition of loglikelihood_rolling (context_len=1), not with its helpers:
    the first block of ``window`` tokens follows ``prefix`` alone; every later block follows as many
    of the tokens before it as fit (one for a full block, more for a shorter last block).
    """
    import torch

    total = 0.0
    for start in range(0, len(ids), window):
        block = ids[start : start + window]
        context = [prefix] if start == 0 else ids[start - (window - len(block) + 1) : start]
        inputs = torch.tensor([(context + block)[:-1]])
        assert inputs.shape[1] <= window
        with torch.no_grad():
            logits = model(input_ids=inputs).logits[0, len(context) - 1 :]
        total += float(torch.nn.functional.cross_entropy(logits, torch.tensor(block), reduction="sum"))
    return total


def test_passage_nll_rolls_windows_like_lm_eval(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gs.evaluation.fluency import passage_nll

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    text = " ".join(ENDINGS)  # 30-odd tokens
    ids = tok(text, add_special_tokens=False)["input_ids"]
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    assert len(ids) > 20 and len(ids) % 8 != 0  # full windows of 8 and a shorter last one
    whole, n = passage_nll(model, tok, text, max_length=512)
    assert n == len(ids)
    assert whole == pytest.approx(_plain_nll(tiny_model_dir, text)[0], rel=1e-5)
    for window in (8, 7, len(ids)):
        nll, n = passage_nll(model, tok, text, max_length=window)
        assert n == len(ids)
        assert nll == pytest.approx(_rolling_nll(model, ids, prefix, window), rel=1e-5), window
    # Windows change the number: each block after the first loses its earlier context.
    assert passage_nll(model, tok, text, max_length=8)[0] != pytest.approx(whole, rel=1e-4)
    assert passage_nll(model, tok, "", max_length=8) == (0.0, 0)


def test_task_dir_keeps_the_yaml_settings_unless_overridden(data_dir, tmp_path, offline):
    from lm_eval.tasks import TaskManager

    from gs.evaluation.tasks import TASKS_DIR, read_task_yaml, task_specs

    task_dir = _task_dir(data_dir, tmp_path / "tasks")
    task = TaskManager(include_path=str(task_dir), include_defaults=False).load(["gs_code"])["tasks"]["gs_code"]
    packaged = read_task_yaml(TASKS_DIR / "gs_code.yaml")
    assert task.config.generation_kwargs["max_gen_toks"] == packaged["generation_kwargs"]["max_gen_toks"]
    assert task.config.unsafe_code is True
    with pytest.raises(InputError, match="max_gen_toks must be a positive integer, got 0"):
        task_specs(_targets(["gs_code"], 0, gs_code={"max_gen_toks": 0}))


def test_likelihood_tasks_score_reference_answers_through_the_model(task_manager, tiny_model_dir, data_dir):
    import math

    import lm_eval

    from gs.evaluation.lm import GSRoutedLM
    from gs.evaluation.routed_model import RoutedLM

    lm = GSRoutedLM.create_from_arg_string(f"model_dir={tiny_model_dir},mode=base,device=cpu,batch_size=2")
    assert lm.batch_size == 2
    with pytest.raises(NotImplementedError, match="loglikelihood"):
        lm.loglikelihood_rolling([])
    results = lm_eval.simple_evaluate(
        model=lm, tasks=LIKELIHOOD, task_manager=task_manager, log_samples=True, random_seed=0
    )
    reference = RoutedLM(tiny_model_dir, mode="base", device="cpu")
    for domain in ("math", "code", "finance", "writing"):
        task = f"gs_{domain}_likelihood"
        samples = results["samples"][task]
        docs = [s["doc"] for s in samples]
        assert len(samples) == (1 if domain == "writing" else 2)
        # The continuation is the reference output itself, right after the bare user message.
        for s, doc in zip(samples, docs, strict=True):
            assert s["arguments"][0] == (user_message(doc), doc["output"].strip())
        expected = reference.loglikelihood([user_message(d) for d in docs], [d["output"].strip() for d in docs])
        logprobs = [s["filtered_resps"][0][0] for s in samples]
        assert logprobs == pytest.approx([e[0] for e in expected], rel=1e-5)
        n_bytes = sum(len(d["output"].strip().encode()) for d in docs)
        bpb = results["results"][task]["bits_per_byte,none"]
        assert bpb == pytest.approx(-sum(logprobs) / (n_bytes * math.log(2)), rel=1e-6)
        assert bpb > 0.5  # a random tiny model is far from the answers
        assert lm.routing_log[(task, 0)] == {"experts": [], "weights": []}
    assert results["higher_is_better"]["gs_math_likelihood"]["bits_per_byte"] is False


# ---------------------------------------------------------------------------------------------------
# generate_until's bookkeeping, with a stand-in RoutedLM
# ---------------------------------------------------------------------------------------------------


class _FakeRoutedLM:
    """Records its calls; answers ``<domain>:<prompt> STOP tail`` and routes by domain."""

    calls: list[dict] = []

    def __init__(self, model_dir, **kwargs):
        self.kwargs = kwargs
        self.last_routing: list[dict] = []
        self.last_timing: dict = {}
        self.tokenizer = None

    def generate(self, prompts, *, max_new_tokens, stop=None, domains=None, batch_size=8):
        type(self).calls.append({"prompts": list(prompts), "max_new_tokens": max_new_tokens, "stop": stop})
        self.last_routing = [{"experts": [len(d)], "weights": [1.0], "domain": d} for d in domains]
        self.last_timing = {"new_tokens": 3 * len(prompts)}
        return [f"{d}:{p} STOP tail" for p, d in zip(prompts, domains, strict=True)]


def test_generate_until_groups_passes_domains_and_cuts(monkeypatch):
    from lm_eval.api.instance import Instance

    import gs.evaluation.routed_model
    from gs.evaluation.lm import GSRoutedLM

    _FakeRoutedLM.calls = []
    monkeypatch.setattr(gs.evaluation.routed_model, "RoutedLM", _FakeRoutedLM)
    lm = GSRoutedLM(model_dir="unused", mode="oracle", params='{"temperature": 0.5}')
    assert lm.routed.kwargs["params"] == {"temperature": 0.5}

    def req(task, doc_id, domain, prompt, **gen):
        gen_kwargs = {"until": ["STOP"], "max_gen_toks": 5, "do_sample": False, **gen}
        return Instance("generate_until", {"domain": domain}, (prompt, gen_kwargs), 0, metadata=(task, doc_id, 1))

    requests = [
        req("gs_math", 0, "math", "a"),
        req("gs_writing", 0, "writing", "b", max_gen_toks=7),
        req("gs_math", 1, "math", "ccc"),
    ]
    outputs = lm.generate_until(requests)
    assert outputs == ["math:a ", "writing:b ", "math:ccc "]
    # One call per (task, settings), longest prompt first; each with its own token limit.
    assert [c["prompts"] for c in _FakeRoutedLM.calls] == [["ccc", "a"], ["b"]]
    assert [c["max_new_tokens"] for c in _FakeRoutedLM.calls] == [5, 7]
    assert lm.routing_log[("gs_math", 1)]["domain"] == "math"
    assert lm.routing_log[("gs_writing", 0)]["experts"] == [7]
    assert lm.generated_tokens["gs_math"] == 6

    with pytest.raises(InputError, match="greedily"):
        lm.generate_until([req("gs_math", 0, "math", "a", do_sample=True)])


def test_loglikelihood_groups_by_task_and_passes_domains(monkeypatch):
    from lm_eval.api.instance import Instance

    import gs.evaluation.routed_model
    from gs.evaluation.lm import GSRoutedLM

    calls = []

    class Scorer(_FakeRoutedLM):
        def loglikelihood(self, prompts, continuations, *, domains=None, batch_size=8):
            calls.append((list(prompts), list(continuations), list(domains), batch_size))
            self.last_routing = [{"experts": [len(d)], "weights": [1.0]} for d in domains]
            self.last_timing = {"route_s": 0.25}
            return [(-float(len(c)), c == "yes", len(c)) for c in continuations]

    monkeypatch.setattr(gs.evaluation.routed_model, "RoutedLM", Scorer)
    lm = GSRoutedLM(model_dir="unused", mode="oracle", batch_size=3)

    def req(task, doc_id, domain, context, continuation):
        return Instance("loglikelihood", {"domain": domain}, (context, continuation), 0, metadata=(task, doc_id, 1))

    requests = [
        req("gs_math_likelihood", 0, "math", "q0", "yes"),
        req("gs_code_likelihood", 0, "code", "q1", "def f(): pass"),
        req("gs_math_likelihood", 1, "math", "q2", "no"),
    ]
    assert lm.loglikelihood(requests) == [(-3.0, True), (-13.0, False), (-2.0, False)]
    # One call per task, longest request first; results come back in request order.
    assert calls == [(["q0", "q2"], ["yes", "no"], ["math", "math"], 3), (["q1"], ["def f(): pass"], ["code"], 3)]
    assert lm.loglikelihood([requests[2], requests[0]]) == [(-2.0, False), (-3.0, True)]
    assert calls[-1][:2] == (["q0", "q2"], ["yes", "no"])
    assert lm.routing_log[("gs_code_likelihood", 0)] == {"experts": [4], "weights": [1.0]}
    assert lm.routing_seconds["gs_math_likelihood"] == 0.5  # accumulated over the two calls


def test_generation_settings_and_helpers():
    from gs.evaluation.decoding import cut_at_stop
    from gs.evaluation.lm import generation_settings, split_routing
    from gs.evaluation.tasks import task_specs

    assert generation_settings({"until": "Q:", "max_new_tokens": 9}, 256) == (["Q:"], 9)
    assert generation_settings({"until": ["", "x"]}, 256) == (["x"], 256)
    assert cut_at_stop("abc<|im_end|>def</s>", ["</s>", "<|im_end|>"]) == "abc"
    assert split_routing([{"e": 1}, {"e": 2}], 2) == [{"e": 1}, {"e": 2}]
    assert split_routing({"e": [1, 2], "w": [0.5, 0.5]}, 2) == [{"e": 1, "w": 0.5}, {"e": 2, "w": 0.5}]
    assert split_routing(None, 2) == [None, None]
    specs = task_specs(_targets(["gs_math", "gs_code_likelihood"], 4))
    assert [(s.target, s.task, s.data, s.max_gen_toks) for s in specs] == [
        ("math", "gs_math", "math/test.jsonl", 4),
        ("code", "gs_code_likelihood", "code/reference.jsonl", None),
    ]


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ({"a": {"tasks": []}}, "targets.a: no tasks"),
        ({"a": {"tasks": [{"task": "gs_math"}]}}, "suite task 'gs_math' needs 'data"),
        ({"a": {"tasks": [{"task": "mmlu", "data": {"part": "a", "split": "test"}}]}}, "reads its own dataset"),
        ({"a": {"tasks": [{"task": "mmlu", "shots": 5}]}}, r"unknown key\(s\) \['shots'\]"),
        ({"a": {"tasks": ["mmlu"]}, "b": {"tasks": ["mmlu"]}}, "task 'mmlu' is named by targets 'a' and 'b'"),
        ({"a": {"tasks": [{"task": "mmlu", "num_fewshot": -1}]}}, "num_fewshot must be a non-negative integer"),
    ],
)
def test_bad_targets_fail_with_one_line(targets, message):
    from gs.evaluation.tasks import task_specs

    with pytest.raises(InputError, match=message) as info:
        task_specs(targets)
    assert "\n" not in str(info.value)


def test_an_lm_eval_task_that_does_not_exist_is_named():
    from gs.evaluation.tasks import check_known, task_specs

    specs = task_specs({"a": {"tasks": ["mmlu", "no_such_task"]}})
    with pytest.raises(InputError, match="targets.a: unknown lm-eval task 'no_such_task'"):
        check_known(specs, ["mmlu"], ["mmlu"])
    with pytest.raises(InputError, match="'mmlu' is an lm-eval group; dataset_path"):
        check_known(task_specs({"a": {"tasks": [{"task": "mmlu", "dataset_path": "/x"}]}}), ["mmlu"], ["mmlu"])


def test_evaluate_system_checks_its_inputs(data_dir, monkeypatch):
    from gs.evaluation.run import evaluate_system

    with pytest.raises(InputError, match="run_code_without_bubblewrap must be true or false"):
        evaluate_system(
            {"name": "x", "model_dir": "nowhere"},
            _targets(["gs_code"]),
            data_dir,
            params={"run_code_without_bubblewrap": 1},
        )
    with pytest.raises(InputError, match=r"math/test.jsonl: data of task gs_math \(target math\) not found"):
        evaluate_system({"name": "x", "model_dir": "nowhere"}, _targets(["gs_math"]), data_dir / "missing")
    with pytest.raises(InputError, match="reference.jsonl: data of task gs_math_likelihood"):
        evaluate_system({"name": "x", "model_dir": "nowhere"}, _targets(["gs_math_likelihood"]), data_dir / "missing")


# ---------------------------------------------------------------------------------------------------
# Generated code runs in bubblewrap, or with the in-process guards only when the config says so
# ---------------------------------------------------------------------------------------------------

NO_BWRAP = "none: `bwrap` not found on PATH; install the `bubblewrap` package"


def _isolation(monkeypatch, namespaces: bool) -> None:
    """Make gs.evaluation.sandbox see bubblewrap working (``namespaces``) or unavailable, without probing."""
    import gs.evaluation.sandbox
    from gs.evaluation.bubblewrap import Isolation

    description = "bubblewrap (/usr/bin/bwrap): pid/net/ipc/uts/mount namespaces, user namespace"
    iso = Isolation(True, description) if namespaces else Isolation(False, NO_BWRAP)
    monkeypatch.setattr(gs.evaluation.sandbox, "isolation", lambda: iso)


def test_code_execution_policy(monkeypatch):
    from gs.evaluation.run import code_execution_policy

    _isolation(monkeypatch, namespaces=False)
    runs, reason = code_execution_policy({})
    assert not runs
    assert reason.startswith("bubblewrap unavailable (`bwrap` not found on PATH")
    assert "set evaluation.run_code_without_bubblewrap: true" in reason and "\n" not in reason
    assert code_execution_policy({"run_code_without_bubblewrap": False})[0] is False
    runs, how = code_execution_policy({"run_code_without_bubblewrap": True})
    assert runs and how.startswith("none: `bwrap` not found") and "in-process guards only" in how
    with pytest.raises(InputError, match="must be true or false"):
        code_execution_policy({"run_code_without_bubblewrap": "true"})
    _isolation(monkeypatch, namespaces=True)
    assert code_execution_policy({}) == (
        True,
        "bubblewrap (/usr/bin/bwrap): pid/net/ipc/uts/mount namespaces, user namespace",
    )


@pytest.mark.parametrize("opt_in", [False, True], ids=["default", "run_code_without_bubblewrap"])
def test_without_bubblewrap_gs_code_is_not_run_unless_the_config_says_so(data_dir, tmp_path, monkeypatch, opt_in):
    """The evaluation, without bubblewrap: by default gs_code's completion (which writes a marker outside its
    directory through ctypes, past the in-process guards) is never executed and the report says why; with
    ``run_code_without_bubblewrap: true`` it runs, guards only, and the marker shows it really ran."""
    import gs.evaluation.routed_model
    import gs.evaluation.sandbox
    from gs.evaluation.run import evaluate_system
    from gs.evaluation.sandbox import ALLOW_ENV_VAR, without_bubblewrap_allowed

    _isolation(monkeypatch, namespaces=False)
    monkeypatch.delenv(ALLOW_ENV_VAR, raising=False)  # the evaluation decides, not the environment
    runs = []
    real_run = gs.evaluation.sandbox._run
    monkeypatch.setattr(
        gs.evaluation.sandbox, "_run", lambda program, **kw: runs.append(program) or real_run(program, **kw)
    )
    marker = tmp_path / "outside" / "code-was-run"
    marker.parent.mkdir()
    escaping = (
        "```python\nimport ctypes, os\n"
        f"fd = ctypes.CDLL(None).open({str(marker)!r}.encode(), os.O_WRONLY | os.O_CREAT, 0o644)\n"
        + CODE_PROMPT
        + "    return a + b\n```"
    )
    records = _records()
    _KnownAnswers.answers = {user_message(records["math"][0]): "#### 42", user_message(records["code"][0]): escaping}
    monkeypatch.setattr(gs.evaluation.routed_model, "RoutedLM", _KnownAnswers)
    system = {"name": "base", "mode": "base", "model_dir": "unused", "dtype": "float32", "device": "cpu"}
    out = tmp_path / "base.json"
    params = {"run_code_without_bubblewrap": True} if opt_in else {}
    evaluate_system(system, _targets(["gs_math", "gs_code"]), data_dir, limit=1, out_json=out, params=params)
    report = json.loads(out.read_text())
    assert report["primary"]["gs_math"] == {"metric": "exact_match", "value": 1.0}
    code, primary = report["tasks"]["gs_code"], report["primary"]["gs_code"]
    if opt_in:
        assert marker.exists() and len(runs) == 1  # it ran, and nothing but the guards stood in its way
        assert primary == {"metric": "pass@1", "value": 1.0}
        assert "not_run" not in code and code["n_examples"] == 1
        assert report["code_sandbox"].startswith("none: `bwrap` not found") and "guards only" in report["code_sandbox"]
    else:
        assert not marker.exists() and runs == []  # no program of the model's was started at all
        assert primary["metric"] == "pass@1" and primary["value"] is None
        assert code["not_run"].startswith("bubblewrap unavailable (`bwrap` not found on PATH")
        assert "evaluation.run_code_without_bubblewrap: true" in code["not_run"]
        assert primary["not_run"] == code["not_run"] and code["samples"] == [] and code["n_examples"] == 0
        assert report["code_sandbox"] == "not run: " + code["not_run"]
        assert "gs_code" not in report["lm_eval"]["n_samples"]  # left out of the lm-eval run, not just hidden
    # The opt-ins the evaluation gave itself do not outlive it.
    assert ALLOW_ENV_VAR not in os.environ and not without_bubblewrap_allowed()


def test_a_local_dataset_path_gets_a_cache_of_the_run_s_own(tmp_path):
    """``datasets`` would answer a local folder from a cache of any folder of the same name: the per-run
    YAML of a task pointed at a local folder names a cache inside the run's task folder; a hub id gets none."""
    from types import SimpleNamespace

    import lm_eval

    from gs.evaluation.tasks import task_specs, write_task_dir

    sciq = Path(lm_eval.__file__).parent / "tasks" / "sciq" / "sciq.yaml"
    local = tmp_path / "sciq_copy"
    local.mkdir()
    targets = {"a": {"tasks": [{"task": "sciq", "dataset_path": str(local)}]}}
    out = write_task_dir(task_specs(targets), tmp_path, tmp_path / "tasks", {"sciq": SimpleNamespace(yaml_path=sciq)})
    cfg = yaml.safe_load((out / "sciq.yaml").read_text())
    assert cfg["dataset_path"] == str(local.resolve())
    assert cfg["dataset_kwargs"] == {"cache_dir": str((tmp_path / "tasks" / ".datasets_cache").resolve())}
    hub = {"a": {"tasks": [{"task": "sciq", "dataset_path": "allenai/sciq"}]}}
    out = write_task_dir(task_specs(hub), tmp_path, tmp_path / "hub_tasks", {"sciq": SimpleNamespace(yaml_path=sciq)})
    assert "dataset_kwargs" not in yaml.safe_load((out / "sciq.yaml").read_text())


def test_an_lm_eval_task_whose_hooks_cannot_load_is_left_out_with_its_reason(tmp_path):
    """lm-eval's humaneval imports a module that fetches evaluate's code_eval from the hub; offline that
    import fails. Such a task is reported not run (its metric named by its function), not a failed run."""
    from types import SimpleNamespace

    from gs.evaluation.run import _hooks_unavailable, _not_run_report
    from gs.evaluation.tasks import task_specs

    (tmp_path / "broken_hooks.py").write_text("raise FileNotFoundError('no code_eval offline')\n", encoding="utf-8")
    (tmp_path / "fine_hooks.py").write_text("def pass_at_k(references, predictions, k=None):\n    return 0.0\n")
    for name in ("broken", "fine"):
        (tmp_path / f"{name}.yaml").write_text(
            f"task: {name}\nunsafe_code: true\nmetric_list:\n  - metric: !function {name}_hooks.pass_at_k\n",
            encoding="utf-8",
        )
    index = {n: SimpleNamespace(yaml_path=str(tmp_path / f"{n}.yaml")) for n in ("broken", "fine")}
    broken, fine = task_specs({"code": {"tasks": ["broken", "fine"]}})
    reason = _hooks_unavailable(broken, index)
    assert reason == "lm-eval cannot load the task's hooks here (FileNotFoundError: no code_eval offline)"
    assert _hooks_unavailable(fine, index) is None
    entry = _not_run_report(broken, reason, index)
    assert (entry["not_run"], entry["primary_metric"], entry["n_examples"]) == (reason, "pass_at_k", 0)
