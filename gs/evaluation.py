"""Score a system (the base model, one expert, or experts behind a router) on the four domains.

Every accuracy number comes from EleutherAI lm-eval (``lm_eval.simple_evaluate``), extended only at
its plugin points:

* the model: :class:`GSRoutedLM`, registered as ``gs-routed`` with ``@register_model``, wraps
  :class:`gs.inference.RoutedLM`: greedy generation (``generate_until``) and the log-likelihood of a
  continuation (``loglikelihood``), both through the system's routing.
* the tasks: ``gs/lm_eval_tasks/``, loaded with ``TaskManager(include_path=...)``:

  - generation (group ``gs_all``): ``gs_math``, ``gs_code``, ``gs_finance``, ``gs_writing``, scored
    by ``!function`` hooks around :mod:`gs.metrics` (exact match, sandboxed pass@1, the writing
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

    python -m gs.evaluation --system '{"name": "base", "mode": "base", "model_dir": "resources/models/m"}' \\
        --data-dir results/data --tasks gs_math gs_code gs_finance gs_writing --limit 8 \\
        --params '{"batch_size": 8}' --seed 1234 --out results/eval/base.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from lm_eval.api.model import LM
from lm_eval.api.registry import get_model, register_model

from gs.data import DOMAINS
from gs.io import InputError, parse_params, run_cli, write_json

log = logging.getLogger(__name__)

MODEL_NAME = "gs-routed"
TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"
GENERATION_TASKS = {f"gs_{d}": d for d in DOMAINS}
LIKELIHOOD_TASKS = {f"gs_{d}_likelihood": d for d in DOMAINS}
TASK_DOMAINS = {**GENERATION_TASKS, **LIKELIHOOD_TASKS}
#: The data file (``<data_dir>/<domain>/<split>.jsonl``) each task reads.
TASK_SPLIT = {**dict.fromkeys(GENERATION_TASKS, "test"), **dict.fromkeys(LIKELIHOOD_TASKS, "reference")}
GROUPS = {"gs_all": tuple(GENERATION_TASKS), "gs_likelihood": tuple(LIKELIHOOD_TASKS)}
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
ROUTED_PATH_ARGS = ("experts_dir", "router_dir", "warmup_dir", "features_path", "projector_path", "assignments_path")
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
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_GEN_TOKS = 256  # only for requests that name no limit; the gs_* tasks all do


# ---------------------------------------------------------------------------------------------------
# The lm-eval model
# ---------------------------------------------------------------------------------------------------


def parse_json_arg(value: Any, what: str) -> dict[str, Any]:
    """A JSON object given as a dict, as JSON text, or as the path of a JSON file; ``None`` is ``{}``."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return dict(value)
    if not isinstance(value, str):
        raise InputError(f"{what}: expected a JSON object, got {type(value).__name__}")
    text = value
    if not value.lstrip().startswith("{") and Path(value).is_file():
        text = Path(value).read_text(encoding="utf-8")
    return parse_params(text, what)


def _positive_arg(value: Any, name: str) -> int:
    """A model argument (int or digit string) as a positive int."""
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise InputError(f"gs-routed: {name} must be a positive integer, got {value!r}")
    return int(text)


def _batch_size(value: Any, max_batch_size: Any) -> int:
    """lm-eval's ``batch_size`` (int, digit string, or ``"auto"``) as a positive int."""
    if isinstance(value, str) and value.startswith("auto"):
        # No memory probing here: "auto" takes max_batch_size, else the default.
        return int(max_batch_size) if max_batch_size else DEFAULT_BATCH_SIZE
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise InputError(f"gs-routed: batch_size must be a positive integer or 'auto', got {value!r}") from None
    if size < 1:
        raise InputError(f"gs-routed: batch_size must be a positive integer, got {size}")
    return size


