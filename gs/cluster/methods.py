"""Cluster the training pool: GradientSpace and the baselines it is compared against.

Every method maps the ``n`` pooled training samples (pool order = the order of ``ids`` in
``features.npz``) to labels ``0..k-1``; one LoRA expert is later trained per cluster.

``gradientspace`` (arXiv 2512.06678)
    Clusters in *full-dimensional* LoRA-gradient space through an online SVD: the upstream stage
    streams the L2-normalised per-sample gradients ``g_i`` through :mod:`gs.gradients.svd` and stores only
    their coordinates ``c_ij = <g_i, v_j>`` in the top-``r`` right singular directions ``v_j``
    (``svd_coords``, ``(n, r)``), never the gradients. The abstract says the clustering is done
    "with an online SVD" but not how clusters are read off the SVD, so the assignment rule is OUR
    READING, a config option (``assign``):

    * ``"argmax_abs"``: ``cluster(i) = argmax_j |c_ij|`` over the top ``m = k`` directions: each
      singular direction is a cluster and a sample joins the direction it is most aligned with
      (up to sign). ``k <= r``.
    * ``"signed"``: as above, but the two signs of a direction are different clusters:
      ``j* = argmax_j |c_ij|``, ``cluster(i) = 2 j* + [c_ij* < 0]``, so ``k = 2m``, ``m <= r``.
      Gradients pointing in opposite directions pull the weights in opposite directions, so the
      sign matters for a "one expert per gradient direction" reading.
    * ``"kmeans"`` (default): k-means on the ``r`` coordinates, by default row-normalised
      (``normalize: true``), i.e. k-means on the unit sphere ~ cosine geometry, matching the
      normalisation of the gradients themselves. This is the default because the SVD is not
      centred (:mod:`gs.gradients.svd`): the top direction is close to the mean gradient, with which most
      samples are aligned, so the argmax rules tend to put most samples in cluster 0 on real data;
      they are kept as ablations (methods ``gradientspace_argmax_abs``, ``gradientspace_signed``).

    The argmax rules can leave a cluster empty (no sample has that direction as its argmax). Such
    clusters are DROPPED and the rest renumbered to ``0..k'-1`` in ascending old-cluster order;
    ``cluster_info.json`` records ``k_requested``, ``empty_clusters`` (old ids), ``renumbered``
    (old -> new) and, per final cluster, its direction (and sign). The same compaction is applied to
    every method (k-means with ``n >= k`` distinct points never leaves a cluster empty, but with
    duplicate points it can).

``elrea`` (Li et al., arXiv 2502.00089) and ``rp<p>``
    ELREA clusters randomly projected gradient features. Here: k-means on the row-normalised
    ``projected_<p>`` (cosine k-means; the projections are of normalised gradients) with
    ``p = elrea_dim`` (from ``features.npz``, overridable by the ``elrea_dim`` param). ``rp<p>`` is
    the same rule at projection size ``p`` (the projection-size ablation), e.g. ``rp64``.

``semantic`` (c-BTM, Gururangan et al., arXiv 2303.14177)
    k-means on sentence embeddings of the user prompts (all-MiniLM-L6-v2 via
    :func:`gs.models.embeddings.embed_prompts`, L2-normalised, so cosine k-means); routing later goes to the
    nearest centroid (:func:`cluster_centroids`). c-BTM itself used tf-idf features and balanced
    k-means; embedding k-means is the "semantic clustering" baseline the GradientSpace abstract
    names.

``random``: a seeded balanced random assignment (every cluster non-empty, sizes differ by <= 1).

``oracle``: the true domain, mapped to ``0..k-1`` in sorted domain-name order; ``k`` = number of
domains and the ``k`` param is ignored (recorded in the info).

The CLI's ``--seeds N`` reruns the method on the same inputs at seeds ``seed..seed+N-1`` (k-means
initialisation, the random permutation) into ``seed_labels.csv`` (:func:`write_seed_labels`), from which the
cluster-quality table reports mean and spread (:mod:`gs.cluster.quality`); ``assignments.csv`` is the first seed's.

The domain label is NEVER given to any method but ``oracle``: :func:`cluster` strips it from the
inputs before calling any other method.

``k: auto`` chooses ``k`` by a stated criterion (param ``criterion``), over the candidates
``k_min <= k <= k_max`` (also ``k <= n - 1`` for silhouette, ``k <= r`` / ``k <= 2r`` for the argmax
rules, and only even ``k`` for ``signed``):

* ``"silhouette"``: run the method for every candidate ``k`` and keep the one with the highest
  mean silhouette (Rousseeuw 1987) ``s = mean_i (b_i - a_i) / max(a_i, b_i)`` (``a_i`` mean
  distance to its own cluster, ``b_i`` to the nearest other one), Euclidean, on the matrix the
  method clusters (row-normalised when the method is cosine; for the argmax rules, the
  row-normalised ``r`` coordinates). Computed on a seeded subsample of ``silhouette_sample`` rows
  when ``n`` is larger (it is ``O(n^2)``). Ties go to the smaller ``k``.
* ``"elbow"``: from the singular values ``s_1 >= ... >= s_R`` of the gradient SVD (for
  ``elrea``/``rp``/``semantic``: of their own row-normalised, uncentred feature matrix). The number
  of directions ``m`` is, with ``elbow_rule``:

  - ``"log_gap"`` (default): ``m = argmax_j (log s_j - log s_{j+1})``: keep the directions before
    the largest relative drop of the spectrum;
  - ``"knee"``: with ``x_j = (j - 1) / (R - 1)``, ``y_j = (log s_j - log s_R) / (log s_1 - log s_R)``,
    ``m = argmax_j (y_j - (1 - x_j))``: the point of the normalised log-spectrum highest above the
    chord joining its ends (the Kneedle construction, Satopaa et al., ICDCS-W 2011, for a curve that
    stays high and then falls).

  Then ``k = m`` (``2m`` for ``signed``). Singular values below ``1e-12 s_1`` are floored there.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gs.checks import int_param
from gs.cluster.assignments import ASSIGNMENTS_CSV, SEED_LABELS_CSV, align_records, write_assignments, write_seed_labels
from gs.cluster.features import GradientFeatures, load_features
from gs.io import InputError, parse_params, read_json, read_jsonl, run_cli

METHODS = ("gradientspace", "elrea", "semantic", "random", "oracle")
ASSIGN_RULES = ("argmax_abs", "signed", "kmeans")
CRITERIA = ("silhouette", "elbow")
ELBOW_RULES = ("log_gap", "knee")
# Ablations registered next to METHODS: GradientSpace with a fixed assignment rule.
GS_VARIANTS = tuple(f"gradientspace_{rule}" for rule in ASSIGN_RULES)
_RP = re.compile(r"rp(\d+)")


DEFAULTS: dict[str, Any] = {
    "assign": "kmeans",
    "normalize": True,
    "n_init": 10,
    "criterion": "silhouette",
    "k_min": 2,
    "k_max": 10,
    "silhouette_sample": 5000,
    "elbow_rule": "log_gap",
    "elrea_dim": None,
    "encoder": "minilm",
    "batch_size": 32,
}
PARAM_KEYS = ("k", *DEFAULTS)
# Grouping sub-sections of the config (their keys apply to every method) and workflow-level keys
# that the Snakefile reads and this module ignores.
GROUP_SECTIONS: dict[str, tuple[str, ...]] = {
    "kmeans": ("n_init",),
    "auto_k": ("criterion", "k_min", "k_max", "silhouette_sample", "elbow_rule"),
}
WORKFLOW_KEYS = ("methods", "ablation_dims", "quality_seeds", "ablation")
_FLOOR = 1e-12  # relative floor on singular values before taking logs


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClusterInputs:
    """Everything a method may read. ``embeddings`` ``(n, h)``: prompt embeddings (``semantic``);
    ``domains`` ``(n,)``: true domains, given to ``oracle`` only (see :func:`cluster`)."""

    features: GradientFeatures
    embeddings: np.ndarray | None = None
    domains: Sequence[str] | None = None


@dataclasses.dataclass
class Clustering:
    """A method's result: ``labels`` ``(n,)`` int64 in ``0..k-1`` (all used), pool order; ``info``
    (JSON-ready) with at least ``method``, ``k``, ``sizes``."""

    labels: np.ndarray
    info: dict[str, Any]


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _checked(x: Any, ids: np.ndarray, name: str) -> np.ndarray:
    """``x`` as a finite float64 ``(n, f)`` matrix; a NaN/inf row is named by its sample id."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != ids.shape[0]:
        raise InputError(f"{name}: expected shape (n={ids.shape[0]}, features), got {arr.shape}")
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        i = int(np.argmin(finite))
        raise InputError(f"{name}: row {i} (sample id {str(ids[i])!r}) contains NaN or inf")
    return arr


