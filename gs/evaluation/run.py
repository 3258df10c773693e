"""Score a system (the base model, one expert, or experts behind a router) on the config's targets.

Every accuracy number comes from EleutherAI lm-eval (``lm_eval.simple_evaluate``), extended only at
its plugin points:

* the model: :class:`GSRoutedLM`, registered as ``gs-routed`` with ``@register_model``, wraps
  :class:`gs.evaluation.routed_model.RoutedLM`: greedy generation (``generate_until``), the log-likelihood
  of a continuation (``loglikelihood``, which lm-eval's ``multiple_choice`` tasks also use) and of a
  whole text (``loglikelihood_rolling``), all through the system's routing.
* the tasks: each target's lm-eval tasks (:mod:`gs.evaluation.tasks`): lm-eval's own (``mmlu``,
  ``gsm8k_cot``, ...) or YAMLs of ``gs/lm_eval_tasks/`` (the embedded default's generation, multiple-choice
  and likelihood tasks; TydiQA GoldP), loaded with ``TaskManager(include_path=...)`` from a per-run folder
  that points them at their data.

A task whose YAML says ``unsafe_code: true`` runs model-written code: :func:`code_execution_policy`
decides whether it runs here. After lm-eval, :func:`evaluate_system` adds one measure lm-eval has no
task for, where a task asks for it (``fluency: true``): the fluency of the generations, as the base
model's perplexity of each one (:mod:`gs.evaluation.fluency`), and writes one JSON per system.

CLI::

    python -m gs.evaluation.run --system '{"name": "base", "mode": "base", "model_dir": "resources/models/m"}' \\
        --data-dir results/data --targets '{"math": {"tasks": [{"task": "gs_math", "data": {...}}]}}' \\
        --limit 8 --params '{"batch_size": 8}' --seed 1234 --out results/eval/base.json
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lm_eval.api.registry import get_model

from gs.evaluation.fluency import fluency_scores, free_memory
from gs.evaluation.lm import DEFAULT_BATCH_SIZE, MODEL_NAME, ROUTED_PATH_ARGS, GSRoutedLM, jsonable, parse_json_arg
from gs.evaluation.tasks import (
    TaskSpec,
    check_known,
    suite_tasks,
    task_config,
    task_specs,
    task_yaml_path,
    write_task_dir,
)
from gs.io import InputError, run_cli, write_json

log = logging.getLogger(__name__)

METRIC_DESCRIPTIONS = {
    "exact_match": "1 if the completion's final number (GSM8K-style extraction: '#### n', \\boxed{}, "
    "'the answer is', else the last number) equals the gold answer, else 0; mean over examples",
    "exact_match_1pct": "1 if the completion's final number (same extraction as exact_match) is within 1% "
    "(relative) of the gold answer, a percentage also matching its fraction, else 0; mean over examples",
    "pass@1": "1 if the greedy completion passes the problem's unit tests in the sandbox, else 0; mean over examples",
    "constraint": "1 if the passage has exactly one paragraph per given sentence and each paragraph ends with "
    "its sentence, in order, else 0; mean over examples",
    "ending_match": "fraction of the given sentences that end their paragraph; mean over examples",
    "fluency_perplexity": "perplexity of the generated passages under the base model, unconditioned (only the "
    "BOS/EOS prefix token, windows as lm-eval's loglikelihood_rolling), token-weighted over passages "
    "(exp of total NLL / total tokens); lower is more fluent; empty passages excluded",
    "fluency_perplexity_median": "median over passages of each passage's perplexity under the base model "
    "(as fluency_perplexity); lower is more fluent",
    "acc": "1 if the choice of highest log-likelihood given the prompt is the gold one, else 0 (lm-eval's "
    "multiple_choice); mean over examples",
    "acc_norm": "as acc, each choice's log-likelihood divided by its length in bytes; mean over examples",
    "f1": "SQuAD token F1 of the answer against the best-matching gold answer; mean over examples",
    "bits_per_byte": "negative log2-likelihood of the held-out reference answers given their prompts, under the "
    "system (its routing and mixture), summed over examples and divided by their total UTF-8 bytes; lower is "
    "better",
}
#: Keys of a system (``--system``): where its parts are. All but ``name`` and ``model_dir`` optional.
SYSTEM_KEYS = (
    "name",
    "mode",
    "model_dir",
    "experts_dir",
    "router_dir",
    "warmup_dir",
    "features_path",
    "projector_path",
    "assignments_path",
    "params",
    "dtype",
    "device",
)
#: Keys of the evaluation settings (``--params``); see :func:`evaluate_system`.
PARAM_KEYS = (
    "batch_size",
    "batch_size_by_mode",
    "fluency",
    "dtype",
    "device",
    "inference",
    "likelihood",
    "run_code_without_bubblewrap",
)
#: The evaluation setting that lets gs_code's generated code run where bubblewrap does not work.
RUN_WITHOUT_BUBBLEWRAP = "run_code_without_bubblewrap"
#: Keys of the ``likelihood`` settings and the ``gs-routed`` model arguments they become.
LIKELIHOOD_ARGS = {
    "batch_size": "likelihood_batch_size",
    "max_answer_tokens": "max_answer_tokens",
    "chunk_tokens": "likelihood_chunk_tokens",
}


def generation_batch_size(system: dict[str, Any], params: dict[str, Any]) -> int:
    """Prompts generated for at once: ``batch_size_by_mode[mode]`` for the system's mode, else ``batch_size``
    (default :data:`DEFAULT_BATCH_SIZE`). An ensemble holds every expert's cache a prompt, so it may need less."""
    by_mode = params.get("batch_size_by_mode") or {}
    return int(by_mode.get(system.get("mode", "base"), params.get("batch_size", DEFAULT_BATCH_SIZE)))