def generation_settings(gen_kwargs: dict[str, Any], default_max_gen_toks: int) -> tuple[list[str], int]:
    """Stop strings and token limit of one request's ``gen_kwargs``, as lm-eval's models read them.

    ``until`` may be a string or a list; the limit is ``max_gen_toks`` (lm-eval's name), else its
    aliases ``max_new_tokens``/``max_tokens``/``max_completion_tokens``. Sampling is refused: a
    RoutedLM decodes greedily, and silently ignoring ``do_sample=True`` would misreport the run.
    """
    if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature") or 0.0) > 0.0:
        raise InputError("gs-routed decodes greedily; do_sample=True / temperature > 0 is not supported")
    until = gen_kwargs.get("until") or []
    if isinstance(until, str):
        until = [until]
    if not isinstance(until, list | tuple) or not all(isinstance(s, str) for s in until):
        raise InputError(f"gs-routed: 'until' must be a string or a list of strings, got {until!r}")
    limit = default_max_gen_toks
    for key in ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens"):
        if gen_kwargs.get(key) is not None:
            limit = int(gen_kwargs[key])
            break
    if limit < 1:
        raise InputError(f"gs-routed: max_gen_toks must be positive, got {limit}")
    return [s for s in until if s], limit


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text before the first occurrence of any stop string (as lm-eval's ``postprocess_generated_text``).

    Applied even if the generator already stopped there: it may stop on a token that only contains
    the stop string, or only check after each token.
    """
    for term in stop:
        if term:
            text = text.split(term)[0]
    return text


def _jsonable(value: Any) -> Any:
    """Routing info as plain JSON (tensors and arrays to lists, numbers to Python numbers)."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # torch.Tensor, numpy array or scalar
        return _jsonable(value.tolist())
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return str(value)


def split_routing(routing: Any, n: int) -> list[Any]:
    """Per-prompt entries of ``RoutedLM.last_routing`` after a call with ``n`` prompts.

    A list of ``n`` entries is taken as one per prompt; a dict whose values are all ``n``-long lists
    is split by index (``{"expert": [...], "weights": [...]}``); anything else is shared by all.
    """
    routing = _jsonable(routing)
    if isinstance(routing, list) and len(routing) == n:
        return routing
    if isinstance(routing, dict) and routing and all(isinstance(v, list) and len(v) == n for v in routing.values()):
        return [{k: v[i] for k, v in routing.items()} for i in range(n)]
    return [routing] * n


@register_model(MODEL_NAME)
class GSRoutedLM(LM):
    """lm-eval model ``gs-routed``: greedy generation and continuation log-likelihoods through
    :class:`gs.inference.RoutedLM`, under the system's routing.

    Arguments (``--model_args`` or a dict for ``simple_evaluate``): ``model_dir`` (the prepared base
    model), ``mode`` (``base`` or a routing mode of :class:`~gs.inference.RoutedLM`), the mode's paths
    (``experts_dir``, ``router_dir``, ``warmup_dir``, ``features_path``, ``projector_path``,
    ``assignments_path``), ``params`` (RoutedLM parameters: a dict, JSON text or a JSON file; the
    comma-separated ``--model_args`` string cannot carry JSON with commas, so give a file there),
    ``batch_size``, ``device``, ``dtype`` (default: the prepared folder's own) and ``seed``; for
    likelihood requests ``likelihood_batch_size`` (default ``batch_size``), ``max_answer_tokens``
    (answers are scored on their first that many tokens; default no cap) and
    ``likelihood_chunk_tokens`` (answer positions whose vocabulary log-probabilities are held at
    once; default :data:`gs.inference.DEFAULT_CHUNK_TOKENS`).

    Prompts are user-message texts: RoutedLM applies the model's chat template, so lm-eval's
    ``apply_chat_template`` must stay off. Each request's domain (``request.doc["domain"]``) is passed
    along for the oracle mode; the routing of each request is kept in :attr:`routing_log`, keyed by
    ``(task_name, doc_id)``; per task, the time in ``RoutedLM.generate`` or ``RoutedLM.loglikelihood``
    (routing included), the part spent routing and the new tokens in :attr:`generation_seconds`,
    :attr:`routing_seconds` and :attr:`generated_tokens`; per likelihood request, the answer's
    tokens scored and in all in :attr:`likelihood_tokens` (``{"n_tokens", "answer_tokens"}``).
    """

    def __init__(
        self,
        model_dir: str,
        mode: str = "base",
        experts_dir: str | None = None,
        router_dir: str | None = None,
        warmup_dir: str | None = None,
        features_path: str | None = None,
        projector_path: str | None = None,
        assignments_path: str | None = None,
        params: dict[str, Any] | str | None = None,
        batch_size: int | str = DEFAULT_BATCH_SIZE,
        max_batch_size: int | None = None,
        device: str | None = None,
        dtype: str | None = None,
        seed: int = 0,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        likelihood_batch_size: int | str | None = None,
        max_answer_tokens: int | str | None = None,
        likelihood_chunk_tokens: int | str | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise InputError(f"gs-routed: unknown model arguments {sorted(unknown)}")
        from gs.inference import RoutedLM  # torch and transformers only once a model is made

        self.mode = str(mode)
        self.model_dir = str(model_dir)
        self.batch_size = _batch_size(batch_size, max_batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self._device = device
        paths = {
            "experts_dir": experts_dir,
            "router_dir": router_dir,
            "warmup_dir": warmup_dir,
            "features_path": features_path,
            "projector_path": projector_path,
            "assignments_path": assignments_path,
        }
        self.paths = {k: str(v) for k, v in paths.items() if v is not None}
        self.params = parse_json_arg(params, "gs-routed params")
        self.routed = RoutedLM(
            self.model_dir,
            mode=self.mode,
            **self.paths,
            params=self.params,
            device=device,
            dtype=dtype,
            seed=int(seed),
        )
        self.routing_log: dict[tuple[str, int], Any] = {}
        self.generation_seconds: dict[str, float] = defaultdict(float)
        self.generated_tokens: dict[str, int] = defaultdict(int)
        self.routing_seconds: dict[str, float] = defaultdict(float)
        self.likelihood_batch_size = (
            self.batch_size if likelihood_batch_size is None else _batch_size(likelihood_batch_size, None)
        )
        # Passed on only when set, so RoutedLM's own defaults apply otherwise.
        self.likelihood_kwargs: dict[str, int] = {
            k: _positive_arg(v, name)
            for k, name, v in (
                ("max_answer_tokens", "max_answer_tokens", max_answer_tokens),
                ("chunk_tokens", "likelihood_chunk_tokens", likelihood_chunk_tokens),
            )
            if v is not None
        }
        self.likelihood_tokens: dict[tuple[str, int], dict[str, int]] = {}
        # lm-eval records the tokenizer's special tokens in its results when the model has one.
        self.tokenizer = getattr(self.routed, "tokenizer", None)

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy completions of ``requests`` (``args = (context, gen_kwargs)``), in request order.

        Requests are grouped by task and generation settings (as lm-eval's HF model groups by
        ``gen_kwargs``) and sorted longest first so batches pad little; each group goes to
        :meth:`RoutedLM.generate` in one call, which routes every prompt, groups prompts by expert
        and decodes ``batch_size`` at a time (splitting the group here would split expert groups
        into smaller batches). Each completion is cut at the first ``until`` string.
        """
        from tqdm import tqdm

        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            if not isinstance(context, str):
                raise InputError("gs-routed takes text prompts only (no multimodal or chat-list contexts)")
            key = json.dumps(gen_kwargs, sort_keys=True, default=str)
            groups[(req.task_name or "", key)].append(i)
        out: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="gs-routed generate_until")
        for (task, _), indices in groups.items():
            until, max_new = generation_settings(requests[indices[0]].args[1], self.max_gen_toks)
            indices = sorted(indices, key=lambda i: -len(requests[i].args[0]))
            prompts = [requests[i].args[0] for i in indices]
            # The oracle mode routes by the record's (hidden) domain; the other modes ignore it.
            domains = [(requests[i].doc or {}).get("domain") for i in indices]
            t0 = time.perf_counter()
            texts = self.routed.generate(
                prompts, max_new_tokens=max_new, stop=until or None, domains=domains, batch_size=self.batch_size
            )
            self.generation_seconds[task] += time.perf_counter() - t0
            timing = getattr(self.routed, "last_timing", None) or {}
            self.generated_tokens[task] += int(timing.get("new_tokens", 0) or 0)
            self.routing_seconds[task] += float(timing.get("route_s", 0.0) or 0.0)
            if len(texts) != len(indices):
                raise RuntimeError(f"RoutedLM.generate returned {len(texts)} texts for {len(indices)} prompts")
            routing = split_routing(getattr(self.routed, "last_routing", None), len(indices))
            for i, text, route in zip(indices, texts, routing, strict=True):
                text = cut_at_stop(text, until)
                out[i] = text
                self.routing_log[(task, requests[i].doc_id)] = route
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
            bar.update(len(indices))
        bar.close()
        return [o if o is not None else "" for o in out]

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``(log-probability, is_greedy)`` of each request's continuation (``args = (context,
        continuation)``), under the system's routing: :meth:`RoutedLM.loglikelihood`.

        The context is the user message (RoutedLM applies the chat template); the continuation is the
        assistant's answer. Requests are grouped by task, each group routed and scored in one call,
        longest first.
        """
        from tqdm import tqdm

        groups: dict[str, list[int]] = defaultdict(list)
        for i, req in enumerate(requests):
            context, continuation = req.args
            if not isinstance(context, str) or not isinstance(continuation, str):
                raise InputError("gs-routed takes text prompts and continuations only")
            groups[req.task_name or ""].append(i)
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="gs-routed loglikelihood")
        for task, indices in groups.items():
            # Longest first, as lm-eval's HF model sorts: batches of similar length pad little.
            indices = sorted(indices, key=lambda i: -len(requests[i].args[0]) - len(requests[i].args[1]))
            domains = [(requests[i].doc or {}).get("domain") for i in indices]
            t0 = time.perf_counter()
            scores = self.routed.loglikelihood(
                [requests[i].args[0] for i in indices],
                [requests[i].args[1] for i in indices],
                domains=domains,
                batch_size=self.likelihood_batch_size,
                **self.likelihood_kwargs,
            )
            self.generation_seconds[task] += time.perf_counter() - t0
            self.routing_seconds[task] += float((getattr(self.routed, "last_timing", None) or {}).get("route_s", 0.0))
            routing = split_routing(getattr(self.routed, "last_routing", None), len(indices))
            # Tokens of each whole answer; more than n_tokens when max_answer_tokens cut it.
            lengths = getattr(self.routed, "last_answer_tokens", None) or [n for _, _, n in scores]
            for i, (logprob, greedy, n), total, route in zip(indices, scores, lengths, routing, strict=True):
                out[i] = (float(logprob), bool(greedy))
                self.routing_log[(task, requests[i].doc_id)] = route
                self.likelihood_tokens[(task, requests[i].doc_id)] = {"n_tokens": int(n), "answer_tokens": int(total)}
                self.cache_hook.add_partial("loglikelihood", requests[i].args, out[i])
            bar.update(len(indices))
        bar.close()
        return [o if o is not None else (math.nan, False) for o in out]

    def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
        raise NotImplementedError(
            "gs-routed scores continuations (loglikelihood), not whole documents; writing fluency is scored "
            "by gs.evaluation with the base model. Use lm-eval's 'hf' model for perplexity tasks."
        )

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        raise InputError(
            "gs-routed applies the model's chat template itself (to the user message); run without "
            "lm-eval's apply_chat_template"
        )

    def get_model_info(self) -> dict[str, Any]:
        """Recorded by ``simple_evaluate`` under ``results["config"]``."""
        return {"gs_mode": self.mode, "gs_model_dir": self.model_dir, "gs_paths": self.paths, "gs_params": self.params}


# ---------------------------------------------------------------------------------------------------
# Task configs
# ---------------------------------------------------------------------------------------------------


class _TaskYamlLoader(yaml.SafeLoader):
    """Reads the packaged task YAMLs without importing their ``!function`` hooks."""


_TaskYamlLoader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def read_task_yaml(task: str) -> dict[str, Any]:
    """The packaged YAML of ``task`` (its own keys, includes not merged; hooks as ``"!function ..."``)."""
    path = TASKS_DIR / f"{task}.yaml"
    if not path.is_file():
        raise InputError(f"unknown task {task!r}; expected one of {', '.join([*TASK_DOMAINS, *GROUPS])}")
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=_TaskYamlLoader)  # noqa: S506 - a SafeLoader subclass


def expand_tasks(tasks: Sequence[str]) -> list[str]:
    """The leaf tasks of ``tasks`` (groups expanded), in order, without repeats."""
    if not tasks:
        raise InputError("no tasks given")
    leaves: list[str] = []
    for task in tasks:
        if task in GROUPS:
            names = GROUPS[task]
        elif task in TASK_DOMAINS:
            names = (task,)
        else:
            raise InputError(f"unknown task {task!r}; expected one of {', '.join([*TASK_DOMAINS, *GROUPS])}")
        leaves += [n for n in names if n not in leaves]
    return leaves


def _max_gen_toks_for(setting: Any, task: str) -> int | None:
    """``max_gen_toks`` from params: one int for all tasks, or per task (``gs_math``) or domain (``math``)."""
    if setting is None:
        return None
    if isinstance(setting, dict):
        value = setting.get(task, setting.get(TASK_DOMAINS[task]))
    else:
        value = setting
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"max_gen_toks for {task} must be a positive integer, got {value!r}")
    return value


