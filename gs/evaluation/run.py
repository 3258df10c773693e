"""Score a system (the base model, one expert, or experts behind a router) on the four domains.

Every accuracy number comes from EleutherAI lm-eval (``lm_eval.simple_evaluate``), extended only at
its plugin points:

* the model: :class:`GSRoutedLM`, registered as ``gs-routed`` with ``@register_model``, wraps
  :class:`gs.evaluation.routed_model.RoutedLM`: greedy generation (``generate_until``) and the log-likelihood of a
  continuation (``loglikelihood``), both through the system's routing.
* the tasks: ``gs/lm_eval_tasks/``, loaded with ``TaskManager(include_path=...)``:

  - generation (group ``gs_all``): ``gs_math``, ``gs_code``, ``gs_finance``, ``gs_writing``, scored
    by ``!function`` hooks around :mod:`gs.evaluation.metrics` (exact match, sandboxed pass@1, the writing
    constraint);
  - likelihood (group ``gs_likelihood``): ``gs_<domain>_likelihood``, the bits per byte of each
    held-out reference answer given its prompt (lm-eval's ``bits_per_byte`` aggregation). It
    separates systems when a small model's generations all score 0.

  The packaged YAMLs read ``results/data/<domain>/{test,reference}.jsonl`` relative to the workflow
  root; :func:`write_task_dir` writes per-run YAMLs that ``include:`` them and point at absolute
  paths under any data folder.

After lm-eval, :func:`evaluate_system` adds one measure lm-eval has no task for: the fluency of the
writing passages, as the base model's perplexity of each generated passage (see
:func:`passage_nll`), and writes one JSON per system.

CLI::

    python -m gs.evaluation.run --system '{"name": "base", "mode": "base", "model_dir": "resources/models/m"}' \\
        --data-dir results/data --tasks gs_math gs_code gs_finance gs_writing --limit 8 \\
        --params '{"batch_size": 8}' --seed 1234 --out results/eval/base.json
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lm_eval.api.registry import get_model

from gs.evaluation.fluency import fluency_scores, free_memory
from gs.evaluation.lm import DEFAULT_BATCH_SIZE, MODEL_NAME, ROUTED_PATH_ARGS, GSRoutedLM, jsonable, parse_json_arg
from gs.evaluation.tasks import (
    LIKELIHOOD_TASKS,
    TASK_DOMAINS,
    TASK_SPLIT,
    expand_tasks,
    write_task_dir,
)
from gs.io import InputError, run_cli, write_json

log = logging.getLogger(__name__)

#: The metric each task is ranked by (the others are reported alongside).
PRIMARY_METRIC = {
    "gs_math": "exact_match",
    "gs_code": "pass@1",
    "gs_finance": "exact_match_1pct",
    "gs_writing": "constraint",
    **dict.fromkeys(LIKELIHOOD_TASKS, "bits_per_byte"),
}
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
    "max_gen_toks",
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


def _task_report(task: str, results: dict[str, Any], lm: GSRoutedLM) -> dict[str, Any]:
    """One task's entry of the output: metrics by name, counts, settings, timing and samples."""
    raw = results["results"].get(task, {})
    metrics: dict[str, float | None] = {}
    stderr: dict[str, float | None] = {}
    filters: set[str] = set()
    for key, value in raw.items():
        if "," not in key:
            continue  # "alias" and the like
        metric, filt = _split_metric_key(key)
        filters.add(filt)
        if metric.endswith("_stderr"):
            stderr[metric.removesuffix("_stderr")] = _number(value)
        else:
            metrics[metric] = _number(value)
    higher = results.get("higher_is_better", {}).get(task, {})
    counts = results.get("n-samples", {}).get(task, {})
    n = int(counts.get("effective", 0))
    samples = []
    for s in results.get("samples", {}).get(task, []):
        doc = s.get("doc") or {}
        filtered = s.get("filtered_resps") or [""]
        sample: dict[str, Any] = {"doc_id": s["doc_id"], "id": doc.get("id"), "prompt": s["arguments"][0][0]}
        if task in LIKELIHOOD_TASKS:
            logprob, greedy = filtered[0]
            sample.update(loglikelihood=_number(logprob), is_greedy=bool(greedy))
            sample.update(lm.likelihood_tokens.get((task, s["doc_id"]), {}))
        else:
            sample["completion"] = filtered[0] if isinstance(filtered[0], str) else str(filtered[0])
        sample.update(
            target=s.get("target"),
            scores={m: _sample_score(m, s.get(m)) for m in s.get("metrics", [])},
            routing=lm.routing_log.get((task, s["doc_id"])),
        )
        samples.append(sample)
    config = results.get("configs", {}).get(task, {})
    seconds, new_tokens = lm.generation_seconds.get(task, 0.0), lm.generated_tokens.get(task, 0)
    extra: dict[str, Any] = {}
    if task in LIKELIHOOD_TASKS:
        extra["likelihood"] = _likelihood_summary(task, samples, lm)
    return {
        **extra,
        "domain": TASK_DOMAINS.get(task),
        "metrics": metrics,
        "stderr": stderr,
        "metric_info": {
            m: {"higher_is_better": higher.get(m), "description": METRIC_DESCRIPTIONS.get(m, "")} for m in metrics
        },
        "filter": ",".join(sorted(filters)),
        "n_examples": n,
        "n_examples_available": int(counts.get("original", n)),
        "generation_kwargs": config.get("generation_kwargs"),
        "timing": {
            # RoutedLM.generate time, routing included (the part spent routing is routing_s).
            "generation_s": round(seconds, 3),
            "routing_s": round(lm.routing_seconds.get(task, 0.0), 3),
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


def _not_run_report(task: str, reason: str) -> dict[str, Any]:
    """A task's entry when it was left out of the lm-eval run: why, and no metric, example or sample."""
    return {"domain": TASK_DOMAINS.get(task), "not_run": reason, "metrics": {}, "n_examples": 0, "samples": []}


def evaluate_system(
    system: dict[str, Any],
    tasks: Sequence[str],
    data_dir: str | os.PathLike,
    *,
    limit: int | None = None,
    seed: int = 0,
    out_json: str | os.PathLike | None = None,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score ``system`` on ``tasks`` with lm-eval, add writing fluency, and write ``out_json``.

    ``system``: ``{"name", "mode", "model_dir", ...paths, "params"}`` (:data:`SYSTEM_KEYS`).
    ``params`` (the evaluation settings): ``batch_size`` (generation batch, default 8),
    ``max_gen_toks`` (an int, or by task/domain: overrides the task YAMLs), ``fluency`` (default
    true), ``dtype``/``device`` (defaults for systems that name none), ``inference`` (RoutedLM
    parameters shared by all systems), ``run_code_without_bubblewrap`` (default false: see
    :func:`code_execution_policy`). ``limit``: examples per task (the first ones). Seeds Python,
    NumPy and torch through lm-eval, and RoutedLM.

    gs_code's pass@1 runs the model's code: where :func:`code_execution_policy` says no, the task is
    left out of the lm-eval run and reported as ``tasks.gs_code = {"not_run": reason, ...}`` with
    ``primary.gs_code.value`` null; ``code_sandbox`` says how code was isolated, or that it was not run.

    Returns the report (also written atomically to ``out_json`` when given): per task, the metrics
    by name with stderr and descriptions, the number of examples, the generation samples (prompt,
    completion, scores, routing) and timing; at the top, the primary metric of each task.
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    params = dict(params or {})
    unknown = sorted(set(params) - set(PARAM_KEYS))
    if unknown:
        log.warning("evaluation params: ignoring unknown keys %s (known: %s)", unknown, ", ".join(PARAM_KEYS))
    check_system(system)
    leaves = expand_tasks(tasks)
    for task in leaves:
        path = Path(data_dir) / TASK_DOMAINS[task] / f"{TASK_SPLIT[task]}.jsonl"
        if not path.is_file():
            raise InputError(f"{path}: {TASK_SPLIT[task]} split of {task} not found")
    if limit is not None and int(limit) < 1:
        raise InputError(f"limit must be a positive integer, got {limit}")
    code_sandbox = None  # how generated code is isolated, or why it was not run
    run_code, not_run = "gs_code" in leaves, {}
    if run_code:
        run_code, how = code_execution_policy(params)
        code_sandbox = how if run_code else f"not run: {how}"
        if not run_code:
            not_run["gs_code"] = how
            log.warning("gs_code: pass@1 not run: %s", how)
    run_tasks = [t for t in leaves if t not in not_run] if not_run else list(tasks)

    t_start = time.perf_counter()
    model_args = model_args_for(system, params, seed)
    device = system.get("device") or params.get("device")
    ran: dict[str, Any] = {}
    load_s = eval_s = 0.0
    results: dict[str, Any] = {}
    if run_tasks:  # empty when only gs_code was asked for and it is not run
        without_bubblewrap = run_code and params.get(RUN_WITHOUT_BUBBLEWRAP) is True
        with (
            tempfile.TemporaryDirectory(prefix="gs_lm_eval_tasks.") as tmp,
            _code_execution(run_code, without_bubblewrap=without_bubblewrap),
        ):
            task_dir = write_task_dir(data_dir, tmp, max_gen_toks=params.get("max_gen_toks"))
            # include_defaults=False: only the gs_* tasks; indexing lm-eval's thousands of YAMLs takes time.
            manager = TaskManager(include_path=str(task_dir), include_defaults=False)
            t0 = time.perf_counter()
            # Built through lm-eval's registry, then handed to simple_evaluate as an LM object (which it
            # accepts) so that the per-request routing it records can be read back afterwards.
            lm = get_model(MODEL_NAME).create_from_arg_obj(
                model_args,
                {"batch_size": params.get("batch_size", DEFAULT_BATCH_SIZE), "device": device},
            )
            load_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            results = lm_eval.simple_evaluate(
                model=lm,
                tasks=run_tasks,
                task_manager=manager,
                limit=limit,
                log_samples=True,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
                confirm_run_unsafe_code=run_code,
            )
            eval_s = time.perf_counter() - t0
        ran = {t: _task_report(t, results, lm) for t in leaves if t not in not_run}
        # Free the routed model (and its experts) before the base model is loaded for fluency.
        lm.routed = None
        del lm
        free_memory()
    report_tasks = {t: _not_run_report(t, not_run[t]) if t in not_run else ran[t] for t in leaves}
    fluency_s = 0.0
    if "gs_writing" in report_tasks and params.get("fluency", True):
        t0 = time.perf_counter()
        writing = report_tasks["gs_writing"]
        per_passage, summary = fluency_scores(
            system["model_dir"],
            [s["completion"] for s in writing["samples"]],
            dtype=model_args.get("dtype"),
            device=device,
        )
        for sample, ppl in zip(writing["samples"], per_passage, strict=True):
            sample["scores"]["perplexity"] = ppl
        for name in ("fluency_perplexity", "fluency_perplexity_median"):
            writing["metrics"][name] = summary[name]
            writing["metric_info"][name] = {"higher_is_better": False, "description": METRIC_DESCRIPTIONS[name]}
        writing["fluency"] = {
            "model_dir": str(system["model_dir"]),
            "conditioned_on": f"nothing: the passage alone, after the prefix token {summary['prefix_token']!r}",
            "n_passages": summary["n_passages"],
            "n_empty": summary["n_empty"],
        }
        fluency_s = time.perf_counter() - t0

    report = {
        "system": {k: system[k] for k in SYSTEM_KEYS if k in system},
        "tasks_requested": list(tasks),
        "primary": {
            t: {"metric": PRIMARY_METRIC[t], "value": r["metrics"].get(PRIMARY_METRIC[t])}
            | ({"not_run": r["not_run"]} if "not_run" in r else {})
            for t, r in report_tasks.items()
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
    parser = argparse.ArgumentParser(description="Score a system on the gs_* lm-eval tasks.")
    parser.add_argument(
        "--system", required=True, help="JSON object or file: name, mode, model_dir, the mode's paths, params"
    )
    parser.add_argument("--data-dir", required=True, help="folder with <domain>/{test,reference}.jsonl")
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=["gs_all", "gs_likelihood"],
        help="gs_<domain> (generation) and gs_<domain>_likelihood, or the groups gs_all and gs_likelihood",
    )
    parser.add_argument("--limit", type=int, default=None, help="examples per task (the first ones)")
    parser.add_argument("--params", default="{}", help="evaluation settings as a JSON object or file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    system = parse_json_arg(args.system, "--system")
    params = parse_json_arg(args.params, "--params")
    report = evaluate_system(
        system, args.tasks, args.data_dir, limit=args.limit, seed=args.seed, out_json=args.out, params=params
    )
    for task, primary in report["primary"].items():
        value = "not run" if "not_run" in primary else primary["value"]
        print(f"{system['name']}\t{task}\t{primary['metric']}\t{value}")


if __name__ == "__main__":
    run_cli(main)
