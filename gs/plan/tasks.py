"""What one evaluation job computes per target task: its examples, their kind and their tokens.

lm-eval runs a task as requests of one kind (its ``output_type``): ``generate_until`` (one greedy
decoding per example, batched, up to ``max_gen_toks`` new tokens), ``loglikelihood`` (one scored
continuation per example), ``multiple_choice`` (one scored continuation per choice) and
``loglikelihood_rolling`` (one scored text per example). A suite task (a YAML of ``gs/lm_eval_tasks/``
with ``data: {part, split}``) has the prepared split's size from ``data.parts`` and the planner's
``plan.prompt_tokens``; lm-eval's own tasks and the suite's tasks that read their own dataset have the
stated sizes of :data:`STATED_TASKS`, each with its source. A task in neither place is planned at an
assumed size and says so (:attr:`TaskWork.note`); none is counted as zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: lm-eval's generation limit when a task's ``generation_kwargs`` sets none
#: (lm_eval.api.model.TemplateLM / HFLM ``max_gen_toks`` default).
DEFAULT_MAX_GEN_TOKS = 256
#: Examples assumed for a task of unknown size (the plan row says so).
UNKNOWN_EXAMPLES = 1000
#: Characters a token of English text under the Llama-2 tokenizer (the rule of thumb the estimates use).
CHARS_PER_TOKEN = 4
KINDS = ("generate_until", "loglikelihood", "multiple_choice", "loglikelihood_rolling")


@dataclass(frozen=True)
class StatedTask:
    """A task's size as published: ``n`` examples of ``kind``; a prompt of ``question_tokens`` plus
    ``shot_tokens`` per few-shot example at ``shots`` examples (lm-eval's default for the task);
    ``choices`` continuations per example (multiple choice), of ``answer_tokens`` tokens each;
    ``max_gen_toks``: the YAML's generation limit (None: lm-eval's default)."""

    kind: str
    n: int
    question_tokens: int
    shot_tokens: int = 0
    shots: int = 0
    choices: int = 1
    answer_tokens: int | None = None
    max_gen_toks: int | None = None

    def prompt_tokens(self, shots: int | None = None) -> int:
        """Tokens of one prompt at ``shots`` few-shot examples (None: the task's default)."""
        return self.question_tokens + self.shot_tokens * (self.shots if shots is None else int(shots))


def _tokens(chars: float) -> int:
    return int(math.ceil(chars / CHARS_PER_TOKEN))


# Sizes of lm-eval's own tasks (lm_eval 0.4 task YAMLs) and of the suite's tasks that read their own
# dataset. Prompt tokens: characters / CHARS_PER_TOKEN, measured where the few-shot text ships with
# lm_eval (its YAMLs), else from the stated source.
STATED_TASKS: dict[str, StatedTask] = {
    # MMLU test: 14,042 questions over 57 subjects (Hendrycks et al., 2021; cais/mmlu test split), 4 choices
    # scored as the one-token continuations " A".." D" (lm_eval/tasks/mmlu/default/_default_template_yaml).
    # Prompt: 5-shot from the dev split, mean 3,212 characters a prompt (EvalScope's MMLU data statistics,
    # cais/mmlu 5-shot; min 985, max 14,626): 6 question blocks of ~535 characters.
    "mmlu": StatedTask("multiple_choice", 14042, _tokens(3212 / 6), _tokens(3212 / 6), 5, 4, 1),
    # BBH, lm-eval's group bbh_cot_fewshot: 27 tasks, 6,511 examples (Suzgun et al., 2022: 23 tasks of 250
    # examples less three smaller ones; lukaemon/bbh). 3 CoT shots inline in each
    # lm_eval/tasks/bbh/cot_fewshot/<task>.yaml, measured there: a shot 895 characters on average over the
    # 27 tasks, description + question 435 (the question taken as long as the shots' inputs); until-stops
    # "</s>", "Q", "\n\n" with max_gen_toks 1024 (_cot_fewshot_template_yaml).
    "bbh_cot_fewshot": StatedTask("generate_until", 6511, _tokens(435), _tokens(895), 3, max_gen_toks=1024),
    # GSM8K test: 1,319 problems (Cobbe et al., 2021; openai/gsm8k main). 8 CoT exemplars inline in
    # lm_eval/tasks/gsm8k/gsm8k-cot.yaml, measured there: 2,141 characters ("Q: ..\nA: ..\n\n", 268 a shot),
    # question 127 + "Q: \nA:"; until-stops "Q:", "</s>", "<|im_end|>", no max_gen_toks (lm-eval's 256).
    "gsm8k_cot": StatedTask("generate_until", 1319, _tokens(127 + 6), _tokens(2141 / 8), 8),
    # HumanEval: 164 problems (Chen et al., 2021; openai/openai_humaneval test), zero-shot, the prompt is the
    # signature and docstring (estimate: ~450 characters a prompt); until-stops "\nclass", "\ndef", "\n#",
    # "\nif", "\nprint" with max_gen_toks 1024 (lm_eval/tasks/humaneval/humaneval.yaml).
    "humaneval": StatedTask("generate_until", 164, _tokens(450), max_gen_toks=1024),
    # TyDi QA GoldP v1.1 dev: 5,077 questions in 9 languages (Clark et al., 2020; the hub's tydiqa
    # secondary_task validation split, num_examples 5077 in its dataset_info, 5,006,461 bytes: ~986 bytes a
    # row, mostly the passage); gs/lm_eval_tasks/tydiqa_goldp.yaml: the one demonstration (passage, question,
    # answer) is in the document, max_gen_toks 50. Estimate: 2 x 986 bytes + ~100 of instruction; at 4 bytes a
    # token in Latin scripts but ~1 token a byte where Llama-2 falls back to bytes (Bengali, Telugu: 782 of
    # the 5,077), ~0.35 tokens a byte over the mix: ~730 tokens.
    "tydiqa_goldp": StatedTask("generate_until", 5077, 730, max_gen_toks=50),
}


@dataclass(frozen=True)
class TaskWork:
    """One target task as a job runs it: ``n`` examples (after ``evaluation.limit``) of ``kind``;
    ``requests``: lm-eval's requests (examples x choices for multiple choice); ``prompt_tokens`` a
    prompt; ``max_gen_toks`` the generation limit (generation only); ``answer_tokens`` a scored
    continuation (None: up to the likelihood cap); ``note``: what was assumed, if anything."""

    target: str
    task: str
    kind: str
    n: int
    prompt_tokens: int
    choices: int = 1
    max_gen_toks: int = 0
    answer_tokens: int | None = None
    fluency: bool = False
    note: str = ""

    @property
    def requests(self) -> int:
        return self.n * (self.choices if self.kind == "multiple_choice" else 1)


def split_size(config: dict[str, Any], part: str, split: str) -> tuple[int, int]:
    """``(n, choices)`` of ``data.parts.<part>.<split>``: its own ``n``, else (a derived split
    ``{from: <split>, choices: k}``) the n of the split it comes from; ``choices``: the derived split's
    ``choices`` (1 for a drawn split). A ``reference`` split a part does not name is its test split's
    (:func:`gs.data.prepare.part_files`)."""
    from gs.data.prepare import REFERENCE_SPLIT
    from gs.io import InputError

    spec = (config["data"]["parts"].get(part) or {}) if "parts" in config.get("data", {}) else {}
    entry = spec.get(split)
    if entry is None and split == REFERENCE_SPLIT and "test" in spec:
        entry = spec["test"]  # gs.data.prepare.part_files: a part with a test split and no reference gets one
    if entry is None:
        raise InputError(f"data.parts.{part}: no split {split!r} (a target's task reads it)")
    choices = int(entry.get("choices", 1)) if "from" in entry else 1
    seen = {split}
    while "n" not in entry and "from" in entry and entry["from"] not in seen:
        seen.add(entry["from"])
        entry = spec.get(entry["from"]) or {}
    if "n" not in entry:
        raise InputError(f"data.parts.{part}.{split}: no 'n' (nor in the split it comes from)")
    return int(entry["n"]), choices


def task_work(config: dict[str, Any], spec: Any, prompt_tokens: int, limit: int | None = None) -> TaskWork:
    """The work of ``spec`` (a :class:`gs.evaluation.tasks.TaskSpec`): see the module docstring.
    ``prompt_tokens``: ``plan.prompt_tokens``, a suite task's prompt; ``limit``: ``evaluation.limit``
    (lm-eval's limit, per task)."""
    from gs.evaluation.tasks import read_task_yaml, suite_tasks

    suite = suite_tasks()
    yaml_cfg = read_task_yaml(suite[spec.task]) if spec.task in suite else {}
    note = ""
    if spec.part is not None:
        n, choices = split_size(config, spec.part, spec.split)
        kind = str(yaml_cfg.get("output_type", "generate_until"))
        if kind == "multiple_choice" and choices == 1:
            choices = 4  # gs.data.choices' default: the answer and 3 distractors
        prompt, answer, stated_gen = prompt_tokens, None, None
    elif spec.task in STATED_TASKS:
        st = STATED_TASKS[spec.task]
        n, kind, choices = st.n, st.kind, st.choices
        prompt, answer, stated_gen = st.prompt_tokens(spec.num_fewshot), st.answer_tokens, st.max_gen_toks
    else:
        n, kind, choices = UNKNOWN_EXAMPLES, str(yaml_cfg.get("output_type", "generate_until")), 1
        prompt, answer, stated_gen = prompt_tokens, None, None
        note = f"{spec.task}: size unknown: assumed {n} examples of {prompt} prompt tokens ({kind})"
    if kind not in KINDS:
        kind = "generate_until"
    if limit:
        n = min(n, int(limit))
    generation = yaml_cfg.get("generation_kwargs") or {}
    gen = spec.max_gen_toks or stated_gen or generation.get("max_gen_toks") or DEFAULT_MAX_GEN_TOKS
    return TaskWork(
        target=spec.target,
        task=spec.task,
        kind=kind,
        n=int(n),
        prompt_tokens=int(prompt),
        choices=int(choices),
        max_gen_toks=int(gen) if kind == "generate_until" else 0,
        answer_tokens=answer,
        fluency=bool(spec.fluency),
        note=note,
    )


def target_work(config: dict[str, Any], targets: list[str], prompt_tokens: int) -> list[TaskWork]:
    """:func:`task_work` of every task of ``targets`` (``gs.evaluation.tasks.task_specs``), capped by
    ``evaluation.limit``."""
    from gs.evaluation.tasks import task_specs

    limit = (config.get("evaluation") or {}).get("limit")
    return [task_work(config, spec, prompt_tokens, limit) for spec in task_specs(config["targets"], targets)]
