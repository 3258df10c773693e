"""The lm-eval model ``gs-routed`` (registered with ``@register_model``): greedy generation
(``generate_until``) and continuation log-likelihoods (``loglikelihood``) through
:class:`gs.evaluation.routed_model.RoutedLM`, under a system's routing (base, one expert, experts
behind a router, or an ensemble)."""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from gs.evaluation.decoding import cut_at_stop
from gs.io import InputError, parse_params

log = logging.getLogger(__name__)

MODEL_NAME = "gs-routed"


ROUTED_PATH_ARGS = ("experts_dir", "router_dir", "warmup_dir", "features_path", "projector_path", "assignments_path")


DEFAULT_BATCH_SIZE = 8


DEFAULT_MAX_GEN_TOKS = 256  # only for requests that name no limit; the gs_* tasks all do


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


def jsonable(value: Any) -> Any:
    """Routing info as plain JSON (tensors and arrays to lists, numbers to Python numbers)."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # torch.Tensor, numpy array or scalar
        return jsonable(value.tolist())
    if hasattr(value, "item"):
        return jsonable(value.item())
    return str(value)


def split_routing(routing: Any, n: int) -> list[Any]:
    """Per-prompt entries of ``RoutedLM.last_routing`` after a call with ``n`` prompts.

    A list of ``n`` entries is taken as one per prompt; a dict whose values are all ``n``-long lists
    is split by index (``{"expert": [...], "weights": [...]}``); anything else is shared by all.
    """
    routing = jsonable(routing)
    if isinstance(routing, list) and len(routing) == n:
        return routing
    if isinstance(routing, dict) and routing and all(isinstance(v, list) and len(v) == n for v in routing.values()):
        return [{k: v[i] for k, v in routing.items()} for i in range(n)]
    return [routing] * n


@register_model(MODEL_NAME)
class GSRoutedLM(LM):
    """lm-eval model ``gs-routed``: greedy generation and continuation log-likelihoods through
    :class:`gs.evaluation.routed_model.RoutedLM`, under the system's routing.

    Arguments (``--model_args`` or a dict for ``simple_evaluate``): ``model_dir`` (the prepared base
    model), ``mode`` (``base`` or a routing mode of :class:`~gs.evaluation.routed_model.RoutedLM`), the mode's paths
    (``experts_dir``, ``router_dir``, ``warmup_dir``, ``features_path``, ``projector_path``,
    ``assignments_path``), ``params`` (RoutedLM parameters: a dict, JSON text or a JSON file; the
    comma-separated ``--model_args`` string cannot carry JSON with commas, so give a file there),
    ``batch_size``, ``device``, ``dtype`` (default: the prepared folder's own) and ``seed``; for
    likelihood requests ``likelihood_batch_size`` (default ``batch_size``), ``max_answer_tokens``
    (answers are scored on their first that many tokens; default no cap) and
    ``likelihood_chunk_tokens`` (answer positions whose vocabulary log-probabilities are held at
    once; default :data:`gs.evaluation.routed_model.DEFAULT_CHUNK_TOKENS`).

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
        from gs.evaluation.routed_model import RoutedLM  # torch and transformers only once a model is made

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
            "by gs.evaluation.run with the base model. Use lm-eval's 'hf' model for perplexity tasks."
        )

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        raise InputError(
            "gs-routed applies the model's chat template itself (to the user message); run without "
            "lm-eval's apply_chat_template"
        )

    def get_model_info(self) -> dict[str, Any]:
        """Recorded by ``simple_evaluate`` under ``results["config"]``."""
        return {"gs_mode": self.mode, "gs_model_dir": self.model_dir, "gs_paths": self.paths, "gs_params": self.params}
