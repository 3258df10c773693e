"""Cluster quality: agreement with the true domains, gradient coherence, and a picture.

External scores (the domain label is read here, and only here and by the ``oracle`` method):

* NMI: :func:`sklearn.metrics.normalized_mutual_info_score` (arithmetic-mean normalisation);
* ARI: :func:`sklearn.metrics.adjusted_rand_score`;
* purity: ``(1/n) sum_c max_d |{i in c : domain_i = d}|``, the fraction of samples that share
  their cluster's majority domain (1 for the oracle; it rewards many small clusters, hence NMI/ARI).

Gradient coherence (GradientSpace's argument is that clustering lowers within-cluster gradient
variance): the mean pairwise cosine similarity of the FULL per-sample LoRA gradients within a
cluster. With unit rows ``u_i = g_i / ||g_i||`` and the cluster sum ``S_c = sum_{i in c} u_i``,

    ||S_c||^2 = sum_{i, j in c} <u_i, u_j> = n_c + sum_{i != j in c} cos(g_i, g_j),

so the mean over the ``n_c (n_c - 1)`` ordered pairs is exactly
``coh_c = (||S_c||^2 - n_c) / (n_c (n_c - 1))``: one streaming pass that only accumulates ``S_c``
(``(k, d)`` numbers) gives it, with no pairwise products and no stored gradients. It is also
``coh_c = (n_c ||mean_c||^2 - 1) / (n_c - 1)``, a decreasing function of the within-cluster
variance ``1 - ||mean_c||^2`` of the unit gradients. Clusters with fewer than 2 samples have no
pairs: ``NaN``, left out of the overall mean, which is weighted by the cluster size ``n_c``
(``weights="samples"``: a random sample's mean cosine to its cluster-mates) or by the number of
pairs (``weights="pairs"``: the mean over all within-cluster pairs).

Over seeds (:func:`seed_quality`, :func:`seed_summary`): every method's ``seed_labels.csv`` (the method rerun
at ``cluster.quality_seeds`` seeds, :mod:`gs.cluster.methods`) is scored per seed and summarised as mean, sd, min-max
(:mod:`gs.spread`). Coherence per seed from the Gram matrix ``K = U U^T`` of the kept unit
gradients (``||S_c||^2 = 1_c^T K 1_c``; ``gradients.keep_gradients``), else only for the clustering the
coherence pass measured.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pandas as pd

from gs.io import InputError, atomic_path, markdown_table, read_json, read_jsonl, run_cli

WEIGHTS = ("samples", "pairs")
QUALITY_COLUMNS = ("method", "k", "nmi", "ari", "purity", "coherence", "sizes")
PLOT_TITLE = "Samples in the top-2 singular directions of the per-sample LoRA gradients"


# --------------------------------------------------------------------------------------------------
# External scores
# --------------------------------------------------------------------------------------------------


def _labels_and_domains(labels: Any, domains: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    d = np.asarray([str(v) for v in domains])
    if y.ndim != 1 or y.shape != d.shape:
        raise InputError(f"labels {y.shape} and domains {d.shape} must be 1-D of the same length")
    if y.size == 0:
        raise InputError("no samples to score")
    return y, d


def purity(labels: Any, domains: Any) -> float:
    """``(1/n) sum_c max_d n_{c,d}`` for labels ``(n,)`` and domains ``(n,)``."""
    y, d = _labels_and_domains(labels, domains)
    table = pd.crosstab(y, d)
    return float(table.max(axis=1).sum() / y.shape[0])


def external_scores(labels: Any, domains: Any) -> dict[str, float]:
    """``{"nmi", "ari", "purity"}`` of cluster ``labels`` ``(n,)`` against the true ``domains`` ``(n,)``."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    y, d = _labels_and_domains(labels, domains)
    return {
        "nmi": float(normalized_mutual_info_score(d, y)),
        "ari": float(adjusted_rand_score(d, y)),
        "purity": purity(y, d),
    }


# --------------------------------------------------------------------------------------------------
# Coherence
# --------------------------------------------------------------------------------------------------