def row_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` ``(n, f)`` scaled to unit L2 norm; all-zero rows stay zero (no direction)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x, dtype=np.float64), where=norms > 0)


def _check_k(k: Any, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise InputError(f"k must be an integer >= 1 or 'auto', got {k!r}")
    if k < 1:
        raise InputError(f"k={k} must be at least 1")
    if k > n:
        raise InputError(f"k={k} is larger than the number of samples n={n}")
    return int(k)


def compact_labels(labels: np.ndarray, k_requested: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Drop empty clusters and renumber to ``0..k'-1`` keeping the old order.

    Returns the new labels ``(n,)`` and info: ``k``, ``k_requested``, ``empty_clusters`` (old ids),
    ``renumbered`` (``{old: new}`` as strings, or ``None`` when nothing changed), ``sizes``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=k_requested)
    used = np.flatnonzero(counts > 0)
    empty = [int(c) for c in np.flatnonzero(counts == 0)]
    mapping = np.full(counts.shape[0], -1, dtype=np.int64)
    mapping[used] = np.arange(used.shape[0])
    new = mapping[labels]
    info = {
        "k": int(used.shape[0]),
        "k_requested": int(k_requested),
        "empty_clusters": empty,
        "renumbered": {str(int(o)): int(i) for i, o in enumerate(used)} if empty else None,
        "sizes": [int(c) for c in counts[used]],
    }
    return new, info


def _kmeans(x: np.ndarray, k: int, n_init: int, seed: int) -> np.ndarray:
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        # "fewer distinct clusters than k" (duplicate points): handled by compact_labels.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(x).astype(np.int64)


def _silhouette(x: np.ndarray, labels: np.ndarray, sample: int, seed: int) -> float:
    from sklearn.metrics import silhouette_score

    n_labels = np.unique(labels).shape[0]
    if n_labels < 2 or n_labels > x.shape[0] - 1:
        return float("nan")
    size = None if x.shape[0] <= sample else sample
    score = silhouette_score(x, labels, metric="euclidean", sample_size=size, random_state=seed)
    return float(score)


def elbow(singular_values: Any, k_min: int = 1, k_max: int | None = None, rule: str = "log_gap") -> int:
    """Number of leading directions ``m`` in ``[k_min, k_max]`` by the elbow ``rule`` (module docstring).

    ``singular_values`` ``(R,)`` descending, ``R >= 2``; ``k_max`` defaults to ``R - 1`` for
    ``"log_gap"`` (a gap needs a next value) and ``R`` for ``"knee"``.
    """
    s = np.asarray(singular_values, dtype=np.float64).ravel()
    if rule not in ELBOW_RULES:
        raise InputError(f"unknown elbow_rule {rule!r}; expected one of {', '.join(ELBOW_RULES)}")
    if s.shape[0] < 2 or not np.isfinite(s).all() or s[0] <= 0:
        raise InputError(f"the elbow rule needs at least 2 finite singular values with s_1 > 0, got {s.tolist()}")
    s = np.sort(s)[::-1]
    logs = np.log(np.maximum(s, _FLOOR * s[0]))
    top = s.shape[0] - 1 if rule == "log_gap" else s.shape[0]
    hi = top if k_max is None else min(k_max, top)
    lo = max(1, k_min)
    if lo > hi:
        raise InputError(f"elbow: no candidate in [k_min={k_min}, k_max={hi}] with {s.shape[0]} singular values")
    if rule == "log_gap":
        score = logs[:-1] - logs[1:]  # score[j-1] = log s_j - log s_{j+1}
    else:
        span = logs[0] - logs[-1]
        if span <= 0:  # flat spectrum: no knee; take the smallest candidate
            return lo
        x = np.arange(s.shape[0]) / (s.shape[0] - 1)
        y = (logs - logs[-1]) / span
        score = y - (1.0 - x)
    return lo + int(np.argmax(score[lo - 1 : hi]))


def elbow_scores(singular_values: Any, rule: str = "log_gap") -> list[float]:
    """The per-``m`` scores the elbow ``rule`` maximises (``m = 1, 2, ...``), for the info file."""
    s = np.sort(np.asarray(singular_values, dtype=np.float64).ravel())[::-1]
    logs = np.log(np.maximum(s, _FLOOR * s[0]))
    if rule == "log_gap":
        return [float(v) for v in logs[:-1] - logs[1:]]
    span = logs[0] - logs[-1]
    if span <= 0:
        return [0.0] * s.shape[0]
    x = np.arange(s.shape[0]) / (s.shape[0] - 1)
    return [float(v) for v in (logs - logs[-1]) / span - (1.0 - x)]


# A fixed-k clusterer: k -> raw labels (possibly with empty clusters) and per-cluster extra info.
FixedK = Callable[[int], tuple[np.ndarray, dict[str, Any]]]


def _choose_k(
    params: Mapping[str, Any],
    run: FixedK,
    *,
    geometry: np.ndarray,
    spectrum: Callable[[], np.ndarray],
    n: int,
    k_cap: int,
    even: bool,
    seed: int,
) -> tuple[int, dict[str, Any]]:
    """Pick ``k`` when ``k: auto``; returns ``(k, info)`` with the criterion and its scores.

    ``criterion_scores`` is keyed by candidate ``k`` (silhouette; ``null`` when a candidate gave < 2
    clusters) or by the number of directions ``m = 1..R`` (elbow: the gap / height being maximised).
    """
    criterion = params["criterion"]
    if criterion not in CRITERIA:
        raise InputError(f"unknown criterion {criterion!r}; expected one of {', '.join(CRITERIA)}")
    k_min = int_param(params["k_min"], "k_min", minimum=1)
    k_max = int_param(params["k_max"], "k_max", minimum=1)
    if criterion == "elbow":
        s = spectrum()
        rule = params["elbow_rule"]
        step = 2 if even else 1
        m_min = max(1, -(-k_min // step))
        m_max = min(k_max // step, k_cap // step, n // step)
        m = elbow(s, m_min, m_max, rule)
        return m * step, {
            "criterion": "elbow",
            "elbow_rule": rule,
            "elbow_directions": m,
            "criterion_scores": {str(j + 1): v for j, v in enumerate(elbow_scores(s, rule))},
        }
    sample = int_param(params["silhouette_sample"], "silhouette_sample", minimum=2)
    lo, hi = max(2, k_min), min(k_max, k_cap, n - 1)
    candidates = [k for k in range(lo, hi + 1) if not even or k % 2 == 0]
    if not candidates:
        raise InputError(
            f"k: auto (silhouette) has no candidate k in [{lo}, {hi}]"
            + (" that is even" if even else "")
            + f" (n={n}, k_min={k_min}, k_max={k_max})"
        )
    scores = {}
    for k in candidates:
        raw, _ = run(k)
        scores[k] = _silhouette(geometry, raw, sample, seed)
    valid = {k: v for k, v in scores.items() if np.isfinite(v)}
    if not valid:
        raise InputError(f"k: auto (silhouette): no candidate k in {candidates} gave at least 2 clusters")
    best = max(valid, key=lambda k: (valid[k], -k))
    return best, {
        "criterion": "silhouette",
        "criterion_scores": {str(k): (None if not np.isfinite(v) else v) for k, v in scores.items()},
    }


def _run_with_k(
    method: str,
    params: Mapping[str, Any],
    run: FixedK,
    *,
    geometry: np.ndarray,
    spectrum: Callable[[], np.ndarray],
    n: int,
    k_cap: int | None = None,
    even: bool = False,
    seed: int,
    extra: dict[str, Any] | None = None,
) -> Clustering:
    """Resolve ``k`` (fixed or auto), run, compact empty clusters, assemble the info."""
    if "k" not in params or params["k"] is None:
        raise InputError(f"{method}: param 'k' is required (an integer >= 1 or 'auto')")
    cap = n if k_cap is None else min(k_cap, n)
    auto: dict[str, Any] = {}
    if params["k"] == "auto":
        k, auto = _choose_k(params, run, geometry=geometry, spectrum=spectrum, n=n, k_cap=cap, even=even, seed=seed)
    else:
        k = _check_k(params["k"], n)
        if k_cap is not None and k > k_cap:
            raise InputError(f"{method}: k={k} needs more singular directions than the r available (k <= {k_cap})")
        if even and k % 2:
            raise InputError(f"{method}: the 'signed' rule makes 2 clusters per direction, so k must be even, got {k}")
    raw, per_cluster = run(k)
    labels, info = compact_labels(raw, k)
    out: dict[str, Any] = {"method": method, **info, "k_param": params["k"], **(extra or {}), **auto}
    kept = np.flatnonzero(np.bincount(raw, minlength=k) > 0)
    for key, values in per_cluster.items():  # per-cluster lists follow the renumbering
        out[key] = [values[c] for c in kept]
    return Clustering(labels, out)


def _own_spectrum(x: np.ndarray) -> Callable[[], np.ndarray]:
    """Singular values of a feature matrix (uncentred), computed only if the elbow asks for them."""
    return lambda: np.linalg.svd(x, compute_uv=False)


# --------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------


def cluster_gradientspace(inputs: ClusterInputs, params: Mapping[str, Any], seed: int) -> Clustering:
    """GradientSpace: cluster by the ``svd_coords`` ``(n, r)`` with the ``assign`` rule (module docstring)."""
    feats = inputs.features
    rule = params["assign"]
    if rule not in ASSIGN_RULES:
        raise InputError(f"unknown assign rule {rule!r}; expected one of {', '.join(ASSIGN_RULES)}")
    coords = _checked(feats.svd_coords, feats.ids, "svd_coords")
    r = coords.shape[1]
    if r < 1:
        raise InputError("svd_coords has no columns (r = 0)")
    normalize = bool(params["normalize"])
    n_init = int_param(params["n_init"], "n_init", minimum=1)
    sv = feats.singular_values
    spectrum = (lambda: sv) if sv is not None else _own_spectrum(coords)
    # Silhouette geometry for the argmax rules: directions within the top-r subspace.
    geometry = row_normalize(coords) if (normalize or rule != "kmeans") else coords
    extra = {"rule": rule, "normalize": normalize, "feature": f"svd_coords (r={r})"}

    if rule == "kmeans":

        def run(k: int) -> tuple[np.ndarray, dict[str, Any]]:
            return _kmeans(geometry, k, n_init, seed), {}

        return _run_with_k(
            "gradientspace", params, run, geometry=geometry, spectrum=spectrum, n=feats.n, seed=seed, extra=extra
        )

    signed = rule == "signed"

    def run_argmax(k: int) -> tuple[np.ndarray, dict[str, Any]]:
        m = k // 2 if signed else k
        top = coords[:, :m]
        j = np.argmax(np.abs(top), axis=1)
        if not signed:
            return j.astype(np.int64), {"directions": list(range(m))}
        neg = top[np.arange(top.shape[0]), j] < 0
        labels = 2 * j + neg
        return labels.astype(np.int64), {
            "directions": [c // 2 for c in range(k)],
            "signs": ["-" if c % 2 else "+" for c in range(k)],
        }

    return _run_with_k(
        "gradientspace",
        params,
        run_argmax,
        geometry=geometry,
        spectrum=spectrum,
        n=feats.n,
        k_cap=2 * r if signed else r,
        even=signed,
        seed=seed,
        extra=extra,
    )


def _cosine_kmeans(
    method: str, x: np.ndarray, ids: np.ndarray, name: str, params: Mapping[str, Any], seed: int, extra: dict
) -> Clustering:
    geometry = row_normalize(_checked(x, ids, name))
    n_init = int_param(params["n_init"], "n_init", minimum=1)

    def run(k: int) -> tuple[np.ndarray, dict[str, Any]]:
        return _kmeans(geometry, k, n_init, seed), {}

    extra = {"rule": "kmeans", "normalize": True, "feature": name, **extra}
    return _run_with_k(
        method, params, run, geometry=geometry, spectrum=_own_spectrum(geometry), n=ids.shape[0], seed=seed, extra=extra
    )


def _projected(feats: GradientFeatures, p: int, method: str) -> np.ndarray:
    if p not in feats.projected:
        have = ", ".join(f"projected_{q}" for q in sorted(feats.projected)) or "none"
        raise InputError(f"{method}: features have no projected_{p} (available: {have})")
    return feats.projected[p]


def cluster_elrea(inputs: ClusterInputs, params: Mapping[str, Any], seed: int) -> Clustering:
    """ELREA: cosine k-means on its features ``(n, p)``: ``elrea_features`` (instruction-token
    gradients, as ELREA) when the features have them, else ``projected_<elrea_dim>``."""
    feats = inputs.features
    p = params.get("elrea_dim") or feats.elrea_dim
    if p is None:
        raise InputError("elrea: no projection size (features.npz has no elrea_dim and params set none)")
    p = int(p)
    use_own = feats.elrea_features is not None and feats.elrea_features.shape[1] == p
    x = feats.elrea_features if use_own else _projected(feats, p, "elrea")
    source = "elrea_features" if use_own else f"projected_{p}"
    return _cosine_kmeans("elrea", x, feats.ids, source, params, seed, {"projection_dim": p})


def cluster_rp(p: int) -> Callable[[ClusterInputs, Mapping[str, Any], int], Clustering]:
    """The ``rp<p>`` ablation: ELREA's rule on ``projected_<p>``."""

    def run(inputs: ClusterInputs, params: Mapping[str, Any], seed: int) -> Clustering:
        x = _projected(inputs.features, p, f"rp{p}")
        return _cosine_kmeans(f"rp{p}", x, inputs.features.ids, f"projected_{p}", params, seed, {"projection_dim": p})

    return run


def cluster_semantic(inputs: ClusterInputs, params: Mapping[str, Any], seed: int) -> Clustering:
    """c-BTM-style: cosine k-means on the prompt embeddings ``(n, h)`` (given in ``inputs``)."""
    if inputs.embeddings is None:
        raise InputError(
            "semantic: needs the prompt embeddings (the CLI computes them with gs.models.embeddings.embed_prompts)"
        )
    extra = {"encoder": params.get("encoder")}
    return _cosine_kmeans("semantic", inputs.embeddings, inputs.features.ids, "prompt embeddings", params, seed, extra)


def cluster_random(inputs: ClusterInputs, params: Mapping[str, Any], seed: int) -> Clustering:
    """Seeded balanced random labels: ``arange(n) % k`` permuted, so every cluster is non-empty."""
    n = inputs.features.n
    if params.get("k") == "auto":
        raise InputError("random: k must be an integer (k: auto has no criterion for random labels)")
    if params.get("k") is None:
        raise InputError("random: param 'k' is required (an integer >= 1)")
    k = _check_k(params["k"], n)
    labels = np.random.default_rng(seed).permutation(np.arange(n) % k).astype(np.int64)
    labels, info = compact_labels(labels, k)
    return Clustering(labels, {"method": "random", **info, "k_param": params["k"], "rule": "balanced permutation"})


def cluster_oracle(inputs: ClusterInputs, params: Mapping[str, Any], seed: int) -> Clustering:
    """The true domains as clusters, numbered in sorted domain-name order; ``params['k']`` ignored."""
    if inputs.domains is None:
        raise InputError("oracle: needs the domain labels (--train)")
    domains = np.asarray([str(d) for d in inputs.domains])
    if domains.shape[0] != inputs.features.n:
        raise InputError(f"oracle: {domains.shape[0]} domain labels for n={inputs.features.n} samples")
    names, labels = np.unique(domains, return_inverse=True)
    labels, info = compact_labels(labels, names.shape[0])
    out = {"method": "oracle", **info, "rule": "true domain", "domains": [str(d) for d in names]}
    if params.get("k") is not None:
        out["k_param"] = params["k"]
        out["note"] = "k is the number of domains; the configured k is ignored"
    return Clustering(labels, out)


MethodFn = Callable[[ClusterInputs, Mapping[str, Any], int], Clustering]
REGISTRY: dict[str, MethodFn] = {
    "gradientspace": cluster_gradientspace,
    "elrea": cluster_elrea,
    "semantic": cluster_semantic,
    "random": cluster_random,
    "oracle": cluster_oracle,
}


def known_methods() -> str:
    return ", ".join([*METHODS, *GS_VARIANTS, "rp<p> (e.g. rp64)"])


def get_method(name: str) -> MethodFn:
    """The clustering function for ``name`` (``METHODS``, ``gradientspace_<rule>``, ``rp<p>``)."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name in GS_VARIANTS:
        return cluster_gradientspace
    m = _RP.fullmatch(name)
    if m and int(m.group(1)) > 0:
        return cluster_rp(int(m.group(1)))
    raise InputError(f"unknown clustering method {name!r}; known: {known_methods()}")


def resolve_params(method: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The effective params of ``method`` from the ``cluster`` config section ``params``.

    Precedence, lowest first: :data:`DEFAULTS`; flat keys (:data:`PARAM_KEYS`); the group
    sections ``kmeans: {n_init}`` and ``auto_k: {criterion, k_min, k_max, silhouette_sample,
    elbow_rule}`` (:data:`GROUP_SECTIONS`); the method's own section ``params[<method>]`` (for
    ``gradientspace_<rule>`` first ``params["gradientspace"]``, then its own). ``methods`` and
    ``ablation_dims`` are workflow keys and ignored. Any other key is an error, so a typo is caught.
    ``gradientspace_<rule>`` forces ``assign: <rule>``.
    """
    get_method(method)
    params = dict(params or {})
    out = dict(DEFAULTS)
    sections: dict[str, Mapping[str, Any]] = {}
    groups: dict[str, Mapping[str, Any]] = {}
    for key, value in params.items():
        if key in PARAM_KEYS:
            out[key] = value
        elif key in WORKFLOW_KEYS:
            continue
        elif key in GROUP_SECTIONS or key in METHODS or key in GS_VARIANTS or _RP.fullmatch(key):
            if not isinstance(value, Mapping):
                raise InputError(f"params[{key!r}]: expected a mapping of params")
            (groups if key in GROUP_SECTIONS else sections)[key] = value
        else:
            raise InputError(
                f"unknown clustering param {key!r}; expected one of {', '.join(PARAM_KEYS)}, "
                f"a section ({', '.join(GROUP_SECTIONS)}) or a method name"
            )
    for name, section in groups.items():
        for key, value in section.items():
            if key not in GROUP_SECTIONS[name]:
                raise InputError(
                    f"unknown clustering param {name}.{key}; expected one of {', '.join(GROUP_SECTIONS[name])}"
                )
            out[key] = value
    base = "gradientspace" if method in GS_VARIANTS else method
    for name in dict.fromkeys([base, method]):
        for key, value in sections.get(name, {}).items():
            if key not in PARAM_KEYS:
                raise InputError(f"unknown clustering param {name}.{key}; expected one of {', '.join(PARAM_KEYS)}")
            out[key] = value
    if method in GS_VARIANTS:
        out["assign"] = method[len("gradientspace_") :]
    return out


def cluster(method: str, inputs: ClusterInputs, params: Mapping[str, Any] | None, seed: int) -> Clustering:
    """Run ``method`` on ``inputs`` with ``params`` (see :func:`resolve_params`) and ``seed``.

    The domain labels are removed from ``inputs`` for every method but ``oracle``.
    """
    fn = get_method(method)
    resolved = resolve_params(method, params)
    if method != "oracle":
        inputs = dataclasses.replace(inputs, domains=None)  # no method but the oracle sees domains
    result = fn(inputs, resolved, int(seed))
    result.info["method"] = method
    result.info["seed"] = int(seed)
    result.info["n"] = int(result.labels.shape[0])
    return result


# --------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------


def cluster_centroids(features: Any, labels: Any) -> np.ndarray:
    """``(k, f)``: mean of the row-normalised ``features`` ``(n, f)`` per cluster (labels ``0..k-1``).

    Rows are normalised first because every method clusters directions (cosine geometry); the
    means are NOT renormalised (their norm measures how tight the cluster is). An empty cluster is
    an :class:`InputError`.
    """
    x = row_normalize(np.asarray(features, dtype=np.float64))
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (x.shape[0],):
        raise InputError(f"cluster_centroids: {labels.shape[0]} labels for {x.shape[0]} rows")
    if labels.size == 0 or labels.min() < 0:
        raise InputError("cluster_centroids: labels must be non-empty and >= 0")
    k = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=k)
    if (counts == 0).any():
        raise InputError(f"cluster_centroids: cluster {int(np.argmin(counts))} is empty")
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, labels, x)
    return sums / counts[:, None]


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Cluster the training pool (GradientSpace and baselines).")
    parser.add_argument("--method", required=True, help=f"one of: {known_methods()}")
    parser.add_argument("--features", required=True, help="features.npz of the gradient stage")
    parser.add_argument("--train", help="pooled training records (JSONL); needed by semantic and oracle")
    parser.add_argument("--params", default="{}", help="clustering config section as JSON")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--embeddings", help="semantic: precomputed (n, h) .npy prompt embeddings in pool order")
    parser.add_argument(
        "--match-k",
        help="random with k: auto: another method's cluster_info.json whose chosen k the random labels take",
    )
    parser.add_argument(
        "--seeds", type=int, default=1, help="also rerun at seeds seed..seed+N-1 into seed_labels.csv (N >= 1)"
    )
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    if args.seeds < 1:
        raise InputError(f"--seeds must be >= 1, got {args.seeds}")

    get_method(args.method)
    params = resolve_params(args.method, parse_params(args.params))
    if args.method == "random" and params.get("k") == "auto" and args.match_k:
        # Random clusters are a baseline at the same number of clusters as the method compared (ours).
        params["k"] = int(read_json(args.match_k, "cluster info")["k"])
    feats = load_features(args.features)
    records = None
    if args.train:
        records = align_records(read_jsonl(args.train), feats.ids, args.train)
    elif args.method in ("semantic", "oracle") and not (args.method == "semantic" and args.embeddings):
        raise InputError(f"{args.method}: needs --train")
    embeddings = domains = None
    if args.method == "semantic":
        if args.embeddings:
            if not Path(args.embeddings).is_file():
                raise InputError(f"{args.embeddings}: embeddings file not found")
            embeddings = np.load(args.embeddings, allow_pickle=False)
        else:
            from gs.data.prompting import user_message
            from gs.models.embeddings import embed_prompts

            assert records is not None
            embeddings = embed_prompts(
                [user_message(r) for r in records], str(params["encoder"]), batch_size=int(params["batch_size"])
            )
    if args.method == "oracle":
        assert records is not None
        domains = [str(r.get("domain")) for r in records]
    inputs = ClusterInputs(feats, embeddings=embeddings, domains=domains)
    result = cluster(args.method, inputs, params, args.seed)
    result.info["params"] = params
    out = Path(args.out_dir)
    # The same inputs (embeddings computed once) at the other seeds: k-means initialisation, random labels.
    by_seed = {args.seed: result.labels}
    for s in range(1, args.seeds):
        by_seed[args.seed + s] = cluster(args.method, inputs, params, args.seed + s).labels
    write_seed_labels(out / SEED_LABELS_CSV, feats.ids, by_seed)
    write_assignments(out / ASSIGNMENTS_CSV, feats.ids, result.labels, result.info)
    sizes = "/".join(str(s) for s in result.info["sizes"])
    note = f" (dropped empty clusters {result.info['empty_clusters']})" if result.info.get("empty_clusters") else ""
    print(f"wrote {out / ASSIGNMENTS_CSV}: {args.method}, k={result.info['k']}, sizes {sizes}{note}")


if __name__ == "__main__":
    run_cli(main)