# ---------------------------------------------------------------------------------------------------
# The lm-eval model
# ---------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------
# Running a system
# ---------------------------------------------------------------------------------------------------


def check_system(system: dict[str, Any]) -> dict[str, Any]:
    """Validate a system spec (see :data:`SYSTEM_KEYS`); unknown keys are warned about, not used."""
    if not isinstance(system, dict):
        raise InputError("system: expected a JSON object")
    for key in ("name", "model_dir"):
        if not system.get(key):
            raise InputError(f"system: {key!r} missing")
    unknown = sorted(set(system) - set(SYSTEM_KEYS))
    if unknown:
        log.warning("system %s: ignoring unknown keys %s", system["name"], unknown)
    if "params" in system and not isinstance(system["params"], dict):
        raise InputError("system: 'params' must be a JSON object")
    return system


def model_args_for(system: dict[str, Any], params: dict[str, Any], seed: int) -> dict[str, Any]:
    """``gs-routed`` model arguments of a system: its paths, RoutedLM params, dtype and seed.

    RoutedLM parameters are ``params["inference"]`` (shared by all systems) updated with the
    system's own ``params``.
    """
    args: dict[str, Any] = {
        "model_dir": str(system["model_dir"]),
        "mode": system.get("mode", "base"),
        "seed": int(seed),
    }
    dtype = system.get("dtype") or params.get("dtype")
    if dtype:  # else the prepared folder's own dtype
        args["dtype"] = str(dtype)
    likelihood = params.get("likelihood") or {}
    if not isinstance(likelihood, dict) or set(likelihood) - set(LIKELIHOOD_ARGS):
        raise InputError(
            f"evaluation likelihood: expected an object with keys {sorted(LIKELIHOOD_ARGS)}, got {likelihood!r}"
        )
    args.update({LIKELIHOOD_ARGS[k]: v for k, v in likelihood.items() if v is not None})
    args.update({k: str(system[k]) for k in ROUTED_PATH_ARGS if system.get(k)})
    routed_params = {**(params.get("inference") or {}), **(system.get("params") or {})}
    if routed_params:
        args["params"] = routed_params
    # dtype auto is decided here, so the report records the dtype that ran (a missing folder fails on load).
    if args.get("dtype", "auto") == "auto" and Path(system["model_dir"]).is_dir():
        from gs.models.load import model_settings, run_dtype

        if args.get("dtype") or model_settings(system["model_dir"])["dtype"] == "auto":
            args["dtype"] = run_dtype(system["model_dir"], "auto", system.get("device") or params.get("device"))
    return args