class Coherence(TypedDict):
    """JSON-ready coherence of one clustering (``None`` stands for "no pairs", i.e. NaN).

    ``overall``: the weighted mean (``None`` if no cluster has 2 samples); ``per_cluster``: ``(k,)``
    mean pairwise cosine per cluster (``None`` for clusters of < 2 samples); ``counts``: ``n_c``;
    ``weights``: ``"samples"`` or ``"pairs"``.
    """

    overall: float | None
    per_cluster: list[float | None]
    counts: list[int]
    weights: str


def _nan_to_none(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, without importing torch
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def coherence_from_sums(
    cluster_sums: Any, cluster_counts: Any, *, weights: str = "samples", tol: float = 1e-6
) -> Coherence:
    """Mean within-cluster pairwise cosine from per-cluster sums of L2-NORMALISED gradients.

    ``cluster_sums`` ``(k, d)``: ``S_c = sum_{i in c} g_i / ||g_i||``; ``cluster_counts`` ``(k,)``:
    ``n_c``. ``coh_c = (||S_c||^2 - n_c) / (n_c (n_c - 1))`` (module docstring). Returns a
    JSON-ready :class:`Coherence` dict (write it with :func:`gs.io.write_json` as is). The identity holds
    only for unit rows, so a sum whose squared norm exceeds ``n_c^2`` (relative ``tol``) is an
    :class:`InputError` (the rows were not normalised).
    """
    if weights not in WEIGHTS:
        raise InputError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    sums = _to_numpy(cluster_sums)
    counts = _to_numpy(cluster_counts).ravel()
    if sums.ndim != 2 or sums.shape[0] != counts.shape[0]:
        raise InputError(f"cluster_sums {sums.shape} must be (k, d) with k = len(cluster_counts) = {counts.shape[0]}")
    if not np.isfinite(sums).all():
        raise InputError(f"cluster_sums: cluster {int(np.argmin(np.isfinite(sums).all(axis=1)))} has NaN or inf")
    if (counts < 0).any() or (counts != np.round(counts)).any():
        raise InputError(f"cluster_counts must be non-negative integers, got {counts.tolist()}")
    sq = np.einsum("kd,kd->k", sums, sums)
    over = sq > counts**2 * (1 + tol) + tol
    if over.any():
        c = int(np.argmax(over))
        raise InputError(
            f"cluster {c}: ||S||^2 = {sq[c]:.6g} exceeds n_c^2 = {counts[c] ** 2:.6g}; "
            "the sums must be of L2-normalised gradients"
        )
    per = np.full(counts.shape[0], np.nan)
    has_pairs = counts >= 2
    nc = counts[has_pairs]
    per[has_pairs] = (sq[has_pairs] - nc) / (nc * (nc - 1))
    overall = float("nan")
    if has_pairs.any():
        w = nc if weights == "samples" else nc * (nc - 1)
        overall = float(np.sum(w * per[has_pairs]) / np.sum(w))
    return {
        "overall": _nan_to_none(overall),
        "per_cluster": [_nan_to_none(v) for v in per],
        "counts": [int(c) for c in counts],
        "weights": weights,
    }


class ClusterSums:
    """Streaming accumulator of ``S_c`` and ``n_c`` for :func:`coherence_from_sums`.

    ``add(batch (b, d), labels (b,))`` normalises each row (numpy or torch) and adds it to its
    cluster; memory ``O(k d)``. A zero or non-finite row is an :class:`InputError` (no direction).
    """

    def __init__(self, k: int, d: int) -> None:
        if k < 1 or d < 1:
            raise InputError(f"ClusterSums needs k >= 1 and d >= 1, got k={k}, d={d}")
        self.sums = np.zeros((k, d))
        self.counts = np.zeros(k, dtype=np.int64)
        self._seen = 0

    def add(self, batch: Any, labels: Any) -> None:
        x = _to_numpy(batch)
        y = np.asarray(labels, dtype=np.int64).ravel()
        if x.ndim != 2 or x.shape[1] != self.sums.shape[1] or y.shape[0] != x.shape[0]:
            raise InputError(f"ClusterSums.add: expected ({y.shape[0]}, {self.sums.shape[1]}) rows, got {x.shape}")
        if y.size and (y.min() < 0 or y.max() >= self.sums.shape[0]):
            raise InputError(f"ClusterSums.add: labels must be in 0..{self.sums.shape[0] - 1}")
        norms = np.linalg.norm(x, axis=1)
        bad = ~np.isfinite(norms) | (norms == 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"ClusterSums.add: row {self._seen + i} is zero or not finite (no direction)")
        np.add.at(self.sums, y, x / norms[:, None])
        self.counts += np.bincount(y, minlength=self.sums.shape[0])
        self._seen += x.shape[0]

    def coherence(self, *, weights: str = "samples") -> Coherence:
        return coherence_from_sums(self.sums, self.counts, weights=weights)


def unit_gram(x: Any, block: int = 65536) -> np.ndarray:
    """``(n, n)`` float64 Gram matrix of the L2-normalised rows of ``x`` ``(n, f)`` (numpy or a memory map),
    accumulated over column blocks (no float64 copy of ``x``): ``K_ij = <x_i, x_j> / (||x_i|| ||x_j||)``.
    A zero row is an :class:`InputError`."""
    n, f = x.shape
    k = np.zeros((n, n))
    for start in range(0, f, block):
        part = np.asarray(x[:, start : start + block], dtype=np.float64)
        k += part @ part.T
    norms = np.sqrt(np.diag(k))
    if (norms == 0).any() or not np.isfinite(norms).all():
        raise InputError(f"row {int(np.argmax((norms == 0) | ~np.isfinite(norms)))} is zero or not finite")
    return k / np.outer(norms, norms)


def coherence_from_gram(gram: np.ndarray, labels: Any, *, weights: str = "samples") -> Coherence:
    """:func:`coherence_from_sums` from the Gram matrix ``(n, n)`` of the unit rows and labels ``(n,)``:
    ``||S_c||^2 = 1_c^T K 1_c`` (only the ``(k, 1)`` norms are passed on)."""
    y = np.asarray(labels, dtype=np.int64)
    if y.ndim != 1 or gram.shape != (y.shape[0], y.shape[0]) or y.size == 0 or y.min() < 0:
        raise InputError(f"gram {gram.shape} and labels {y.shape}: expected (n, n) and (n,) labels >= 0")
    onehot = np.zeros((y.shape[0], int(y.max()) + 1))
    onehot[np.arange(y.shape[0]), y] = 1.0
    sq = np.einsum("ik,ij,jk->k", onehot, gram, onehot)
    return coherence_from_sums(np.sqrt(np.clip(sq, 0.0, None))[:, None], onehot.sum(0), weights=weights)


def coherence_from_features(features: Any, labels: Any, *, weights: str = "samples") -> Coherence:
    """The same coherence on any feature matrix ``(n, f)`` with labels ``(n,)`` in ``0..k-1``.

    Rows are L2-normalised first; equals :func:`coherence_from_sums` on those rows' cluster sums.
    """
    x = _to_numpy(features)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or y.shape != (x.shape[0],) or y.size == 0:
        raise InputError(f"features {x.shape} and labels {y.shape}: expected (n, f) and (n,), n >= 1")
    acc = ClusterSums(int(y.max()) + 1, x.shape[1])
    acc.add(x, y)
    return acc.coherence(weights=weights)


# --------------------------------------------------------------------------------------------------
# Table and plot
# --------------------------------------------------------------------------------------------------


def _sizes(labels: np.ndarray) -> list[int]:
    _, counts = np.unique(labels, return_counts=True)
    return [int(c) for c in counts]


def quality_table(
    methods: Mapping[str, tuple[Any, Mapping[str, Any] | None]],
    domains: Sequence[str],
    coherence: Mapping[str, float | None] | None = None,
) -> pd.DataFrame:
    """One row per method: ``method, k, nmi, ari, purity, coherence, sizes``.

    ``methods``: ``{name: (labels (n,), info or None)}``, labels in the same order as ``domains``;
    ``k`` is the number of non-empty clusters; ``sizes`` ``"a/b/c"`` in ascending cluster id;
    ``coherence``: ``{name: overall within-cluster gradient coherence}`` (``NaN`` where missing).
    """
    rows = []
    for name, (labels, _info) in methods.items():
        y = np.asarray(labels)
        scores = external_scores(y, domains)
        coh = (coherence or {}).get(name)
        sizes = _sizes(y)
        rows.append(
            {
                "method": name,
                "k": len(sizes),
                **scores,
                "coherence": float("nan") if coh is None else float(coh),
                "sizes": "/".join(str(s) for s in sizes),
            }
        )
    return pd.DataFrame(rows, columns=list(QUALITY_COLUMNS))


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    if n <= 10:
        cmap = colormaps["tab10"]
        return [cmap(i) for i in range(n)]
    if n <= 20:
        cmap = colormaps["tab20"]
        return [cmap(i) for i in range(n)]
    cmap = colormaps["turbo"]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def plot_clusters(
    svd_coords: Any,
    labels_by_method: Mapping[str, Any],
    domains: Sequence[str],
    path: str | os.PathLike,
    *,
    max_legend: int = 20,
) -> Path:
    """PNG of the samples in the top-2 singular directions: one panel coloured by true domain, one
    per method coloured by cluster. ``svd_coords`` ``(n, r)`` (``r = 1``: the y axis is 0)."""
    from matplotlib.figure import Figure

    coords = _to_numpy(svd_coords)
    if coords.ndim != 2 or coords.shape[1] < 1:
        raise InputError(f"svd_coords must be (n, r >= 1), got {coords.shape}")
    n = coords.shape[0]
    dom = np.asarray([str(d) for d in domains])
    if dom.shape[0] != n:
        raise InputError(f"{dom.shape[0]} domains for {n} samples")
    x = coords[:, 0]
    yv = coords[:, 1] if coords.shape[1] > 1 else np.zeros(n)
    panels: list[tuple[str, np.ndarray, list[str]]] = []
    names, dom_idx = np.unique(dom, return_inverse=True)
    panels.append(("true domain", dom_idx, [str(v) for v in names]))
    for method, labels in labels_by_method.items():
        lab = np.asarray(labels)
        if lab.shape != (n,):
            raise InputError(f"{method}: {lab.shape} labels for {n} samples")
        ids, idx, counts = np.unique(lab, return_inverse=True, return_counts=True)
        panels.append(
            (method, idx, [f"cluster {c} (n={m})" for c, m in zip(ids.tolist(), counts.tolist(), strict=True)])
        )

    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(5.2 * ncols, 4.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, (title, idx, legend) in zip(axes.flat, panels, strict=False):
        colors = _colors(len(legend))
        for c, label in enumerate(legend):
            sel = idx == c
            ax.scatter(x[sel], yv[sel], s=12, alpha=0.75, color=colors[c], label=label, linewidths=0)
        ax.set_title(title if title == "true domain" else f"{title} (k={len(legend)})")
        ax.set_xlabel("coordinate on v1")
        ax.set_ylabel("coordinate on v2")
        if len(legend) <= max_legend:
            ax.legend(fontsize=7, markerscale=1.5, loc="best", ncol=1 if len(legend) <= 10 else 2, framealpha=0.8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(PLOT_TITLE)
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return out


def table_markdown(table: pd.DataFrame) -> str:
    """The quality table as a Markdown table with the metric definitions below it."""
    cols = list(table.columns)

    def fmt(v: Any) -> str:
        if isinstance(v, float | np.floating):
            return "n/a" if not np.isfinite(v) else f"{v:.3f}"
        return str(v)

    lines = markdown_table(cols, ([fmt(v) for v in row] for row in table.itertuples(index=False)))
    notes = (
        "\nnmi/ari/purity: agreement of the clusters with the true domains (the oracle scores 1 by "
        "construction). coherence: mean pairwise cosine of the full per-sample LoRA gradients within a "
        "cluster, size-weighted over clusters with at least 2 samples (n/a: not measured). sizes: "
        "samples per cluster, in cluster order.\n"
    )
    return "\n".join(lines) + "\n" + notes


# --------------------------------------------------------------------------------------------------
# Over seeds
# --------------------------------------------------------------------------------------------------

SEED_METRICS = ["nmi", "ari", "purity", "coherence"]


def seed_quality(
    labels_by_seed: Mapping[str, Mapping[int, Any]],
    domains: Sequence[str],
    *,
    gram: np.ndarray | None = None,
    main_labels: Mapping[str, Any] | None = None,
    main_coherence: Mapping[str, float | None] | None = None,
) -> pd.DataFrame:
    """One row per (method, seed): ``method, seed, k, nmi, ari, purity, coherence, sizes``.

    ``labels_by_seed``: ``{method: {seed: labels (n,)}}``. Coherence: with ``gram`` ``(n, n)``, the Gram
    matrix of the L2-normalised full gradients, of every seed's clustering (``||S_c||^2 = 1_c^T K 1_c``,
    :func:`coherence_from_sums`); else only where a seed's labels equal ``main_labels[method]`` (the
    clustering the coherence pass measured), from ``main_coherence``; NaN elsewhere.
    """
    rows = []
    for method, by_seed in labels_by_seed.items():
        for seed, labels in by_seed.items():
            y = np.asarray(labels, dtype=np.int64)
            coh = float("nan")
            if gram is not None:
                value = coherence_from_gram(gram, y)["overall"]
                coh = float("nan") if value is None else value
            elif main_labels is not None and method in main_labels and np.array_equal(y, main_labels[method]):
                value = (main_coherence or {}).get(method)
                coh = float("nan") if value is None else float(value)
            sizes = _sizes(y)
            rows.append(
                {
                    "method": method,
                    "seed": int(seed),
                    "k": len(sizes),
                    **external_scores(y, domains),
                    "coherence": coh,
                    "sizes": "/".join(str(s) for s in sizes),
                }
            )
    return pd.DataFrame(rows, columns=["method", "seed", "k", *SEED_METRICS, "sizes"])


def seed_summary(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Per method: ``k`` (``"a-b"`` when it varies over seeds) and mean, sd, min, max and
    ``seeds`` of every :data:`SEED_METRICS` (:func:`gs.spread.summarise`)."""
    from gs.spread import summarise

    table = summarise(per_seed, ["method"], SEED_METRICS)
    ks = per_seed.groupby("method", sort=False)["k"].agg(["min", "max"])
    table.insert(1, "k", [f"{a}" if a == b else f"{a}-{b}" for a, b in ks.loc[table["method"]].to_numpy()])
    return table


def seed_summary_markdown(table: pd.DataFrame, coherence_note: str) -> str:
    """The seed summary as Markdown: ``mean ± sd [min, max]`` per metric and its caption."""
    from gs.spread import fmt_spread

    lines = [
        "# Cluster quality against the hidden domain labels",
        "",
    ]
    rows = (
        [r["method"], r["k"], r["seeds"]]
        + [fmt_spread(*(r[f"{m}_{s}"] for s in ("mean", "sd", "min", "max"))) for m in SEED_METRICS]
        for r in table.to_dict("records")
    )
    lines += markdown_table(["method", "k", "seeds", "NMI", "ARI", "purity", "coherence"], rows, "llrllll")
    note = (
        "\nmean ± sd [min, max] over the clustering seeds (k-means initialisation; random: the permutation; "
        "the oracle does not vary). nmi/ari/purity: agreement with "
        f"the true domains. coherence: mean pairwise cosine of the full per-sample LoRA gradients within a "
        f"cluster, size-weighted; {coherence_note}\n"
    )
    return "\n".join(lines) + "\n" + note


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def _read_clusters(folder: Path, ids: np.ndarray) -> tuple[np.ndarray, dict[str, Any] | None]:
    """Labels ``(n,)`` in the order of ``ids`` from ``folder/assignments.csv``, and its info JSON."""
    from gs.cluster.assignments import ASSIGNMENTS_CSV, INFO_JSON, read_assignments

    frame = read_assignments(folder / ASSIGNMENTS_CSV)
    by_id = dict(zip(frame["id"], frame["cluster"], strict=True))
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise InputError(f"{folder / ASSIGNMENTS_CSV}: sample {str(missing[0])!r} has no cluster")
    if len(by_id) != len(ids):
        raise InputError(f"{folder / ASSIGNMENTS_CSV}: {len(by_id) - len(ids)} id(s) are not in the features")
    info_path = folder / INFO_JSON
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else None
    return np.asarray([by_id[i] for i in ids], dtype=np.int64), info


def _read_coherence(path: str) -> dict[str, float | None]:
    p = Path(path)
    raw = read_json(p, "coherence file")
    if not isinstance(raw, dict):
        raise InputError(f"{p}: expected a JSON object {{method: coherence}}")
    out: dict[str, float | None] = {}
    for name, v in raw.items():
        if isinstance(v, dict):  # {"overall": x, "per_cluster": [...]} is accepted too
            v = v.get("overall")
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise InputError(f"{p}: coherence of {name!r} is {v!r}; expected a number or null")
        out[str(name)] = None if v is None else float(v)
    return out


def main(argv: list[str] | None = None) -> None:
    from gs.cluster.assignments import align_records
    from gs.cluster.features import load_features

    parser = argparse.ArgumentParser(description="Score clusterings against the true domains and plot them.")
    parser.add_argument("--features", required=True, help="features.npz (ids, svd_coords)")
    parser.add_argument("--train", required=True, help="pooled training records (JSONL), for the domains")
    parser.add_argument("--clusters", nargs="+", required=True, help="cluster folders (assignments.csv); name = folder")
    parser.add_argument("--coherence", help="JSON {method: overall coherence}")
    parser.add_argument(
        "--gradients", help="kept gradients.npy (n, d): coherence of every seed's clustering (else --coherence's)"
    )
    parser.add_argument("--out-csv", required=True, help="the first seed's table (one row per method)")
    parser.add_argument("--out-md", required=True)
    parser.add_argument("--out-png", required=True)
    parser.add_argument("--out-seeds", help="per (method, seed) CSV, from each folder's seed_labels.csv")
    parser.add_argument("--out-table", help="stem of the over-seeds table: <stem>.csv and <stem>.md")
    args = parser.parse_args(argv)

    feats = load_features(args.features)
    records = align_records(read_jsonl(args.train), feats.ids, args.train)
    domains = [str(r.get("domain")) for r in records]
    methods: dict[str, tuple[np.ndarray, dict[str, Any] | None]] = {}
    for folder in args.clusters:
        name = Path(folder).name
        if name in methods:
            raise InputError(f"--clusters: two folders are named {name!r}")
        methods[name] = _read_clusters(Path(folder), feats.ids)
    coherence = _read_coherence(args.coherence) if args.coherence else None
    table = quality_table(methods, domains, coherence)
    with atomic_path(args.out_csv) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(args.out_md) as tmp:
        Path(tmp).write_text(table_markdown(table), encoding="utf-8")
    plot_clusters(feats.svd_coords, {m: lab for m, (lab, _) in methods.items()}, domains, args.out_png)
    print(f"wrote {args.out_csv}, {args.out_md}, {args.out_png} ({len(methods)} clustering(s))")
    if args.out_seeds or args.out_table:
        _write_over_seeds(args, feats.ids, methods, domains, coherence)


def _write_over_seeds(
    args: argparse.Namespace,
    ids: np.ndarray,
    methods: Mapping[str, tuple[np.ndarray, Any]],
    domains: list[str],
    coherence: Mapping[str, float | None] | None,
) -> None:
    """The per-seed rows and the over-seeds table (:func:`seed_quality`, :func:`seed_summary`)."""
    from gs.cluster.assignments import SEED_LABELS_CSV, read_seed_labels

    by_seed = {}
    for folder in args.clusters:
        path = Path(folder) / SEED_LABELS_CSV
        main_labels = methods[Path(folder).name][0]
        by_seed[Path(folder).name] = read_seed_labels(path, ids) if path.is_file() else {0: main_labels}
    gram = None
    if args.gradients:
        if not Path(args.gradients).is_file():
            raise InputError(f"{args.gradients}: kept gradients not found")
        g = np.load(args.gradients, mmap_mode="r")
        if g.ndim != 2 or g.shape[0] != len(ids):
            raise InputError(f"{args.gradients}: shape {g.shape}, expected (n={len(ids)}, d)")
        gram = unit_gram(g)
    per_seed = seed_quality(
        by_seed, domains, gram=gram, main_labels={m: lab for m, (lab, _) in methods.items()}, main_coherence=coherence
    )
    if args.out_seeds:
        with atomic_path(args.out_seeds) as tmp:
            per_seed.to_csv(tmp, index=False)
    if args.out_table:
        table = seed_summary(per_seed)
        note = (
            "computed for every seed from the kept full gradients (gradients.keep_gradients)."
            if gram is not None
            else "measured by the coherence pass for the configured seed's clustering only (n/a: not measured)."
        )
        stem = Path(args.out_table)
        with atomic_path(stem.with_suffix(".csv")) as tmp:
            table.to_csv(tmp, index=False)
        with atomic_path(stem.with_suffix(".md")) as tmp:
            Path(tmp).write_text(seed_summary_markdown(table, note), encoding="utf-8")
        print(table.to_string(index=False))


if __name__ == "__main__":
    run_cli(main)
