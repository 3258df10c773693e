"""Routing policies: which experts answer each prompt, and with which mixture weights.

A route is ``{"experts": [ids], "weights": [floats]}`` per prompt (weights sum to 1; ``"single"`` and
``"oracle"`` give one expert of weight 1.0, ``"base"`` none). :class:`RoutingPolicy` turns prompts
into routes for every mode of :data:`MODES`:

* ``"base"``: no expert. ``"multitask"``: the one expert of a one-expert folder.
* ``"single"`` (GradientSpace, arXiv 2512.06678): the router (:class:`gs.router.train.Router`) picks one.
* ``"elrea"`` (ELREA, arXiv 2502.00089, as described in ``shared/papers.md``; no public code, so the
  details are our reading): the prompt's LoRA gradient through the warm-up adapter (loss on the
  instruction tokens: a test prompt has no answer), L2-normalised, randomly projected with the saved
  projector, compared by cosine similarity with each expert's centroid (:class:`ElreaCentroids`);
  the ``top_m`` most similar experts are weighted by ``softmax(similarity / temperature)``
  (:func:`mixture_weights`).
* ``"uniform"``: equal weights over all experts.
* ``"oracle"``: the expert holding most training samples of the prompt's (hidden) domain; ties go to
  the expert purest in that domain, then to the lowest id (:func:`oracle_table`). An upper reference
  for what a router could gain by recovering the domain, not an achievable method.

:func:`adapter_groups` and :func:`route_batches` turn routes into the per-adapter rows that decoding
(:mod:`gs.evaluation.decoding`) and scoring (:mod:`gs.evaluation.scoring`) run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gs.io import InputError

MODES = ("base", "multitask", "single", "elrea", "uniform", "oracle")
ENSEMBLE_MODES = ("elrea", "uniform")
WARMUP_ADAPTER = "warmup"

Route = dict[str, Any]


def expert_adapter_name(expert: int) -> str:
    """Adapter name of expert ``expert`` inside the shared peft model."""
    return f"expert_{int(expert)}"


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


def load_router(router_dir: str | os.PathLike, model_dir: str | os.PathLike, expert_ids: list[int], experts_dir: Any):
    """The saved :class:`gs.router.train.Router`; an error names any expert it knows that the manifest lacks.

    A router may know fewer experts than the manifest (some are never chosen), so there is no
    ``experts=`` check at load.
    """
    from gs.router.train import Router

    router = Router.load(router_dir, model_dir=model_dir)
    unknown = sorted(set(router.expert_ids) - set(expert_ids))
    if unknown:
        raise InputError(
            f"{router_dir}: router routes to expert(s) {unknown} that {experts_dir}/experts.json "
            f"does not have (its experts: {expert_ids})"
        )
    return router


def oracle_table(manifest: dict[str, Any], experts_dir: Any) -> dict[str, int]:
    """Domain -> expert with most training samples of it (then the purest, then the lowest id)."""
    table: dict[str, tuple[int, float, int]] = {}
    for entry in manifest["experts"]:
        j = int(entry["expert"])
        n_j = max(1, int(entry.get("n_train") or sum((entry.get("domains") or {}).values()) or 1))
        for dom, n in (entry.get("domains") or {}).items():
            key = (int(n), int(n) / n_j, -j)  # most samples of the domain, then purity, then low id
            if dom not in table or key > table[dom]:
                table[dom] = key
    if not table:
        raise InputError(f"{experts_dir}/experts.json: no per-expert domain counts for the oracle")
    return {dom: -key[2] for dom, key in table.items()}


@dataclass
class ElreaCentroids:
    """ELREA's routing state: the projector of the prompt gradients and one unit centroid per expert.

    Attributes:
        projector: :class:`gs.gradients.projection.Projector` from the warm-up adapter's d to ``dim``.
        centroids: (k, dim) float64 unit rows, in ``expert_ids`` order: the normalised mean of the
            normalised training features of the samples whose cluster maps to each expert.
        dim: the projected dimension.
    """

    projector: Any
    centroids: np.ndarray
    dim: int

    @classmethod
    def load(
        cls,
        features_path: str | os.PathLike,
        projector_path: str | os.PathLike | None,
        assignments_path: str | os.PathLike,
        manifest: dict[str, Any],
        expert_ids: list[int],
        experts_dir: Any,
    ) -> ElreaCentroids:
        """From ``features.npz`` (``ids``, ``elrea_dim`` and ``elrea_features`` or ``projected_<dim>``),
        the projector (default ``projector_<dim>.joblib`` next to the features) and the assignments CSV
        mapped to experts by the manifest's ``cluster_to_expert``."""
        from gs.cluster.assignments import read_assignments
        from gs.gradients.projection import load_projector

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
        projector = load_projector(proj_path)
        if projector.dim != dim:
            raise InputError(f"{proj_path}: projects to {projector.dim} dims, features have {dim}")
        frame = read_assignments(assignments_path)
        row_of = {i: r for r, i in enumerate(ids)}
        missing = [i for i in frame["id"] if i not in row_of]
        if missing:
            raise InputError(f"{assignments_path}: sample {missing[0]!r} has no gradient feature in {features_path}")
        mapping = manifest["cluster_to_expert"]
        if not mapping and len(expert_ids) == 1:
            mapping = {int(c): expert_ids[0] for c in frame["cluster"].unique()}
        unmapped = sorted({int(c) for c in frame["cluster"]} - set(mapping))
        if unmapped:
            raise InputError(f"{assignments_path}: cluster(s) {unmapped} have no expert in {experts_dir}")
        tiny = np.finfo(np.float64).tiny
        unit = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), tiny)
        experts_of_row = np.array([mapping[int(c)] for c in frame["cluster"]])
        rows = np.array([row_of[i] for i in frame["id"]])
        centroids = []
        for j in expert_ids:
            mine = rows[experts_of_row == j]
            if len(mine) == 0:
                raise InputError(f"expert {j}: no training sample in {assignments_path} maps to it")
            c = unit[mine].mean(axis=0)
            centroids.append(c / max(np.linalg.norm(c), tiny))
        return cls(projector=projector, centroids=np.stack(centroids), dim=dim)


