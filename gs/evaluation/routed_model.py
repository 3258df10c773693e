"""Generation and answer likelihood with the base model, one routed LoRA expert, or an ensemble of experts.

:class:`RoutedLM` is the one object every evaluation and latency measurement goes through, a thin
front over three parts a reader can take one at a time:

* :mod:`gs.evaluation.routing`: which experts answer each prompt and with which weights (the modes of
  :data:`MODES`: ``base``, ``multitask``, ``single``, ``elrea``, ``uniform``, ``oracle``);
* :mod:`gs.evaluation.decoding`: greedy decoding from the weighted mixture of the experts' next-token
  distributions, one KV cache per active expert;
* :mod:`gs.evaluation.scoring`: the teacher-forced log-likelihood of a given answer under the same routing
  and mixture, chunk by chunk in bounded memory.

The base weights are loaded ONCE, in the prepared model's own dtype, straight to the device; every
expert adapter (and, for ELREA, the warm-up adapter) is loaded into the same peft model under its
own adapter name (``expert_<j>``, ``warmup``); decoding and scoring switch the active adapter
instead of reloading weights. A mode's generations and likelihoods come from one distribution.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gs.data.prompting import chat_prompt
from gs.evaluation.decoding import cut_at_stop, greedy_decode, make_streams
from gs.evaluation.routing import (
    ENSEMBLE_MODES,
    MODES,
    WARMUP_ADAPTER,
    ElreaCentroids,
    RoutingPolicy,
    adapter_groups,
    elrea_prompt_features,
    expert_adapter_name,
    load_router,
    mixture_weights,
    oracle_table,
    route_batches,
)
from gs.evaluation.scoring import cap_answers, check_logits_from_hidden, score_batch
from gs.io import InputError

__all__ = [
    "DEFAULT_PARAMS",
    "DEFAULT_CHUNK_TOKENS",
    "ENSEMBLE_MODES",
    "MODES",
    "WARMUP_ADAPTER",
    "RoutedLM",
    "expert_adapter_name",
    "mixture_weights",
]

# Config keys read from ``params`` (the ``inference`` config section) and their defaults.
DEFAULT_PARAMS: dict[str, Any] = {
    # ELREA: softmax temperature over cosine similarities. Not given in the abstract; cosines of a
    # test gradient to cluster centroids differ by a few hundredths to tenths, so T = 0.1 gives
    # weights that are neither uniform nor one-hot. Our choice, a config option.
    "temperature": 0.1,
    # ELREA: how many of the most similar experts are mixed (None: all of them).
    "top_m": None,
    # ELREA: prompts per batch of on-the-fly gradients, and their token limit (the features' limit).
    "gradient_batch_size": 4,
    "gradient_max_length": 512,
    # Prompts longer than this many tokens keep their end (the generation header); None: no limit.
    "max_prompt_tokens": None,
}
#: Answer positions whose vocabulary log-probabilities are held at once when scoring (ours).
DEFAULT_CHUNK_TOKENS = 64


def _require_path(path: str | os.PathLike | None, what: str, mode: str, *, is_dir: bool) -> Path:
    """``path`` as a Path; one-line errors if the mode lacks it or it is not an existing folder/file."""
    if path is None:
        raise InputError(f"mode {mode!r} needs {what}")
    p = Path(path)
    if not (p.is_dir() if is_dir else p.is_file()):
        raise InputError(f"{p}: {what} not found")
    return p


def _require_dir(path: str | os.PathLike | None, what: str, mode: str) -> Path:
    return _require_path(path, what, mode, is_dir=True)


def _require_file(path: str | os.PathLike | None, what: str, mode: str) -> Path:
    return _require_path(path, what, mode, is_dir=False)


def _sync(device: torch.device | str) -> None:
    # CUDA runs asynchronously: wall-clock timings are only meaningful after a synchronisation.
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _positive(value: Any, what: str, *, none_ok: bool = False) -> int | None:
    """``value`` as a positive int (None allowed with ``none_ok``), else a one-line error."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < 1:
        raise InputError(f"{what} must be a positive integer{' or null' if none_ok else ''}, got {value!r}")
    return int(value)