def _split_metric_key(key: str) -> tuple[str, str]:
    """lm-eval's result key ``"metric,filter"`` into its parts."""
    metric, _, filt = key.partition(",")
    return metric, filt


def _number(value: Any) -> float | None:
    """A finite float, or ``None`` (lm-eval writes ``"N/A"`` for a stderr it did not compute)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _sample_score(metric: str, value: Any) -> float | None:
    """One example's score; a ``bits_per_byte`` item is lm-eval's ``(loglikelihood, bytes)`` pair."""
    if metric == "bits_per_byte" and isinstance(value, list | tuple) and len(value) == 2:
        logprob, n_bytes = (_number(v) for v in value)
        return -logprob / (n_bytes * math.log(2)) if logprob is not None and n_bytes else None
    return _number(value)


def leaf_tasks(task: str, results: dict[str, Any]) -> list[str]:
    """The tasks lm-eval ran under ``task``: itself, or a group's tasks (subgroups expanded), in order."""
    subtasks = results.get("group_subtasks", {}).get(task)
    if not subtasks:
        return [task]
    return [leaf for sub in subtasks for leaf in leaf_tasks(sub, results)]


def primary_metric(task: str, results: dict[str, Any], wanted: str | None = None) -> tuple[str, str]:
    """``(metric, filter)`` a task is ranked by: ``wanted`` (any filter, the first), else its first metric."""
    for key in results["results"].get(task, {}):
        if "," not in key:
            continue  # "alias" and the like
        metric, filt = _split_metric_key(key)
        if not metric.endswith("_stderr") and (wanted is None or metric == wanted):
            return metric, filt
    raise InputError(f"task {task}: lm-eval reports no metric {wanted!r}" if wanted else f"task {task}: no metric")


def _sample(task: str, s: dict[str, Any], output_type: str, lm: GSRoutedLM) -> dict[str, Any]:
    """One logged example: its prompt, what the model answered (by output type), its scores and routing."""
    doc = s.get("doc") or {}
    filtered = s.get("filtered_resps") or [""]
    sample: dict[str, Any] = {"doc_id": s["doc_id"], "id": doc.get("id"), "prompt": s["arguments"][0][0]}
    if task != (s.get("task_name") or task):
        sample["subtask"] = s["task_name"]
    if output_type == "loglikelihood":
        logprob, greedy = filtered[0]
        sample.update(loglikelihood=_number(logprob), is_greedy=bool(greedy))
        sample.update(lm.likelihood_tokens.get((task, s["doc_id"]), {}))
    elif output_type == "multiple_choice":
        sample["choice_loglikelihoods"] = [_number(r[0] if isinstance(r, list | tuple) else r) for r in filtered]
    elif output_type == "loglikelihood_rolling":
        sample["loglikelihood"] = _number(filtered[0])
    else:
        sample["completion"] = filtered[0] if isinstance(filtered[0], str) else str(filtered[0])
    sample.update(
        target=s.get("target"),
        scores={m: _sample_score(m, s.get(m)) for m in s.get("metrics", [])},
        routing=lm.routing_log.get((s.get("task_name") or task, s["doc_id"])),
    )
    return sample