def elrea_prompt_features(
    model: Any, tokenizer: Any, prompts: list[str], projector: Any, *, batch_size: int, max_length: int, pad_id: int
) -> np.ndarray:
    """Unit projected gradients (b, dim) float64 of ``prompts`` through ``model``'s active (warm-up) adapter.

    Each prompt's per-sample LoRA gradient (loss on the instruction tokens, ``max_length`` tokens at
    most) is L2-normalised, projected, and the projection normalised again.
    """
    from gs.data.prompting import collate, encode_example
    from gs.gradients.per_sample import SampleGradientError, per_sample_lora_gradients

    feats = []
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s : s + batch_size]
        # No answer at test time: the loss is on the instruction (prompt) tokens, as ELREA does.
        enc = [
            encode_example(tokenizer, {"id": str(s + k), "instruction": p}, max_length, "instruction")
            for k, p in enumerate(chunk)
        ]
        try:
            grads = per_sample_lora_gradients(model, collate(enc, pad_id))  # (b, d)
        except SampleGradientError as e:
            raise InputError(f"ELREA gradient of prompt(s) {[s + i for i in e.positions]}: {e.problem}") from None
        if grads.shape[1] != projector.d:
            raise InputError(
                f"warm-up adapter gives gradients of dimension {grads.shape[1]}, the projector expects "
                f"{projector.d}: features and warm-up adapter do not match"
            )
        grads = grads / grads.norm(dim=1, keepdim=True).clamp_min(torch.finfo(grads.dtype).tiny)
        feats.append(projector.transform(grads))  # (b, p)
    x = np.concatenate(feats).astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(np.float64).tiny)