def write_task_dir(data_dir: str | os.PathLike, out_dir: str | os.PathLike, *, max_gen_toks: Any = None) -> Path:
    """Write per-run task YAMLs into ``out_dir`` (an lm-eval ``include_path``); return it.

    Each task's YAML there ``include:``s the packaged task (absolute path, so its ``!function``
    hooks still resolve next to it) and overrides ``dataset_kwargs`` with the absolute path of
    ``<data_dir>/<domain>/<split>.jsonl`` (:data:`TASK_SPLIT`); with ``max_gen_toks`` (an int, or a
    dict by task or domain) a generation task also overrides ``generation_kwargs`` (lm-eval merges
    includes shallowly, so the whole dict is written). The groups are copied.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(data_dir).resolve()
    for task, domain in TASK_DOMAINS.items():
        packaged = TASKS_DIR / f"{task}.yaml"
        cfg: dict[str, Any] = {
            "include": str(packaged.resolve()),
            "dataset_kwargs": {"data_files": {"test": str(data / domain / f"{TASK_SPLIT[task]}.jsonl")}},
        }
        limit = _max_gen_toks_for(max_gen_toks, task) if task in GENERATION_TASKS else None
        if limit is not None:
            cfg["generation_kwargs"] = {**read_task_yaml(task)["generation_kwargs"], "max_gen_toks": limit}
        (out / f"{task}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    for group in GROUPS:
        shutil.copyfile(TASKS_DIR / f"{group}.yaml", out / f"{group}.yaml")
    return out


# ---------------------------------------------------------------------------------------------------
# Fluency
# ---------------------------------------------------------------------------------------------------


def passage_nll(model: Any, tokenizer: Any, text: str, *, max_length: int | None = None) -> tuple[float, int]:
    """Negative log-likelihood (nats) of ``text`` under ``model`` and its number of tokens.

    Unconditioned: the text is scored after only a prefix token (BOS, else EOS), not after the
    prompt. Conditioning on the prompt would make copying the given end sentences, which the prompt
    contains, look fluent; fluency should be a property of the passage. Texts longer than the
    context are scored in disjoint rolling windows, as lm-eval's ``loglikelihood_rolling`` does
    (``get_rolling_token_windows`` with ``context_len=1``). An empty text gives ``(0.0, 0)``.
    """
    import torch
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        return 0.0, 0
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if max_length is None:
        max_length = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    device = next(model.parameters()).device
    nll = 0.0
    windows = map(make_disjoint_window, get_rolling_token_windows(ids, prefix, max_length, 1))
    with torch.inference_mode():
        for context, continuation in windows:
            inputs = torch.tensor([(context + continuation)[:-1]], device=device)
            logits = model(input_ids=inputs).logits[0, -len(continuation) :].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            target = torch.tensor(continuation, device=device)
            nll -= float(logprobs.gather(1, target[:, None]).sum())
    return nll, len(ids)


def fluency_scores(
    model_dir: str | os.PathLike, passages: Sequence[str], *, dtype: str | None = None, device: str | None = None
) -> tuple[list[float | None], dict[str, Any]]:
    """Each passage's perplexity under the base model (``None`` if empty) and their summary.

    The summary has ``fluency_perplexity`` (token-weighted: exp of total NLL over total tokens, the
    aggregation of lm-eval's perplexity metrics), ``fluency_perplexity_median`` (over passages),
    ``n_passages``, ``n_empty`` and the ``prefix_token`` the passages were scored after.
    """
    from gs.models import load_model, load_tokenizer

    model = load_model(model_dir, dtype=dtype, device=device).eval()
    tokenizer = load_tokenizer(model_dir)
    max_length = min(
        int(getattr(model.config, "max_position_embeddings", 2048) or 2048),
        int(tokenizer.model_max_length) if 0 < tokenizer.model_max_length < 10**7 else 10**7,
    )
    per_passage: list[float | None] = []
    total_nll, total_tokens = 0.0, 0
    for passage in passages:
        nll, n = passage_nll(model, tokenizer, (passage or "").strip(), max_length=max_length)
        per_passage.append(math.exp(nll / n) if n else None)
        total_nll, total_tokens = total_nll + nll, total_tokens + n
    scored = [p for p in per_passage if p is not None]
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    summary = {
        "prefix_token": tokenizer.convert_ids_to_tokens(prefix),
        "fluency_perplexity": math.exp(total_nll / total_tokens) if total_tokens else None,
        "fluency_perplexity_median": statistics.median(scored) if scored else None,
        "n_passages": len(scored),
        "n_empty": len(per_passage) - len(scored),
    }
    del model
    _free_memory()
    return per_passage, summary


def _free_memory() -> None:
    """Release a model's memory before loading the next (matters on a GPU at paper scale)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


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
        from gs.models import model_settings, run_dtype

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

    It runs inside bubblewrap where :func:`gs.sandbox.isolation` says the namespaces work (the
    description is that isolation's). Without them it runs only if ``params`` (the evaluation
    settings) has ``run_code_without_bubblewrap: true``, with the in-process guards alone (which C
    code gets past); otherwise it is not run and the description is the reason, for the report.
    """
    from gs.sandbox import isolation as sandbox_isolation

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
    in this process, and where the config allows it, :func:`gs.sandbox.allow_without_bubblewrap`; both
    restored afterwards."""
    if not run_code:
        yield
        return
    from gs.sandbox import ALLOW_ENV_VAR, allow_without_bubblewrap

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
        _free_memory()
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
    report = _jsonable(report)
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