def _task_report(spec: TaskSpec, results: dict[str, Any], lm: GSRoutedLM) -> dict[str, Any]:
    """One target task's entry: its primary metric, all metrics by name, counts, settings, timing and the
    examples (of every task under a group, each marked with its ``subtask``)."""
    task = spec.task
    metric, primary_filter = primary_metric(task, results, spec.metric)
    raw = results["results"].get(task, {})
    metrics: dict[str, float | None] = {}
    stderr: dict[str, float | None] = {}
    for key, value in raw.items():
        if "," not in key:
            continue
        name, filt = _split_metric_key(key)
        if filt != primary_filter:
            continue  # the primary filter's numbers; the others stay in lm-eval's own output
        if name.endswith("_stderr"):
            stderr[name.removesuffix("_stderr")] = _number(value)
        else:
            metrics[name] = _number(value)
    leaves = leaf_tasks(task, results)
    higher = results.get("higher_is_better", {}).get(task) or results.get("higher_is_better", {}).get(leaves[0], {})
    samples, n, available = [], 0, 0
    output_types = set()
    for leaf in leaves:
        config = results.get("configs", {}).get(leaf, {})
        output_types.add(config.get("output_type", "generate_until"))
        counts = results.get("n-samples", {}).get(leaf, {})
        n += int(counts.get("effective", 0))
        available += int(counts.get("original", counts.get("effective", 0)))
        for s in results.get("samples", {}).get(leaf, []):
            if s.get("filter", primary_filter) != primary_filter:
                continue
            samples.append(_sample(task, {**s, "task_name": leaf}, config.get("output_type", ""), lm))
    output_type = "/".join(sorted(output_types))
    seconds = sum(lm.generation_seconds.get(leaf, 0.0) for leaf in leaves)
    new_tokens = sum(lm.generated_tokens.get(leaf, 0) for leaf in leaves)
    extra: dict[str, Any] = {}
    if output_type == "loglikelihood":
        extra["likelihood"] = _likelihood_summary(task, samples, lm)
    if len(leaves) > 1:
        extra["subtasks"] = leaves
    return {
        **extra,
        "target": spec.target,
        "output_type": output_type,
        "primary": {"metric": metric, "filter": primary_filter},
        "metrics": metrics,
        "stderr": stderr,
        "metric_info": {
            m: {"higher_is_better": higher.get(m), "description": METRIC_DESCRIPTIONS.get(m, "")} for m in metrics
        },
        "filter": primary_filter,
        "n_examples": n,
        "n_examples_available": available,
        "num_fewshot": results.get("n-shot", {}).get(leaves[0]),
        "generation_kwargs": results.get("configs", {}).get(leaves[0], {}).get("generation_kwargs"),
        "timing": {
            # RoutedLM time, routing included (the part spent routing is routing_s).
            "generation_s": round(seconds, 3),
            "routing_s": round(sum(lm.routing_seconds.get(leaf, 0.0) for leaf in leaves), 3),
            "generation_s_per_example": round(seconds / n, 3) if n else None,
            "new_tokens": new_tokens,
            "new_tokens_per_s": round(new_tokens / seconds, 2) if seconds > 0 else None,
        },
        "samples": samples,
    }


def _likelihood_summary(task: str, samples: list[dict[str, Any]], lm: GSRoutedLM) -> dict[str, Any]:
    """A likelihood task's scoring settings and how many answers the ``max_answer_tokens`` cap cut.

    lm-eval's bits per byte divides by the bytes of the WHOLE answers; a cut answer contributes the
    log-probability of its first tokens only, so any ``n_truncated > 0`` makes bits per byte too low.
    """
    counted = [s for s in samples if "n_tokens" in s]
    truncated = sum(s["n_tokens"] < s["answer_tokens"] for s in counted)
    if truncated:
        log.warning(
            "%s: %d of %d answers were cut to max_answer_tokens=%s; bits_per_byte counts all their bytes "
            "but only the scored tokens' log-probabilities, so it is too low",
            task,
            truncated,
            len(counted),
            lm.likelihood_kwargs.get("max_answer_tokens"),
        )
    return {
        "batch_size": lm.likelihood_batch_size,
        "max_answer_tokens": lm.likelihood_kwargs.get("max_answer_tokens"),
        "chunk_tokens": lm.likelihood_kwargs.get("chunk_tokens"),
        "n_truncated": truncated,
        "tokens_scored": sum(s["n_tokens"] for s in counted),
        "answer_tokens": sum(s["answer_tokens"] for s in counted),
    }


