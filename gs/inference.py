"""Generation with the base model, one routed LoRA expert, or an ensemble of experts.

:class:`RoutedLM` is the one object every evaluation and latency measurement goes through. The base
weights are loaded ONCE and every expert adapter (and, for ELREA, the warm-up adapter) is loaded into
the same peft model under its own adapter name (``expert_<j>``, ``warmup``); generation switches the
active adapter instead of reloading weights.

Modes (see :data:`MODES`):

* ``"base"``: the base model, no adapter.
* ``"multitask"``: the single LoRA trained on all the data (an experts folder with one expert).
* ``"single"`` (GradientSpace, arXiv 2512.06678): the router (:class:`gs.router.Router`) picks ONE
  expert per prompt; prompts are grouped by expert and batch-generated with that adapter active.
* ``"elrea"`` (ELREA, arXiv 2502.00089, as described in ``shared/papers.md``; no public code, so
  the details are our reading): the prompt's LoRA gradient is computed on the fly through the
  warm-up adapter, with the loss on the instruction (prompt) tokens since a test prompt has no
  answer; it is L2-normalised, randomly projected with the saved projector, and compared by cosine
  similarity with each expert's centroid (the normalised mean of the normalised projected training
  features of the samples whose cluster maps to that expert). The ``top_m`` most similar experts are
  weighted by ``softmax(similarity / temperature)`` and at every decoding step their next-token
  PROBABILITY distributions are mixed with these weights; the token is the argmax of the mixture.
* ``"uniform"``: the same ensemble with equal weights over all experts.
* ``"oracle"``: the expert that holds the largest number of training samples of the prompt's
  (hidden) domain, passed to :meth:`RoutedLM.generate` as ``domains``; ties go to the expert whose
  training set is purest in that domain, then to the lowest id. It bounds what a router could gain
  by recovering the domain: an upper reference for the router's loss, not an achievable method.

Decoding is greedy and written out by hand (not ``model.generate``) so that an ensemble keeps one KV
cache per active expert and advances every cache once per step: its cost is honest, about the
number of active experts times a single expert's. Every mode, including ``"base"`` and ``"single"``,
goes through the same loop (a single expert is a mixture with one weight of exactly 1.0), so with
one expert ``"uniform"`` and ``"single"`` produce identical tokens by construction, and any
difference between modes comes from the routing alone. Batches are left padded, with position ids
counted over real tokens only.

:meth:`RoutedLM.loglikelihood` scores a given continuation under the same routing and the same
mixture (teacher forcing: one forward per active expert over prompt + continuation), so a mode's
likelihood and its generations come from one distribution.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gs.io import InputError
from gs.prompting import format_prompt

MODES = ("base", "multitask", "single", "elrea", "uniform", "oracle")
ENSEMBLE_MODES = ("elrea", "uniform")
WARMUP_ADAPTER = "warmup"

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


def expert_adapter_name(expert: int) -> str:
    """Adapter name of expert ``expert`` inside the shared peft model."""
    return f"expert_{int(expert)}"


@dataclass
class _Stream:
    """One adapter's share of a decoding batch: its rows, weights, inputs and KV cache."""

    adapter: str | None
    rows: torch.Tensor  # (r,) long: batch positions of the prompts this adapter serves
    weights: torch.Tensor  # (r, 1) float32: each row's mixture weight for this adapter
    input_ids: torch.Tensor  # (r, t) the next input tokens (the left-padded prompt, then one token)
    attention_mask: torch.Tensor  # (r, past + t)
    position_ids: torch.Tensor  # (r, t)
    cache: Any = None  # the model's KV cache for these rows (None before the prefill)


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


def mixture_weights(similarities: np.ndarray, temperature: float, top_m: int | None) -> np.ndarray:
    """ELREA weights (b, k) from similarities (b, k): softmax(sim / T) over each row's top_m, 0 elsewhere.

    Ties in the top-m cut go to the lower column index (a stable sort), so the result is deterministic.
    """
    sims = np.asarray(similarities, dtype=np.float64)
    b, k = sims.shape
    m = k if top_m is None else min(int(top_m), k)
    weights = np.zeros_like(sims)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :m]  # (b, m)
    top = np.take_along_axis(sims, order, axis=1) / temperature
    top = np.exp(top - top.max(axis=1, keepdims=True))
    np.put_along_axis(weights, order, top / top.sum(axis=1, keepdims=True), axis=1)
    return weights