class RoutedLM:
    """A base causal LM with zero, one or several LoRA experts and a routing rule (see module doc).

    Args:
        model_dir: prepared base model folder (Hugging Face format).
        mode: one of :data:`MODES`.
        experts_dir: experts folder (``experts.json`` + adapters); every mode but ``"base"``.
        router_dir: router folder (:meth:`gs.router.train.Router.load`); mode ``"single"``.
        warmup_dir: warm-up adapter folder; mode ``"elrea"``.
        features_path: ``features.npz`` with ``ids``, ``elrea_dim`` and ``elrea_features`` or
            ``projected_<elrea_dim>``; mode ``"elrea"``.
        projector_path: the projector of the ELREA features (default: ``projector_<elrea_dim>.joblib``
            next to ``features_path``); mode ``"elrea"``.
        assignments_path: cluster assignments CSV ``id,cluster`` the ELREA experts were trained on;
            mapped to experts through the manifest's ``cluster_to_expert``; mode ``"elrea"``.
        params: the ``inference`` config section (keys and defaults: :data:`DEFAULT_PARAMS`).
        device: ``"cuda"``/``"cpu"``/...; default (None): the prepared folder's own
            (:func:`gs.models.load.load_model`).
        dtype: weights' dtype name (``"float32"``, ``"bfloat16"``, ``"float16"``); default (None):
            the prepared folder's own.
        seed: seeds torch/numpy (decoding itself is greedy and deterministic).

    Attributes:
        model: the transformers module every decoding forward goes through (LoRA layers injected);
            tests hook it to count forward passes.
        tokenizer: the base model's tokenizer (``padding_side="left"``).
        expert_ids: the experts' ids, ascending (empty for ``"base"``).
        policy: the :class:`gs.evaluation.routing.RoutingPolicy` of the mode.
        last_routing: per prompt of the last call, in input order: ``{"experts": [ids], "weights":
            [floats]}`` (+ ``"similarities"`` over all experts for ``"elrea"``; ``"domain"`` for
            ``"oracle"``).
        last_timing: of the last call: ``route_s`` (routing, all of it), ``gradient_s`` (ELREA's
            on-the-fly gradients and projection, part of ``route_s``), ``first_token_s`` (from the
            call to the first generated token of the first batch), ``total_s``, ``new_tokens``,
            ``forward_calls`` (decoder forwards).
        last_answer_tokens: of the last :meth:`loglikelihood` call, each answer's token count before
            the ``max_answer_tokens`` cap.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        mode: str,
        experts_dir: str | os.PathLike | None = None,
        router_dir: str | os.PathLike | None = None,
        warmup_dir: str | os.PathLike | None = None,
        features_path: str | os.PathLike | None = None,
        projector_path: str | os.PathLike | None = None,
        assignments_path: str | os.PathLike | None = None,
        params: dict[str, Any] | None = None,
        device: str | None = None,
        dtype: str | None = None,
        seed: int = 0,
    ) -> None:
        from gs.models.load import load_tokenizer
        from gs.models.lora import seed_everything

        if mode not in MODES:
            raise InputError(f"unknown inference mode {mode!r}; expected one of {', '.join(MODES)}")
        self.mode = mode
        self.params = self._check_params(params)
        seed_everything(seed)

        # Validate every path before the (slow) model load, so a typo fails at once.
        self.experts: dict[int, Path] = {}
        self.manifest: dict[str, Any] | None = None
        self.experts_dir: Path | None = None
        if mode != "base":
            from gs.experts.folders import expert_dirs, load_manifest

            self.experts_dir = _require_dir(experts_dir, "experts folder (experts_dir)", mode)
            self.manifest = load_manifest(self.experts_dir)
            self.experts = dict(sorted(expert_dirs(self.experts_dir).items()))
            if not self.experts:
                raise InputError(f"{self.experts_dir}: the manifest lists no experts")
            if mode == "multitask" and len(self.experts) != 1:
                raise InputError(
                    f"{self.experts_dir}: mode 'multitask' expects one expert, the manifest has {len(self.experts)}"
                )
        self.expert_ids = list(self.experts)
        if mode == "single":
            _require_dir(router_dir, "router folder (router_dir)", mode)
        if mode == "elrea":
            wdir = _require_dir(warmup_dir, "warm-up adapter folder (warmup_dir)", mode)
            if not (wdir / "adapter_config.json").is_file():
                raise InputError(f"{wdir}: no peft adapter here (adapter_config.json missing)")
            _require_file(features_path, "gradient features (features_path)", mode)
            _require_file(assignments_path, "cluster assignments (assignments_path)", mode)

        router = load_router(router_dir, model_dir, self.expert_ids, self.experts_dir) if mode == "single" else None
        self.tokenizer = load_tokenizer(model_dir)
        self.tokenizer.padding_side = "left"
        self._load_model(model_dir, dtype, device, warmup_dir if mode == "elrea" else None)
        elrea = None
        if mode == "elrea":
            assert features_path is not None and assignments_path is not None and self.manifest is not None
            elrea = ElreaCentroids.load(
                features_path, projector_path, assignments_path, self.manifest, self.expert_ids, self.experts_dir
            )
        self.policy = RoutingPolicy(
            mode,
            self.expert_ids,
            params=self.params,
            router=router,
            oracle=oracle_table(self.manifest, self.experts_dir) if mode == "oracle" and self.manifest else None,
            elrea=elrea,
            experts_dir=self.experts_dir,
        )
        self.last_routing: list[dict[str, Any]] = []
        self.last_timing: dict[str, float] = {}
        self.last_answer_tokens: list[int] = []
        self._logits_checked = False

    # -- setup -----------------------------------------------------------------------------------

    @staticmethod
    def _check_params(params: dict[str, Any] | None) -> dict[str, Any]:
        unknown = sorted(set(params or {}) - set(DEFAULT_PARAMS))
        if unknown:
            raise InputError(f"unknown inference param(s) {unknown}; known: {', '.join(DEFAULT_PARAMS)}")
        merged = {**DEFAULT_PARAMS, **(params or {})}
        if not float(merged["temperature"]) > 0:
            raise InputError(f"inference temperature must be positive, got {merged['temperature']}")
        if merged["top_m"] is not None and int(merged["top_m"]) < 1:
            raise InputError(f"inference top_m must be at least 1 (or null for all), got {merged['top_m']}")
        if int(merged["gradient_batch_size"]) < 1:
            raise InputError(f"gradient_batch_size must be at least 1, got {merged['gradient_batch_size']}")
        if merged["max_prompt_tokens"] is not None and int(merged["max_prompt_tokens"]) < 1:
            raise InputError(f"max_prompt_tokens must be at least 1, got {merged['max_prompt_tokens']}")
        return merged

    def _load_model(self, model_dir: str | os.PathLike, dtype: str | None, device: str | None, warmup_dir: Any) -> None:
        """The base model (the folder's dtype and device unless named) with every adapter loaded."""
        from gs.models.load import load_model

        # Only what the caller names overrides the prepared folder's own dtype and device.
        overrides = {k: v for k, v in (("dtype", dtype), ("device", device)) if v is not None}
        base = load_model(model_dir, **overrides).eval()
        self.device = base.device
        self.peft: Any = None
        if self.experts:
            from peft import PeftModel

            first, *rest = self.experts.items()
            self.peft = PeftModel.from_pretrained(
                base, str(first[1]), adapter_name=expert_adapter_name(first[0]), is_trainable=False
            )
            for j, path in rest:
                self.peft.load_adapter(str(path), adapter_name=expert_adapter_name(j), is_trainable=False)
            if warmup_dir is not None:
                self.peft.load_adapter(str(warmup_dir), adapter_name=WARMUP_ADAPTER, is_trainable=True)
            # Only the warm-up adapter's weights need gradients (ELREA's on-the-fly features).
            for name, p in self.peft.named_parameters():
                p.requires_grad_(f".{WARMUP_ADAPTER}." in name)
            self.peft.eval()
        # Forwards go to the transformers model itself (LoRA layers are injected in place), which
        # skips the PeftModel wrapper's per-call bookkeeping.
        self.model: Any = self.peft.base_model.model if self.peft is not None else base
        self.model.eval()
        from peft.tuners.tuners_utils import BaseTunerLayer

        self._lora_layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
        self._active: str | None = None
        eos = self.model.generation_config.eos_token_id if self.model.generation_config is not None else None
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(int(self.tokenizer.eos_token_id))
        self.eos_ids = {int(e) for e in eos_ids}
        self.pad_id = int(self.tokenizer.pad_token_id)

    @property
    def centroids(self) -> np.ndarray:
        """ELREA's expert centroids (k, p), unit rows in ``expert_ids`` order."""
        if self.policy.elrea is None:
            raise AttributeError(f"mode {self.mode!r} has no ELREA centroids")
        return self.policy.elrea.centroids

    @property
    def router(self) -> Any:
        """The router of mode ``"single"`` (None otherwise)."""
        return self.policy.router

    def _activate(self, adapter: str | None) -> None:
        """Make ``adapter`` the only active LoRA adapter (None: the base model, only in mode base).

        Sets each LoRA layer's active adapter directly: peft's ``set_adapter`` walks every module and
        toggles ``requires_grad`` on each call, a cost an ensemble would pay once per expert per step.
        """
        if adapter == self._active or adapter is None:
            return
        for layer in self._lora_layers:
            layer._active_adapter = [adapter]
        self.peft.base_model.active_adapter = adapter
        self._active = adapter

    # -- routing ---------------------------------------------------------------------------------

    def _elrea_features(self, prompts: list[str]) -> np.ndarray:
        """ELREA's unit projected prompt gradients (b, p) through the warm-up adapter; times them."""
        assert self.policy.elrea is not None
        start = time.perf_counter()
        self._activate(WARMUP_ADAPTER)
        x = elrea_prompt_features(
            self.model,
            self.tokenizer,
            prompts,
            self.policy.elrea.projector,
            batch_size=int(self.params["gradient_batch_size"]),
            max_length=int(self.params["gradient_max_length"]),
            pad_id=self.pad_id,
        )
        _sync(self.device)
        self.last_timing["gradient_s"] = self.last_timing.get("gradient_s", 0.0) + time.perf_counter() - start
        return x

    def route(self, prompts: list[str], domains: list[str] | None = None) -> list[dict[str, Any]]:
        """Routing of each prompt: ``{"experts": [ids], "weights": [floats]}`` (see ``last_routing``).

        Also fills ``last_timing["route_s"]`` and ``["gradient_s"]``.
        """
        start = time.perf_counter()
        self.last_timing["gradient_s"] = 0.0
        routes = self.policy.route(list(prompts), domains, self._elrea_features)
        self.last_timing["route_s"] = time.perf_counter() - start
        return routes

    def _encode(self, prompts: list[str]) -> list[list[int]]:
        if not prompts:
            return []
        # The prompt verbatim: the suite's tasks give the stripped user message (as training formats it),
        # lm-eval's own tasks their context as lm-eval's hf model renders it.
        texts = [chat_prompt(self.tokenizer, p) for p in prompts]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        limit = self.params["max_prompt_tokens"]
        # Keep the end: the generation header must stay for the model to answer.
        return [list(x[-int(limit) :]) if limit else list(x) for x in ids]

    def _start(self, prompts: list[str], domains: list[str] | None) -> tuple[list[dict[str, Any]], list[list[int]]]:
        """Reset the timings, route and encode ``prompts``."""
        self.last_timing = {}
        routes = self.route(prompts, domains)
        self.last_routing = routes
        return routes, self._encode(prompts)

    # -- generation ------------------------------------------------------------------------------

    def _decode(
        self, token_lists: list[list[int]], routes: list[dict[str, Any]], **kw: Any
    ) -> tuple[list[list[int]], torch.Tensor, int]:
        """:func:`gs.evaluation.decoding.greedy_decode` of one batch under ``routes``."""
        streams = make_streams(
            token_lists, adapter_groups(routes, base=self.mode == "base"), pad_id=self.pad_id, device=self.device
        )
        return greedy_decode(
            self.model,
            self._activate,
            streams,
            len(token_lists),
            eos_ids=self.eos_ids,
            pad_id=self.pad_id,
            decode=lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True),
            **kw,
        )

    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int,
        stop: list[str] | None = None,
        domains: list[str] | None = None,
        batch_size: int = 8,
        ignore_eos: bool = False,
    ) -> list[str]:
        """Greedy completions of ``prompts`` (user-message texts; the chat template is applied here).

        Each output is the decoded continuation (special tokens dropped), cut before the first
        occurrence of any ``stop`` string; generation of a prompt ends at EOS (unless ``ignore_eos``,
        used by latency measurements to generate exactly ``max_new_tokens``), at a stop string, or
        after ``max_new_tokens``. ``domains`` (one per prompt) is needed by mode ``"oracle"`` only.
        Single-expert modes batch prompts by expert; ensembles keep input order.
        Returns n strings in input order; fills :attr:`last_routing` and :attr:`last_timing`.
        """
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        prompts = [str(p) for p in prompts]
        start = time.perf_counter()
        routes, token_lists = self._start(prompts, domains)
        outputs: list[str] = [""] * len(prompts)
        first: list[float] = []

        def mark_first() -> None:
            if not first:
                first.append(time.perf_counter() - start)

        batches = route_batches(routes, batch_size, ensemble=self.mode in ENSEMBLE_MODES)
        new_tokens = forwards = 0
        for idx in tqdm(batches, desc=f"generate ({self.mode})", disable=len(batches) < 16, mininterval=5.0):
            generated, _, n_fwd = self._decode(
                [token_lists[i] for i in idx],
                [routes[i] for i in idx],
                max_new_tokens=max_new_tokens,
                stop=stop,
                ignore_eos=ignore_eos,
                on_first_token=mark_first,
            )
            forwards += n_fwd
            for i, ids in zip(idx, generated, strict=True):
                outputs[i] = cut_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), stop)
                new_tokens += len(ids)
        _sync(self.device)
        self.last_timing.update(
            {
                "first_token_s": first[0] if first else math.nan,
                "total_s": time.perf_counter() - start,
                "new_tokens": new_tokens,
                "forward_calls": forwards,
            }
        )
        return outputs

    def next_token_distribution(self, prompts: list[str], domains: list[str] | None = None) -> torch.Tensor:
        """The step-0 next-token distribution (b, V) float32 on the CPU, all prompts in one batch:
        the routed expert's softmax, or the weighted mixture of the ensemble's softmaxes."""
        routes, token_lists = self._start([str(p) for p in prompts], domains)
        _, mixture, forwards = self._decode(token_lists, routes, max_new_tokens=1, ignore_eos=True)
        self.last_timing["forward_calls"] = forwards
        return mixture.cpu()

    # -- likelihood ------------------------------------------------------------------------------

    def loglikelihood(
        self,
        prompts: list[str],
        continuations: list[str],
        *,
        domains: list[str] | None = None,
        batch_size: int = 8,
        max_answer_tokens: int | None = None,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    ) -> list[tuple[float, bool, int]]:
        """Log-probability of each continuation after its prompt, under the routed mixture.

        ``prompts`` are user-message texts (the chat template is applied, as in :meth:`generate`);
        each continuation is the assistant's answer, tokenised on its own and cut to its first
        ``max_answer_tokens`` tokens (None: no cap). Every prompt is routed as for generation and
        scored by :func:`gs.evaluation.scoring.score_batch` (one decoder forward per active expert and batch of
        ``batch_size``; log-probabilities ``log sum_e w_e p_e(token)`` computed ``chunk_tokens``
        answer positions at a time). Returns, per prompt in input order, ``(logprob in nats,
        is_greedy, n_tokens)``, ``n_tokens`` the tokens scored (fewer than the answer's when capped:
        compare :attr:`last_answer_tokens`); ``is_greedy`` says whether the mixture's argmax gives
        every scored token (lm-eval's second loglikelihood output). Fills :attr:`last_routing` and
        :attr:`last_timing`.
        """
        if len(prompts) != len(continuations):
            raise InputError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        _positive(batch_size, "likelihood batch_size")
        cap = _positive(max_answer_tokens, "likelihood max_answer_tokens", none_ok=True)
        chunk = _positive(chunk_tokens, "likelihood chunk_tokens")
        start = time.perf_counter()
        answers = [self.tokenizer(str(c), add_special_tokens=False)["input_ids"] for c in continuations]
        empty = [i for i, t in enumerate(answers) if not t]
        if empty:
            raise InputError(f"continuation {empty[0]} is empty: nothing to score")
        if not self._logits_checked and answers:
            check_logits_from_hidden(self.model, answers[0][:4])
            self._logits_checked = True
        routes, contexts = self._start([str(p) for p in prompts], domains)
        self.last_answer_tokens = [len(t) for t in answers]
        targets = cap_answers(answers, cap)
        out: list[tuple[float, bool, int]] = [(math.nan, False, 0)] * len(prompts)
        batches = route_batches(routes, batch_size, ensemble=self.mode in ENSEMBLE_MODES)
        forwards = 0
        for idx in tqdm(batches, desc=f"loglikelihood ({self.mode})", disable=len(batches) < 16, mininterval=5.0):
            sub = [routes[i] for i in idx]
            scores, n_fwd = score_batch(
                self.model,
                self._activate,
                [contexts[i] for i in idx],
                [targets[i] for i in idx],
                adapter_groups(sub, base=self.mode == "base"),
                pad_id=self.pad_id,
                device=self.device,
                chunk_tokens=int(chunk),
            )
            forwards += n_fwd
            for i, score in zip(idx, scores, strict=True):
                out[i] = score
        _sync(self.device)
        self.last_timing.update({"total_s": time.perf_counter() - start, "forward_calls": forwards})
        return out