def code_execution_policy(params: dict[str, Any]) -> tuple[bool, str]:
    """Whether gs_code's generated code is run here, and one line saying how, or why not.

    It runs inside bubblewrap where :func:`gs.evaluation.sandbox.isolation` says the namespaces work (the
    description is that isolation's). Without them it runs only if ``params`` (the evaluation
    settings) has ``run_code_without_bubblewrap: true``, with the in-process guards alone (which C
    code gets past); otherwise it is not run and the description is the reason, for the report.
    """
    from gs.evaluation.sandbox import isolation as sandbox_isolation

    allowed = params.get(RUN_WITHOUT_BUBBLEWRAP, False)
    if not isinstance(allowed, bool):
        raise InputError(f"evaluation.{RUN_WITHOUT_BUBBLEWRAP} must be true or false, got {allowed!r}")
    iso = sandbox_isolation()
    if iso.namespaces:
        return True, iso.description
    why = iso.description.removeprefix("none: ")
    if allowed:
        return True, f"none: {why}; in-process guards only (evaluation.{RUN_WITHOUT_BUBBLEWRAP}: true)"
    return False, (
        f"bubblewrap unavailable ({why}); set evaluation.{RUN_WITHOUT_BUBBLEWRAP}: true to run it with the "
        "in-process guards only"
    )


@contextlib.contextmanager
def _code_execution(run_code: bool, *, without_bubblewrap: bool) -> Iterator[None]:
    """While lm-eval runs: where code runs, lm-eval's and Hugging Face's opt-in ``HF_ALLOW_CODE_EVAL=1``
    in this process, and where the config allows it, :func:`gs.evaluation.sandbox.allow_without_bubblewrap`; both
    restored afterwards."""
    if not run_code:
        yield
        return
    from gs.evaluation.sandbox import ALLOW_ENV_VAR, allow_without_bubblewrap

    previous_env = os.environ.get(ALLOW_ENV_VAR)
    previous_allowed = allow_without_bubblewrap(without_bubblewrap)
    os.environ[ALLOW_ENV_VAR] = "1"
    try:
        yield
    finally:
        allow_without_bubblewrap(previous_allowed)
        if previous_env is None:
            os.environ.pop(ALLOW_ENV_VAR, None)
        else:
            os.environ[ALLOW_ENV_VAR] = previous_env