class RoutedLM:
    """A base causal LM with zero, one or several LoRA experts and a routing rule (see module doc).

    Args:
        model_dir: prepared base model folder (Hugging Face format).
        mode: one of :data:`MODES`.
        experts_dir: experts folder (``experts.json`` + adapters); every mode but ``"base"``.
        router_dir: router folder (:meth:`gs.router.Router.load`); mode ``"single"``.
        warmup_dir: warm-up adapter folder; mode ``"elrea"``.
        features_path: ``features.npz`` with ``ids``, ``elrea_dim`` and ``projected_<elrea_dim>``;
            mode ``"elrea"``.
        projector_path: the projector of ``projected_<elrea_dim>`` (default:
            ``projector_<elrea_dim>.joblib`` next to ``features_path``); mode ``"elrea"``.
        assignments_path: cluster assignments CSV ``id,cluster`` the ELREA experts were trained on;
            mapped to experts through the manifest's ``cluster_to_expert``; mode ``"elrea"``.
        params: the ``inference`` config section (keys and defaults: :data:`DEFAULT_PARAMS`).
        device: ``"cuda"``/``"cpu"``/...; default :func:`gs.models.default_device`.
        dtype: weights' dtype name (``"float32"``, ``"bfloat16"``, ``"float16"``).
        seed: seeds torch/numpy (decoding itself is greedy and deterministic).

    Attributes:
        model: the transformers module every decoding forward goes through (LoRA layers injected);
            tests hook it to count forward passes.
        tokenizer: the base model's tokenizer (``padding_side="left"``).
        expert_ids: the experts' ids, ascending (empty for ``"base"``).
        last_routing: per prompt of the last :meth:`generate` call, in input order:
            ``{"experts": [ids], "weights": [floats]}`` (+ ``"similarities"`` over all experts for
            ``"elrea"``; ``"domain"`` for ``"oracle"``).
        last_timing: of the last call: ``route_s`` (routing, all of it), ``gradient_s`` (ELREA's
            on-the-fly gradients and projection, part of ``route_s``), ``first_token_s`` (from the
            call to the first generated token of the first batch), ``total_s``, ``new_tokens``,
            ``forward_calls``.
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
        dtype: str = "float32",
        seed: int = 0,
    ) -> None:
        from gs.models import default_device, load_model, load_tokenizer
        from gs.training import seed_everything

        if mode not in MODES:
            raise InputError(f"unknown inference mode {mode!r}; expected one of {', '.join(MODES)}")
        self.mode = mode
        self.params = self._check_params(params)
        self.device = torch.device(device or default_device())
        seed_everything(seed)

        # Validate every path before the (slow) model load, so a typo fails at once.
        self.experts: dict[int, Path] = {}
        self.manifest: dict[str, Any] | None = None
        if mode != "base":
            from gs.experts import expert_dirs, load_manifest

            exp_dir = _require_dir(experts_dir, "experts folder (experts_dir)", mode)
            self.experts_dir = exp_dir
            self.manifest = load_manifest(exp_dir)
            self.experts = dict(sorted(expert_dirs(exp_dir).items()))
            if not self.experts:
                raise InputError(f"{exp_dir}: the manifest lists no experts")
            if mode == "multitask" and len(self.experts) != 1:
                raise InputError(
                    f"{exp_dir}: mode 'multitask' expects one expert, the manifest has {len(self.experts)}"
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

        self.router: Any = None
        if mode == "single":
            self._load_router(router_dir, model_dir)

        self.tokenizer = load_tokenizer(model_dir)
        self.tokenizer.padding_side = "left"
        base = load_model(model_dir, dtype=dtype, device=str(self.device)).eval()
        self.peft: Any = None
        if self.experts:
            from peft import PeftModel

            first, *rest = self.experts.items()
            self.peft = PeftModel.from_pretrained(
                base, str(first[1]), adapter_name=expert_adapter_name(first[0]), is_trainable=False
            )
            for j, path in rest:
                self.peft.load_adapter(str(path), adapter_name=expert_adapter_name(j), is_trainable=False)
            if mode == "elrea":
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

        if mode == "elrea":
            self._load_elrea(features_path, projector_path, assignments_path)
        if mode == "oracle":
            self._load_oracle()
        self.last_routing: list[dict[str, Any]] = []
        self.last_timing: dict[str, float] = {}
        self._forward_calls = 0

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

    def _load_router(self, router_dir: str | os.PathLike | None, model_dir: str | os.PathLike) -> None:
        from gs.router import Router

        # No ``experts=`` check at load: a router may know fewer experts than the manifest (some are
        # never chosen); one that knows an expert the manifest lacks is an error, named here.
        self.router = Router.load(router_dir, model_dir=model_dir)
        unknown = sorted(set(self.router.expert_ids) - set(self.expert_ids))
        if unknown:
            raise InputError(
                f"{router_dir}: router routes to expert(s) {unknown} that {self.experts_dir}/experts.json "
                f"does not have (its experts: {self.expert_ids})"
            )

    def _load_elrea(
        self,
        features_path: str | os.PathLike | None,
        projector_path: str | os.PathLike | None,
        assignments_path: str | os.PathLike | None,
    ) -> None:
        from gs.experts import read_assignments
        from gs.projection import load_projector

        assert features_path is not None and assignments_path is not None and self.manifest is not None
        with np.load(features_path, allow_pickle=False) as f:
            if "elrea_dim" not in f or "ids" not in f:
                raise InputError(f"{features_path}: needs arrays 'ids' and 'elrea_dim'")
            dim = int(f["elrea_dim"])
            # ELREA's own features (instruction-token gradients, like the on-the-fly test gradient)
            # when the extract stage wrote them; else the projection of the clustering gradients.
            key = "elrea_features" if "elrea_features" in f else f"projected_{dim}"
            if key not in f:
                raise InputError(f"{features_path}: no array {key!r} (elrea_dim={dim})")
            ids = [str(i) for i in f["ids"]]
            feats = np.asarray(f[key], dtype=np.float64)  # (n, p)
        proj_path = (
            Path(projector_path)
            if projector_path is not None
            else Path(features_path).parent / (f"projector_{dim}.joblib")
        )
        self.projector = load_projector(proj_path)
        if self.projector.dim != dim:
            raise InputError(f"{proj_path}: projects to {self.projector.dim} dims, features have {dim}")
        frame = read_assignments(assignments_path)
        row_of = {i: r for r, i in enumerate(ids)}
        missing = [i for i in frame["id"] if i not in row_of]
        if missing:
            raise InputError(f"{assignments_path}: sample {missing[0]!r} has no gradient feature in {features_path}")
        mapping = self.manifest["cluster_to_expert"]
        if not mapping and len(self.expert_ids) == 1:
            mapping = {int(c): self.expert_ids[0] for c in frame["cluster"].unique()}
        unmapped = sorted({int(c) for c in frame["cluster"]} - set(mapping))
        if unmapped:
            raise InputError(f"{assignments_path}: cluster(s) {unmapped} have no expert in {self.experts_dir}")
        norms = np.linalg.norm(feats, axis=1, keepdims=True)
        unit = feats / np.maximum(norms, np.finfo(np.float64).tiny)
        experts_of_row = np.array([mapping[int(c)] for c in frame["cluster"]])
        rows = np.array([row_of[i] for i in frame["id"]])
        centroids = []
        for j in self.expert_ids:
            mine = rows[experts_of_row == j]
            if len(mine) == 0:
                raise InputError(f"expert {j}: no training sample in {assignments_path} maps to it")
            c = unit[mine].mean(axis=0)
            centroids.append(c / max(np.linalg.norm(c), np.finfo(np.float64).tiny))
        self.centroids = np.stack(centroids)  # (k, p), unit rows, in expert_ids order
        self.elrea_dim = dim

    def _load_oracle(self) -> None:
        assert self.manifest is not None
        table: dict[str, tuple[int, float, int]] = {}
        for entry in self.manifest["experts"]:
            j = int(entry["expert"])
            n_j = max(1, int(entry.get("n_train") or sum((entry.get("domains") or {}).values()) or 1))
            for dom, n in (entry.get("domains") or {}).items():
                key = (int(n), int(n) / n_j, -j)  # most samples of the domain, then purity, then low id
                if dom not in table or key > table[dom]:
                    table[dom] = key
        if not table:
            raise InputError(f"{self.experts_dir}/experts.json: no per-expert domain counts for the oracle")
        self.oracle_table = {dom: -key[2] for dom, key in table.items()}

    # -- adapters --------------------------------------------------------------------------------

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

    def _elrea_similarities(self, prompts: list[str]) -> tuple[np.ndarray, float]:
        """Cosine similarities (b, k) of each prompt's projected warm-up gradient to the centroids,
        and the seconds spent on the gradients and projection."""
        from gs.gradients import SampleGradientError, per_sample_lora_gradients
        from gs.prompting import collate, encode_example

        start = time.perf_counter()
        self._activate(WARMUP_ADAPTER)
        bs = int(self.params["gradient_batch_size"])
        max_len = int(self.params["gradient_max_length"])
        feats = []
        for s in range(0, len(prompts), bs):
            chunk = prompts[s : s + bs]
            # No answer at test time: the loss is on the instruction (prompt) tokens, as ELREA does.
            enc = [
                encode_example(self.tokenizer, {"id": str(s + k), "instruction": p}, max_len, "instruction")
                for k, p in enumerate(chunk)
            ]
            try:
                grads = per_sample_lora_gradients(self.model, collate(enc, self.pad_id))  # (b, d)
            except SampleGradientError as e:
                raise InputError(f"ELREA gradient of prompt(s) {[s + i for i in e.positions]}: {e}") from None
            if grads.shape[1] != self.projector.d:
                raise InputError(
                    f"warm-up adapter gives gradients of dimension {grads.shape[1]}, the projector expects "
                    f"{self.projector.d}: features and warm-up adapter do not match"
                )
            grads = grads / grads.norm(dim=1, keepdim=True).clamp_min(torch.finfo(grads.dtype).tiny)
            feats.append(self.projector.transform(grads))  # (b, p)
        _sync(self.device)
        seconds = time.perf_counter() - start
        x = np.concatenate(feats).astype(np.float64)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(np.float64).tiny)
        return x @ self.centroids.T, seconds

    def route(self, prompts: list[str], domains: list[str] | None = None) -> list[dict[str, Any]]:
        """Routing of each prompt: ``{"experts": [ids], "weights": [floats]}`` (see ``last_routing``).

        Also fills ``last_timing["route_s"]`` and ``["gradient_s"]``.
        """
        start = time.perf_counter()
        gradient_s = 0.0
        n = len(prompts)
        if self.mode == "base":
            routes = [{"experts": [], "weights": []} for _ in range(n)]
        elif self.mode == "multitask":
            routes = [{"experts": [self.expert_ids[0]], "weights": [1.0]} for _ in range(n)]
        elif self.mode == "uniform":
            w = 1.0 / len(self.expert_ids)
            routes = [{"experts": list(self.expert_ids), "weights": [w] * len(self.expert_ids)} for _ in range(n)]
        elif self.mode == "single":
            chosen = [int(j) for j in self.router.predict(list(prompts))] if n else []
            bad = sorted(set(chosen) - set(self.expert_ids))
            if bad:
                raise InputError(
                    f"router chose expert(s) {bad}, which {self.experts_dir}/experts.json does not have "
                    f"(its experts: {self.expert_ids})"
                )
            routes = [{"experts": [j], "weights": [1.0]} for j in chosen]
        elif self.mode == "oracle":
            if domains is None or len(domains) != n:
                raise InputError(f"mode 'oracle' needs one domain per prompt ({n} prompts, domains={domains!r})")
            routes = []
            for d in domains:
                if str(d) not in self.oracle_table:
                    raise InputError(
                        f"oracle: no expert was trained on domain {d!r} (known: {sorted(self.oracle_table)})"
                    )
                routes.append({"experts": [self.oracle_table[str(d)]], "weights": [1.0], "domain": str(d)})
        else:  # elrea
            routes = []
            if n:
                sims, gradient_s = self._elrea_similarities(list(prompts))
                weights = mixture_weights(sims, float(self.params["temperature"]), self.params["top_m"])
                for i in range(n):
                    # Most similar first; zero-weight experts (outside the top m) are not run.
                    order = [c for c in np.argsort(-weights[i], kind="stable") if weights[i, c] > 0]
                    routes.append(
                        {
                            "experts": [self.expert_ids[c] for c in order],
                            "weights": [float(weights[i, c]) for c in order],
                            "similarities": [float(s) for s in sims[i]],
                        }
                    )
        self.last_timing["route_s"] = time.perf_counter() - start
        self.last_timing["gradient_s"] = gradient_s
        return routes

    # -- decoding --------------------------------------------------------------------------------

    def _encode(self, prompts: list[str]) -> list[list[int]]:
        if not prompts:
            return []
        texts = [format_prompt(self.tokenizer, {"instruction": p}) for p in prompts]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        limit = self.params["max_prompt_tokens"]
        # Keep the end: the generation header must stay for the model to answer.
        return [list(x[-int(limit) :]) if limit else list(x) for x in ids]

    def _streams(self, token_lists: list[list[int]], routes: list[dict[str, Any]]) -> list[_Stream]:
        """One stream per adapter used by this batch, each with its rows left padded."""
        adapters: dict[str | None, list[tuple[int, float]]] = {}
        for i, r in enumerate(routes):
            if self.mode == "base":
                adapters.setdefault(None, []).append((i, 1.0))
            for j, w in zip(r["experts"], r["weights"], strict=True):
                adapters.setdefault(expert_adapter_name(j), []).append((i, float(w)))
        streams = []
        for adapter, members in sorted(adapters.items(), key=lambda kv: kv[0] or ""):
            rows = [i for i, _ in members]
            width = max(len(token_lists[i]) for i in rows)
            ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for k, i in enumerate(rows):
                n = len(token_lists[i])
                ids[k, width - n :] = torch.tensor(token_lists[i], dtype=torch.long)
                mask[k, width - n :] = 1
            # Positions count real tokens only, so a left-padded prompt sees the positions it would alone.
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            streams.append(
                _Stream(
                    adapter=adapter,
                    rows=torch.tensor(rows, dtype=torch.long, device=self.device),
                    weights=torch.tensor([w for _, w in members], dtype=torch.float32, device=self.device)[:, None],
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    position_ids=pos.to(self.device),
                )
            )
        return streams

    @torch.inference_mode()
    def _decode_batch(
        self,
        token_lists: list[list[int]],
        routes: list[dict[str, Any]],
        *,
        max_new_tokens: int,
        stop: list[str] | None,
        ignore_eos: bool,
        on_first_token: Any = None,
    ) -> tuple[list[list[int]], torch.Tensor]:
        """Greedy decoding of one batch; returns the generated ids per row and the step-0 mixture (b, V).

        At each step every stream (adapter) advances its own KV cache by one forward; the rows'
        next-token distributions are ``sum_e w_e softmax(logits_e)`` over the row's experts.
        """
        b = len(token_lists)
        streams = self._streams(token_lists, routes)
        generated: list[list[int]] = [[] for _ in range(b)]
        done = [False] * b
        first_mixture = torch.empty(0)
        for step in range(max_new_tokens):
            mixture: torch.Tensor | None = None
            for s in streams:
                self._activate(s.adapter)
                out = self.model(
                    input_ids=s.input_ids,
                    attention_mask=s.attention_mask,
                    position_ids=s.position_ids,
                    past_key_values=s.cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                self._forward_calls += 1
                s.cache = out.past_key_values
                probs = torch.softmax(out.logits[:, -1].float(), dim=-1)  # (r, V)
                if mixture is None:
                    mixture = torch.zeros((b, probs.shape[-1]), dtype=torch.float32, device=self.device)
                mixture.index_add_(0, s.rows, probs * s.weights)
            assert mixture is not None
            if step == 0:
                first_mixture = mixture
            next_ids = mixture.argmax(dim=-1).tolist()  # (b,) also synchronises the device
            if step == 0 and on_first_token is not None:
                on_first_token()
            for i in range(b):
                if done[i]:
                    continue
                tok = int(next_ids[i])
                if tok in self.eos_ids and not ignore_eos:
                    done[i] = True
                    continue
                generated[i].append(tok)
                if stop and any(x in self.tokenizer.decode(generated[i], skip_special_tokens=True) for x in stop):
                    done[i] = True
            if all(done) or step == max_new_tokens - 1:
                break
            # Finished rows keep being fed padding (their outputs are ignored): no cache surgery.
            feed = torch.tensor(
                [self.pad_id if done[i] else next_ids[i] for i in range(b)], dtype=torch.long, device=self.device
            )
            for s in streams:
                s.input_ids = feed[s.rows][:, None]
                s.attention_mask = torch.cat([s.attention_mask, s.attention_mask.new_ones((len(s.rows), 1))], dim=1)
                s.position_ids = s.position_ids[:, -1:] + 1
        return generated, first_mixture

    def _finish(self, ids: list[int], stop: list[str] | None) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if stop:
            cuts = [text.find(x) for x in stop if x and x in text]
            if cuts:
                text = text[: min(cuts)]
        return text

    def _batches(self, routes: list[dict[str, Any]], batch_size: int) -> list[list[int]]:
        """Prompt indices per decoding batch. Single-expert modes group prompts by expert first (so a
        batch has one adapter active); ensembles keep input order."""
        order = list(range(len(routes)))
        if self.mode not in ENSEMBLE_MODES:
            order.sort(key=lambda i: tuple(routes[i]["experts"]))  # stable: input order within a group
            groups: dict[tuple[int, ...], list[int]] = {}
            for i in order:
                groups.setdefault(tuple(routes[i]["experts"]), []).append(i)
            return [g[s : s + batch_size] for g in groups.values() for s in range(0, len(g), batch_size)]
        return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]

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
        Returns n strings in input order; fills :attr:`last_routing` and :attr:`last_timing`.
        """
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        prompts = [str(p) for p in prompts]
        start = time.perf_counter()
        self.last_timing = {}
        self._forward_calls = 0
        routes = self.route(prompts, domains)
        self.last_routing = routes
        token_lists = self._encode(prompts)
        outputs: list[str] = [""] * len(prompts)
        first: list[float] = []

        def mark_first() -> None:
            if not first:
                first.append(time.perf_counter() - start)

        batches = self._batches(routes, batch_size)
        new_tokens = 0
        for idx in tqdm(batches, desc=f"generate ({self.mode})", disable=len(batches) < 16, mininterval=5.0):
            generated, _ = self._decode_batch(
                [token_lists[i] for i in idx],
                [routes[i] for i in idx],
                max_new_tokens=max_new_tokens,
                stop=stop,
                ignore_eos=ignore_eos,
                on_first_token=mark_first,
            )
            for i, ids in zip(idx, generated, strict=True):
                outputs[i] = self._finish(ids, stop)
                new_tokens += len(ids)
        _sync(self.device)
        self.last_timing.update(
            {
                "first_token_s": first[0] if first else math.nan,
                "total_s": time.perf_counter() - start,
                "new_tokens": new_tokens,
                "forward_calls": self._forward_calls,
            }
        )
        return outputs

    def loglikelihood(
        self,
        prompts: list[str],
        continuations: list[str],
        *,
        domains: list[str] | None = None,
        batch_size: int = 8,
    ) -> list[tuple[float, bool, int]]:
        """Log-probability of each continuation after its prompt, under the routed mixture.

        ``prompts`` are user-message texts (the chat template is applied, as in :meth:`generate`);
        each continuation is the assistant's answer, tokenised on its own. Every prompt is routed as
        for generation, then each active expert runs one forward over ``prompt + continuation[:-1]``
        and the token log-probabilities are ``log sum_e w_e p_e(token)``, computed as a logsumexp
        (a single expert: its own log-softmax). Returns, per prompt in input order,
        ``(logprob in nats, is_greedy, n_tokens)``: ``is_greedy`` says whether the mixture's argmax
        gives every continuation token (lm-eval's second loglikelihood output). Fills
        :attr:`last_routing` and :attr:`last_timing`.
        """
        if len(prompts) != len(continuations):
            raise InputError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        start = time.perf_counter()
        self.last_timing = {}
        self._forward_calls = 0
        prompts = [str(p) for p in prompts]
        targets = [self.tokenizer(str(c), add_special_tokens=False)["input_ids"] for c in continuations]
        empty = [i for i, t in enumerate(targets) if not t]
        if empty:
            raise InputError(f"continuation {empty[0]} is empty: nothing to score")
        routes = self.route(prompts, domains)
        self.last_routing = routes
        contexts = self._encode(prompts)
        out: list[tuple[float, bool, int]] = [(math.nan, False, 0)] * len(prompts)
        batches = self._batches(routes, batch_size)
        for idx in tqdm(batches, desc=f"loglikelihood ({self.mode})", disable=len(batches) < 16, mininterval=5.0):
            for i, scores in zip(
                idx,
                self._score_batch([contexts[i] for i in idx], [targets[i] for i in idx], [routes[i] for i in idx]),
                strict=True,
            ):
                out[i] = scores
        _sync(self.device)
        self.last_timing.update({"total_s": time.perf_counter() - start, "forward_calls": self._forward_calls})
        return out

    @torch.inference_mode()
    def _score_batch(
        self, contexts: list[list[int]], targets: list[list[int]], routes: list[dict[str, Any]]
    ) -> list[tuple[float, bool, int]]:
        """:meth:`loglikelihood` of one batch (token ids), routes given."""
        # Inputs are left padded, so every row's continuation ends at the last column.
        inputs = [(c + t)[:-1] for c, t in zip(contexts, targets, strict=True)]
        keep = max(len(t) for t in targets)
        target = torch.full((len(targets), keep), -1, dtype=torch.long, device=self.device)
        for r, t in enumerate(targets):
            target[r, keep - len(t) :] = torch.tensor(t, dtype=torch.long)
        scored = target >= 0
        index = target.clamp(min=0)[:, :, None]
        streams = self._streams(inputs, routes)
        mixture: torch.Tensor | None = None  # (b, keep, V) log-probabilities of the mixture
        for s in streams:
            self._activate(s.adapter)
            logits = self.model(
                input_ids=s.input_ids,
                attention_mask=s.attention_mask,
                position_ids=s.position_ids,
                logits_to_keep=keep,
            ).logits.float()  # (r, keep, V)
            self._forward_calls += 1
            if len(streams) == 1:
                # One adapter for every row, weight 1 (all but the ensembles): no mixture tensor, which
                # at (b, keep, V) floats is what an ensemble's scoring costs in memory.
                token_lp = (logits.gather(-1, index[s.rows]) - torch.logsumexp(logits, dim=-1, keepdim=True))[..., 0]
                argmax = logits.argmax(dim=-1)
                break
            weighted = torch.log_softmax(logits, dim=-1) + torch.log(s.weights)[:, :, None]
            del logits
            if mixture is None:
                mixture = torch.full(
                    (len(targets), keep, weighted.shape[-1]), -math.inf, dtype=torch.float32, device=self.device
                )
            mixture[s.rows] = torch.logaddexp(mixture[s.rows], weighted)
        if mixture is not None:
            token_lp = mixture.gather(-1, index)[:, :, 0]
            argmax = mixture.argmax(dim=-1)
        logprob = torch.where(scored, token_lp, 0.0).sum(dim=1).tolist()
        greedy = ((argmax == target) | ~scored).all(dim=1).tolist()
        return [(float(lp), bool(g), len(t)) for lp, g, t in zip(logprob, greedy, targets, strict=True)]

    def next_token_distribution(self, prompts: list[str], domains: list[str] | None = None) -> torch.Tensor:
        """The step-0 next-token distribution (b, V) float32 on the CPU, all prompts in one batch:
        the routed expert's softmax, or the weighted mixture of the ensemble's softmaxes."""
        self.last_timing = {}
        self._forward_calls = 0
        routes = self.route([str(p) for p in prompts], domains)
        self.last_routing = routes
        _, mixture = self._decode_batch(
            self._encode([str(p) for p in prompts]), routes, max_new_tokens=1, stop=None, ignore_eos=True
        )
        return mixture.cpu()