class RoutingPolicy:
    """Routes of one mode (module doc). ``router``, ``oracle`` and ``elrea`` hold the state of the
    modes that need it (None otherwise); ``params`` are ``temperature`` and ``top_m`` (ELREA)."""

    def __init__(
        self,
        mode: str,
        expert_ids: list[int],
        *,
        params: dict[str, Any],
        router: Any = None,
        oracle: dict[str, int] | None = None,
        elrea: ElreaCentroids | None = None,
        experts_dir: Any = None,
    ) -> None:
        self.mode = mode
        self.expert_ids = list(expert_ids)
        self.params = params
        self.router = router
        self.oracle = oracle
        self.elrea = elrea
        self.experts_dir = experts_dir

    def route(
        self,
        prompts: list[str],
        domains: list[str] | None = None,
        features: Callable[[list[str]], np.ndarray] | None = None,
    ) -> list[Route]:
        """One route per prompt, in input order. ``domains``: the oracle's; ``features``: ELREA's
        prompt features (b, dim), unit rows (:func:`elrea_prompt_features` through the warm-up adapter)."""
        n = len(prompts)
        ids = self.expert_ids
        if self.mode == "base":
            return [{"experts": [], "weights": []} for _ in range(n)]
        if self.mode == "multitask":
            return [{"experts": [ids[0]], "weights": [1.0]} for _ in range(n)]
        if self.mode == "uniform":
            return [{"experts": list(ids), "weights": [1.0 / len(ids)] * len(ids)} for _ in range(n)]
        if self.mode == "single":
            chosen = [int(j) for j in self.router.predict(list(prompts))] if n else []
            bad = sorted(set(chosen) - set(ids))
            if bad:
                raise InputError(
                    f"router chose expert(s) {bad}, which {self.experts_dir}/experts.json does not have "
                    f"(its experts: {ids})"
                )
            return [{"experts": [j], "weights": [1.0]} for j in chosen]
        if self.mode == "oracle":
            return self._oracle(domains, n)
        return self._elrea(prompts, features)

    def _oracle(self, domains: list[str] | None, n: int) -> list[Route]:
        assert self.oracle is not None
        if domains is None or len(domains) != n:
            raise InputError(f"mode 'oracle' needs one domain per prompt ({n} prompts, domains={domains!r})")
        routes = []
        for d in domains:
            if str(d) not in self.oracle:
                raise InputError(f"oracle: no expert was trained on domain {d!r} (known: {sorted(self.oracle)})")
            routes.append({"experts": [self.oracle[str(d)]], "weights": [1.0], "domain": str(d)})
        return routes

    def _elrea(self, prompts: list[str], features: Callable[[list[str]], np.ndarray] | None) -> list[Route]:
        assert self.elrea is not None and features is not None
        if not prompts:
            return []
        sims = features(list(prompts)) @ self.elrea.centroids.T  # (b, k) cosines
        weights = mixture_weights(sims, float(self.params["temperature"]), self.params["top_m"])
        routes = []
        for i in range(len(prompts)):
            # Most similar first; zero-weight experts (outside the top m) are not run.
            order = [c for c in np.argsort(-weights[i], kind="stable") if weights[i, c] > 0]
            routes.append(
                {
                    "experts": [self.expert_ids[c] for c in order],
                    "weights": [float(weights[i, c]) for c in order],
                    "similarities": [float(s) for s in sims[i]],
                }
            )
        return routes


def adapter_groups(routes: list[Route], *, base: bool) -> list[tuple[str | None, list[int], list[float]]]:
    """Per adapter used by a batch: ``(adapter name, rows, weights)``, sorted by name.

    ``base``: every row on the bare model (adapter None, weight 1). Rows are batch positions.
    """
    adapters: dict[str | None, list[tuple[int, float]]] = {}
    for i, r in enumerate(routes):
        if base:
            adapters.setdefault(None, []).append((i, 1.0))
        for j, w in zip(r["experts"], r["weights"], strict=True):
            adapters.setdefault(expert_adapter_name(j), []).append((i, float(w)))
    return [
        (adapter, [i for i, _ in members], [w for _, w in members])
        for adapter, members in sorted(adapters.items(), key=lambda kv: kv[0] or "")
    ]


def route_batches(routes: list[Route], batch_size: int, *, ensemble: bool) -> list[list[int]]:
    """Prompt indices per batch. Single-expert modes group prompts by expert first (so a batch has one
    adapter active); ensembles keep input order."""
    order = list(range(len(routes)))
    if ensemble:
        return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in sorted(order, key=lambda i: tuple(routes[i]["experts"])):  # stable: input order within a group
        groups.setdefault(tuple(routes[i]["experts"]), []).append(i)
    return [g[s : s + batch_size] for g in groups.values() for s in range(0, len(g), batch_size)]