def _hooks_unavailable(spec: TaskSpec, index: dict[str, Any]) -> str | None:
    """Why an lm-eval task's ``!function`` hooks cannot be imported here, or ``None`` when they can.

    lm-eval's ``humaneval`` imports a module that calls ``evaluate.load("code_eval")``, a metric script
    fetched from the hub: offline, with no cached copy, loading the task fails, and with it every task
    of the run. Such a task is left out (reported ``not_run``) instead.
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        load_yaml(str(task_yaml_path(spec, index)), resolve_func=True)
    except Exception as e:  # noqa: BLE001 - any import failure of a task's hooks (network, missing module)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return f"lm-eval cannot load the task's hooks here ({type(e).__name__}: {reason})"
    return None


def _not_run_report(spec: TaskSpec, reason: str, index: dict[str, Any]) -> dict[str, Any]:
    """A task's entry when it was left out of the lm-eval run: why, the metric it would be ranked by (the
    spec's, else its YAML's first), and no value, example or sample."""
    listed = [m.get("metric") for m in task_config(spec, index).get("metric_list") or [] if isinstance(m, dict)]
    # A metric given as a hook (``!function utils.pass_at_k``) is named by its function, as lm-eval names it.
    metric = spec.metric or next((str(m).removeprefix("!function ").rsplit(".", 1)[-1] for m in listed if m), None)
    return {
        "target": spec.target,
        "not_run": reason,
        "primary_metric": metric,
        "metrics": {},
        "n_examples": 0,
        "samples": [],
    }


def chat_template_tasks(include_path: str, include_defaults: bool) -> Any:
    """An lm-eval ``TaskManager`` whose tasks build their requests as lm-eval builds them with
    ``apply_chat_template``: a multiple-choice continuation has no target delimiter unless the task
    has a ``gen_prefix`` that does not end in whitespace (lm-eval ``ConfigurableTask.construct_requests``).

    gs-routed applies the model's chat template itself (it routes on the user message, so lm-eval must
    hand it the message, not the rendered template), so the runs go without lm-eval's
    ``apply_chat_template`` and this keeps the continuations what lm-eval's ``hf`` model scores with it.
    """
    from lm_eval.tasks import TaskManager

    class ChatTemplateTasks(TaskManager):
        def load(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            loaded = super().load(*args, **kwargs)
            for task in loaded["tasks"].values():
                prefix = task.get_config("gen_prefix")
                if task.get_config("output_type") == "multiple_choice" and not (prefix and not prefix[-1].isspace()):
                    task.set_config(key="target_delimiter", value="")
            return loaded

    return ChatTemplateTasks(include_path=include_path, include_defaults=include_defaults)


def _merge(into: dict[str, Any], results: dict[str, Any]) -> None:
    """Add one ``simple_evaluate`` call's per-task entries to ``into`` (calls differ in their shot counts)."""
    for key in (
        "results",
        "samples",
        "configs",
        "higher_is_better",
        "n-samples",
        "n-shot",
        "group_subtasks",
        "versions",
    ):
        into.setdefault(key, {}).update(results.get(key) or {})


def _add_fluency(entry: dict[str, Any], system: dict[str, Any], model_args: dict[str, Any], device: Any) -> None:
    """The base model's perplexity of each generated text of a task (``fluency: true``), into its entry."""
    per_text, summary = fluency_scores(
        system["model_dir"], [s["completion"] for s in entry["samples"]], dtype=model_args.get("dtype"), device=device
    )
    for sample, ppl in zip(entry["samples"], per_text, strict=True):
        sample["scores"]["perplexity"] = ppl
    for name in ("fluency_perplexity", "fluency_perplexity_median"):
        entry["metrics"][name] = summary[name]
        entry["metric_info"][name] = {"higher_is_better": False, "description": METRIC_DESCRIPTIONS[name]}
    entry["fluency"] = {
        "model_dir": str(system["model_dir"]),
        "conditioned_on": f"nothing: the text alone, after the prefix token {summary['prefix_token']!r}",
        "n_passages": summary["n_passages"],
        "n_empty": summary["n_empty"],
    }


def evaluate_system(
    system: dict[str, Any],
    targets: dict[str, Any],
    data_dir: str | os.PathLike,
    *,
    limit: int | None = None,
    seed: int = 0,
    out_json: str | os.PathLike | None = None,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score ``system`` on every task of ``targets`` with lm-eval, add fluency, and write ``out_json``.

    ``system``: ``{"name", "mode", "model_dir", ...paths, "params"}`` (:data:`SYSTEM_KEYS`).
    ``targets``: the config's ``targets`` entries to score (:func:`gs.evaluation.tasks.task_specs`).
    ``params`` (the evaluation settings): ``batch_size`` (generation batch, default 8; ``batch_size_by_mode``
    overrides it for the system's mode), ``fluency``
    (default true: the ``fluency: true`` tasks get it), ``dtype``/``device`` (defaults for systems that
    name none), ``inference`` (RoutedLM parameters shared by all systems), ``run_code_without_bubblewrap``
    (default false: see :func:`code_execution_policy`). ``limit``: examples per task (the first ones).
    Seeds Python, NumPy and torch through lm-eval, and RoutedLM. Tasks with different ``num_fewshot`` run
    in separate ``simple_evaluate`` calls on the same loaded model.

    A task that runs code (``unsafe_code: true``) where :func:`code_execution_policy` says no is left out
    and reported as ``tasks[task] = {"not_run": reason, ...}`` with ``primary[task]["value"]`` null;
    ``code_sandbox`` says how code was isolated, or that it was not run.

    Returns the report (also written atomically to ``out_json`` when given): per task, its target, the
    metrics by name with stderr and descriptions, the number of examples, the samples (prompt, answer,
    scores, routing) and timing; at the top, the primary metric of each task.
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    params = dict(params or {})
    unknown = sorted(set(params) - set(PARAM_KEYS))
    if unknown:
        log.warning("evaluation params: ignoring unknown keys %s (known: %s)", unknown, ", ".join(PARAM_KEYS))
    check_system(system)
    specs = task_specs(targets)
    for spec in specs:
        if spec.data is not None and not (Path(data_dir) / spec.data).is_file():
            raise InputError(f"{Path(data_dir) / spec.data}: data of task {spec.task} (target {spec.target}) not found")
        if spec.dataset_path is not None and not Path(spec.dataset_path).exists():
            raise InputError(f"{spec.dataset_path}: dataset_path of task {spec.task} (target {spec.target}) not found")
    if limit is not None and int(limit) < 1:
        raise InputError(f"limit must be a positive integer, got {limit}")
    # lm-eval's own index (thousands of YAMLs, ~7 s) only when a target names one of its tasks.
    lm_eval_specs = [s for s in specs if s.task not in suite_tasks()]
    index: dict[str, Any] = {}
    groups: list[str] = []
    if lm_eval_specs:
        defaults = TaskManager()
        index = dict(defaults._index)
        groups = list(defaults.all_groups)
        check_known(lm_eval_specs, list(index), groups)

    code_sandbox = None  # how generated code is isolated, or why it was not run
    unsafe = [s for s in specs if task_config(s, index).get("unsafe_code")]
    run_code, not_run = bool(unsafe), {}
    if unsafe:
        run_code, how = code_execution_policy(params)
        code_sandbox = how if run_code else f"not run: {how}"
        if not run_code:
            for spec in unsafe:
                not_run[spec.task] = how
                log.warning("%s: not run: %s", spec.task, how)
        else:
            for spec in unsafe:
                broken = None if spec.suite else _hooks_unavailable(spec, index)
                if broken:
                    not_run[spec.task] = broken
                    log.warning("%s: not run: %s", spec.task, broken)
            if len(not_run) == len(unsafe):
                run_code = False
                code_sandbox = "not run: " + "; ".join(f"{t}: {why}" for t, why in not_run.items())
    run_specs = [s for s in specs if s.task not in not_run]

    t_start = time.perf_counter()
    model_args = model_args_for(system, params, seed)
    device = system.get("device") or params.get("device")
    ran: dict[str, Any] = {}
    load_s = eval_s = 0.0
    results: dict[str, Any] = {}
    if run_specs:  # empty when only code tasks were asked for and code does not run here
        without_bubblewrap = run_code and params.get(RUN_WITHOUT_BUBBLEWRAP) is True
        with (
            tempfile.TemporaryDirectory(prefix="gs_lm_eval_tasks.") as tmp,
            _code_execution(run_code, without_bubblewrap=without_bubblewrap),
        ):
            task_dir = write_task_dir(run_specs, data_dir, tmp, index)
            manager = chat_template_tasks(str(task_dir), bool(lm_eval_specs))
            t0 = time.perf_counter()
            # Built through lm-eval's registry, then handed to simple_evaluate as an LM object (which it
            # accepts) so that the per-request routing it records can be read back afterwards.
            lm = get_model(MODEL_NAME).create_from_arg_obj(
                model_args,
                {"batch_size": generation_batch_size(system, params), "device": device},
            )
            load_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for shots in dict.fromkeys(s.num_fewshot for s in run_specs):
                _merge(
                    results,
                    lm_eval.simple_evaluate(
                        model=lm,
                        tasks=[s.task for s in run_specs if s.num_fewshot == shots],
                        num_fewshot=shots,
                        task_manager=manager,
                        limit=limit,
                        log_samples=True,
                        random_seed=seed,
                        numpy_random_seed=seed,
                        torch_random_seed=seed,
                        fewshot_random_seed=seed,
                        confirm_run_unsafe_code=run_code,
                    ),
                )
            eval_s = time.perf_counter() - t0
        ran = {s.task: _task_report(s, results, lm) for s in run_specs}
        # Free the routed model (and its experts) before the base model is loaded for fluency.
        lm.routed = None
        del lm
        free_memory()
    report_tasks = {
        s.task: _not_run_report(s, not_run[s.task], index) if s.task in not_run else ran[s.task] for s in specs
    }
    fluency_s = 0.0
    if params.get("fluency", True):
        t0 = time.perf_counter()
        for spec in specs:
            if spec.fluency and spec.task not in not_run:
                _add_fluency(report_tasks[spec.task], system, model_args, device)
        fluency_s = time.perf_counter() - t0

    report = {
        "system": {k: system[k] for k in SYSTEM_KEYS if k in system},
        # A list, not a mapping: the JSON is written with sorted keys, and the tables keep the config's order.
        "targets": [
            {"target": t, "tasks": [s.task for s in specs if s.target == t]}
            for t in dict.fromkeys(s.target for s in specs)
        ],
        "primary": {
            task: {"metric": r["primary"]["metric"], "value": r["metrics"].get(r["primary"]["metric"])}
            if "not_run" not in r
            else {"metric": r["primary_metric"], "value": None, "not_run": r["not_run"]}
            for task, r in report_tasks.items()
        },
        "tasks": report_tasks,
        "data_dir": str(data_dir),
        "limit": limit,
        "seed": seed,
        "params": params,
        "code_sandbox": code_sandbox,
        "lm_eval": {
            "version": getattr(lm_eval, "__version__", None),
            "model": MODEL_NAME,
            "model_args": model_args,
            "task_versions": results.get("versions", {}),
            "n_samples": results.get("n-samples", {}),
            "n_shot": results.get("n-shot", {}),
        },
        "timing": {
            "total_s": round(time.perf_counter() - t_start, 3),
            "model_load_s": round(load_s, 3),
            "lm_eval_s": round(eval_s, 3),
            "fluency_s": round(fluency_s, 3),
        },
    }
    report = jsonable(report)
    if out_json is not None:
        write_json(out_json, report)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Score a system on the config's targets with lm-eval.")
    parser.add_argument(
        "--system", required=True, help="JSON object or file: name, mode, model_dir, the mode's paths, params"
    )
    parser.add_argument("--data-dir", required=True, help="folder of the prepared parts (<part>/<split>.jsonl)")
    parser.add_argument("--targets", required=True, help="the targets to score, as in the config, JSON object or file")
    parser.add_argument("--limit", type=int, default=None, help="examples per task (the first ones)")
    parser.add_argument("--params", default="{}", help="evaluation settings as a JSON object or file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    system = parse_json_arg(args.system, "--system")
    params = parse_json_arg(args.params, "--params")
    targets = parse_json_arg(args.targets, "--targets")
    report = evaluate_system(
        system, targets, args.data_dir, limit=args.limit, seed=args.seed, out_json=args.out, params=params
    )
    for task, primary in report["primary"].items():
        value = "not run" if "not_run" in primary else primary["value"]
        print(f"{system['name']}\t{task}\t{primary['metric']}\t{value}")


if __name__ == "__main__":
    run_cli(main)
