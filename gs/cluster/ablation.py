"""The projection ablation: full-dimension gradient clustering against random projections, fairly.

GradientSpace argues that clustering LoRA gradients in full dimension beats clustering random projections of
them (what ELREA, arXiv 2502.00089, and LESS, arXiv 2402.04333, do). Every side here goes through the SAME
downstream steps, on the same L2-normalised per-sample gradients ``G`` ``(n, d)``:

* gradient space: full dimension (``d``), or a random projection ``G P[:, :p]`` to each size ``p`` of
  ``ablation.dims``, its rows L2-normalised again (LESS normalises its projected gradients,
  ``collect_grad_reps.py``/``merge_and_normalize_info``);
* features k-means sees, both reported: ``raw``, the normalised rows themselves, and ``svd``, their
  top-``r`` uncentred SVD coordinates (``r = gradients.svd.rank``, as GradientSpace's online SVD keeps),
  row-normalised (``gs.cluster.methods``'s ``gradientspace`` rule with ``normalize: true``); exact SVDs of the kept
  rows here, where the workflow's ``gradientspace`` method reads the online SVD's coordinates (:mod:`gs.gradients.svd`);
* k-means (scikit-learn, k-means++, ``n_init`` of ``cluster.kmeans``, ``tol = 0``: Lloyd runs until no
  label changes), ``k = cluster.k`` (the number of domains when ``k: auto``);
* scores against the hidden domains (NMI, ARI, purity, :mod:`gs.cluster.quality`) and the within-cluster mean
  pairwise cosine of the FULL gradients (:func:`gs.cluster.quality.coherence_from_sums`, from the Gram matrix).

The projector (``ablation.projection_kind``): ``rademacher`` (default), TRAK's dense Rademacher projector as
LESS builds it (``gs.gradients.projection``: ``BasicProjector``, 128-column blocks drawn from ``seed + 1000 * block``);
``sparse``: Li, Hastie & Church's very sparse projection (scikit-learn), the extraction's CPU default.

Seeds. Seed ``s`` (``s = 0..seeds-1``) is both the k-means seed (``seed + s``) and the projector seed
(``seed + s``). One projection per seed at ``P_max = max(dims)`` gives every smaller size: its first ``p``
columns. For ``rademacher`` every entry is an independent +-1, so the first ``p`` columns are a ``p``-column
Rademacher projection; for ``p`` a multiple of 128 they are exactly TRAK's ``p``-column projector of the
same seed (its blocks ``0..p/128-1`` are drawn from the same generator seeds), for ``p < 128`` TRAK would
draw a ``(d, p)`` block instead of the first ``p`` columns of a ``(d, 128)`` one: another draw of the same
distribution. For ``sparse`` the rows of scikit-learn's ``(P_max, d)`` matrix are drawn independently, so
the first ``p`` are a ``p``-row sparse projection (its ``1 / sqrt(p)`` scale does not matter: rows are
normalised). The projection is applied to all ``n`` kept rows in one call (one draw of the matrix per seed).

Where ``G`` comes from: ``gradients.keep_gradients: true`` makes the extraction write it
(``results/gradients/gradients.npy``; 177 MB at the CPU default). Without it (paper scale, where ``n d`` floats
do not fit) the ablation falls back to the extraction's own features: the full side only as the online SVD's
coordinates (``svd``), the projected sides as ``projected_<p>`` (one projector seed, the extraction's, so the
spread is over k-means seeds only), and no coherence; the table says so.

k-means on ``raw`` rows is run on their isometric coordinates ``U S`` (``X = U S V^T``, at most ``n``
columns): pairwise distances, k-means++ draws and Lloyd steps are the same as on ``X`` itself (tested against
scikit-learn on ``X``), and ``d = 460,800`` columns cost nothing more than ``n``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gs.cluster.methods import row_normalize
from gs.io import InputError, atomic_path, markdown_table, parse_params, read_jsonl, run_cli, write_json

FULL = "full dimension"
PROJECTED = "random projection"
FEATURES = ("raw", "svd")
METRICS = ["nmi", "ari", "purity", "coherence"]
KINDS = ("rademacher", "sparse")
DEFAULTS: dict[str, Any] = {"dims": [64, 256, 1024], "seeds": 5, "projection_kind": "rademacher"}


@dataclasses.dataclass(frozen=True)
class AblationSpec:
    """``dims``: projection sizes (ascending); ``seeds``: number of seeds; ``kind``: projector;
    ``k``: clusters; ``rank``: SVD coordinates; ``n_init``: k-means restarts; ``seed``: the first seed."""

    dims: tuple[int, ...]
    seeds: int
    kind: str
    k: int
    rank: int
    n_init: int
    seed: int

    def __post_init__(self) -> None:
        if not self.dims or min(self.dims) < 1:
            raise InputError(f"ablation dims must be a non-empty list of integers >= 1, got {list(self.dims)}")
        if self.seeds < 1 or self.k < 1 or self.rank < 1 or self.n_init < 1:
            raise InputError(
                f"ablation needs seeds, k, rank, n_init >= 1, got {self.seeds}, {self.k}, {self.rank}, {self.n_init}"
            )
        if self.kind not in KINDS:
            raise InputError(f"ablation projection_kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        object.__setattr__(self, "dims", tuple(sorted({int(p) for p in self.dims})))


def spec_from_config(cluster: Mapping[str, Any], rank: int, seed: int, n_domains: int) -> AblationSpec:
    """The spec from the ``cluster`` config section (``ablation``, ``k``, ``kmeans.n_init``) and the SVD rank."""
    section = {**DEFAULTS, **dict(cluster.get("ablation") or {})}
    k = cluster.get("k")
    k = n_domains if k == "auto" or k is None else int(k)
    n_init = int((cluster.get("kmeans") or {}).get("n_init", cluster.get("n_init", 10)))
    return AblationSpec(
        dims=tuple(int(p) for p in section["dims"]),
        seeds=int(section["seeds"]),
        kind=str(section["projection_kind"]),
        k=k,
        rank=int(rank),
        n_init=n_init,
        seed=int(seed),
    )


# --------------------------------------------------------------------------------------------------
# Linear algebra
# --------------------------------------------------------------------------------------------------


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` ``(n, f)`` to unit L2 norm in float64; a zero row is an :class:`InputError`."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    if (norms == 0).any() or not np.isfinite(norms).all():
        raise InputError(f"row {int(np.argmax((norms == 0) | ~np.isfinite(norms)))} is zero or not finite")
    return row_normalize(x)


def gram(x: np.ndarray, block: int = 65536) -> np.ndarray:
    """``x x^T`` ``(n, n)`` in float64, over column blocks of ``x`` ``(n, f)`` (no float64 copy of ``x``)."""
    n, f = x.shape
    out = np.zeros((n, n))
    for start in range(0, f, block):
        part = np.asarray(x[:, start : start + block], dtype=np.float64)
        out += part @ part.T
    return out


def decompose(x: np.ndarray) -> np.ndarray:
    """``U S`` ``(n, q)`` of ``x = U S V^T`` ``(n, f)``, singular values descending, ``q`` = the numerical rank.

    Its rows have the pairwise distances and inner products of ``x``'s rows; its first ``r`` columns are the
    top-``r`` uncentred SVD coordinates ``x v_j``. From the eigen-decomposition of the Gram matrix
    (:func:`gram`) when ``f > n``, else from ``numpy.linalg.svd``. Column signs are arbitrary (k-means is
    invariant to them).
    """
    n, f = x.shape
    if f <= n:
        u, s, _ = np.linalg.svd(np.asarray(x, dtype=np.float64), full_matrices=False)
    else:
        w, v = np.linalg.eigh(gram(x))
        order = np.argsort(w)[::-1]
        s, u = np.sqrt(np.clip(w[order], 0.0, None)), v[:, order]
    keep = s > s[0] * max(n, f) * np.finfo(np.float64).eps if s.size and s[0] > 0 else np.zeros(s.shape, bool)
    return u[:, keep] * s[keep]


def svd_features(coords: np.ndarray, rank: int) -> np.ndarray:
    """The top-``rank`` columns of :func:`decompose`'s output, row-normalised (``gs.cluster.methods``'s rule)."""
    top = coords[:, :rank]
    norms = np.linalg.norm(top, axis=1, keepdims=True)
    return np.divide(top, norms, out=np.zeros_like(top), where=norms > 0)


def kmeans(x: np.ndarray, k: int, n_init: int, seed: int) -> np.ndarray:
    """scikit-learn k-means labels ``(n,)`` (k-means++, ``n_init`` restarts, ``tol = 0``), empty clusters dropped."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    from gs.cluster.methods import compact_labels

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # duplicate points: fewer distinct clusters
        labels = KMeans(n_clusters=k, n_init=n_init, random_state=seed, tol=0.0).fit_predict(x)
    return compact_labels(labels.astype(np.int64), k)[0]


def coherence_from_gram(gram_matrix: np.ndarray, labels: np.ndarray) -> float:
    """Size-weighted mean within-cluster pairwise cosine of the unit rows whose Gram matrix ``(n, n)`` is
    given (:func:`gs.cluster.quality.coherence_from_gram`); NaN without a cluster of 2."""
    from gs.cluster.quality import coherence_from_gram as coherence

    overall = coherence(gram_matrix, labels)["overall"]
    return float("nan") if overall is None else float(overall)


def project(g: np.ndarray, p_max: int, seed: int, kind: str) -> tuple[np.ndarray, float]:
    """``(n, p_max)`` float32 projection of the rows ``g`` ``(n, d)`` with a fresh seeded projector
    (:class:`gs.gradients.projection.Projector`, on the CPU; ``rademacher`` regenerates TRAK's matrix block by block
    inside the one call, never kept), and the seconds it took (drawing the matrix included)."""
    import torch

    from gs.gradients.projection import Projector

    start = time.perf_counter()
    if kind == "rademacher":
        proj = Projector(kind, g.shape[1], p_max, seed, device="cpu", backend="basic", cache_limit_bytes=0)
    else:
        proj = Projector(kind, g.shape[1], p_max, seed)
    out = proj.transform(torch.from_numpy(np.ascontiguousarray(g, dtype=np.float32)))
    return out, time.perf_counter() - start


# --------------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------------


def _scores(labels: np.ndarray, domains: Sequence[str], gram_matrix: np.ndarray | None) -> dict[str, float]:
    from gs.cluster.quality import external_scores

    out = external_scores(labels, domains)
    out["coherence"] = coherence_from_gram(gram_matrix, labels) if gram_matrix is not None else float("nan")
    out["k"] = int(np.unique(labels).shape[0])
    return out


def _both(coords: np.ndarray, spec: AblationSpec, seed: int) -> dict[str, np.ndarray]:
    """Labels of k-means on the raw rows (through their isometric coordinates) and on the SVD features."""
    return {
        "raw": kmeans(coords, spec.k, spec.n_init, seed),
        "svd": kmeans(svd_features(coords, spec.rank), spec.k, spec.n_init, seed),
    }


def run_kept(gradients: np.ndarray, domains: Sequence[str], spec: AblationSpec) -> tuple[pd.DataFrame, dict]:
    """The sweep on the kept gradients ``(n, d)``: one row per (space, dimension, features, seed) with
    ``nmi, ari, purity, coherence, k``; and the cost (seconds per seed of the ``P_max`` projection)."""
    from tqdm import tqdm

    n, d = gradients.shape
    if spec.dims[-1] > d:
        raise InputError(f"ablation dims go up to {spec.dims[-1]}, above the gradient dimension d={d}")
    if spec.k > n:
        raise InputError(f"ablation k={spec.k} is larger than the number of samples n={n}")
    unit = normalise_rows(gradients)
    full_gram = gram(unit)
    full_coords = decompose(unit)
    rows: list[dict[str, Any]] = []
    seconds = []
    for s in tqdm(range(spec.seeds), desc=f"ablation seeds (P_max={spec.dims[-1]}, {spec.kind})"):
        seed = spec.seed + s
        for feats, labels in _both(full_coords, spec, seed).items():
            rows.append(
                {"space": FULL, "dimension": d, "features": feats, "seed": seed, **_scores(labels, domains, full_gram)}
            )
        projected, took = project(unit, spec.dims[-1], seed, spec.kind)
        seconds.append(took)
        for p in spec.dims:
            coords = decompose(normalise_rows(projected[:, :p]))
            for feats, labels in _both(coords, spec, seed).items():
                rows.append(
                    {
                        "space": PROJECTED,
                        "dimension": p,
                        "features": feats,
                        "seed": seed,
                        **_scores(labels, domains, full_gram),
                    }
                )
    cost = {
        "source": "kept gradients",
        "n": int(n),
        "d": int(d),
        "p_max": spec.dims[-1],
        "kind": spec.kind,
        "projector_seeds": spec.seeds,
        "seconds_per_seed": [round(t, 2) for t in seconds],
        "mean_seconds_per_seed": round(float(np.mean(seconds)), 2),
    }
    return pd.DataFrame(rows), cost


def run_features(features: Any, domains: Sequence[str], spec: AblationSpec) -> tuple[pd.DataFrame, dict]:
    """The fallback without kept gradients (module docstring).

    ``features`` a :class:`gs.cluster.features.GradientFeatures`."""
    dims = [p for p in spec.dims if p in features.projected]
    if not dims:
        have = sorted(features.projected)
        raise InputError(f"ablation: none of dims {list(spec.dims)} was projected by the extraction (has {have})")
    rows: list[dict[str, Any]] = []
    full = np.asarray(features.svd_coords, dtype=np.float64)
    for s in range(spec.seeds):
        seed = spec.seed + s
        labels = kmeans(svd_features(full, spec.rank), spec.k, spec.n_init, seed)
        rows.append(
            {"space": FULL, "dimension": None, "features": "svd", "seed": seed, **_scores(labels, domains, None)}
        )
        for p in dims:
            coords = decompose(normalise_rows(features.projected[p]))
            for feats, labels in _both(coords, spec, seed).items():
                rows.append(
                    {
                        "space": PROJECTED,
                        "dimension": p,
                        "features": feats,
                        "seed": seed,
                        **_scores(labels, domains, None),
                    }
                )
    cost = {"source": "features.npz (no kept gradients)", "projector_seeds": 1, "dims": dims}
    return pd.DataFrame(rows), cost


# --------------------------------------------------------------------------------------------------
# Table and figure
# --------------------------------------------------------------------------------------------------


def summary_table(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd, min and max over seeds per (space, dimension, features) (:mod:`gs.spread`)."""
    from gs.spread import summarise

    return summarise(per_seed, ["space", "dimension", "features"], METRICS)


def table_markdown(table: pd.DataFrame, cost: Mapping[str, Any], spec: AblationSpec) -> str:
    from gs.spread import fmt_spread

    lines = [
        "# Full-dimension vs. random-projection gradient clustering (fair ablation)",
        "",
    ]
    rows = []
    for row in table.itertuples(index=False):
        r = row._asdict()
        cells = [fmt_spread(r[f"{m}_mean"], r[f"{m}_sd"], r[f"{m}_min"], r[f"{m}_max"]) for m in METRICS]
        dim = "n/a" if pd.isna(r["dimension"]) else f"{int(r['dimension']):,}"
        feats = "raw (normalised) rows" if r["features"] == "raw" else f"top-{spec.rank} SVD coordinates"
        rows.append([r["space"], dim, feats, r["seeds"], *cells])
    columns = ["gradient space", "dimension", "k-means on", "seeds", "NMI", "ARI", "purity", "coherence"]
    lines += markdown_table(columns, rows, "lrlrllll")
    kept = cost.get("source") == "kept gradients"
    projector = (
        "TRAK's dense Rademacher projector (BasicProjector, as LESS's collect_grad_reps.py builds it)"
        if spec.kind == "rademacher"
        else "very sparse random projection (Li, Hastie & Church 2006)"
    )
    note = [
        "",
        f"Cells: mean ± sd [min, max] over seeds {spec.seed}..{spec.seed + spec.seeds - 1} (k-means seed"
        + (" and projector seed" if kept else "; one projector seed, the extraction's")
        + f"); k = {spec.k}, k-means++ with {spec.n_init} restarts. Projection: {projector}; each seed's "
        f"size-{spec.dims[-1]} projection gives every smaller size as its first columns. Every side is clustered "
        "both on its L2-normalised rows and on their top-r uncentred SVD coordinates (row-normalised), "
        f"r = gradients.svd.rank = {spec.rank}. NMI/ARI/purity against the hidden domains; coherence: mean pairwise "
        "cosine of the full per-sample gradients within a cluster, size-weighted (n/a: gradients not kept).",
    ]
    if kept:
        note.append(
            f"Cost: {cost['mean_seconds_per_seed']} s per seed to draw and apply the {cost['p_max']}-column "
            f"{spec.kind} projection to n = {cost['n']} gradients of d = {cost['d']:,} (one CPU process)."
        )
    else:
        note.append(
            "No kept gradients (gradients.keep_gradients: false): the full side is the online SVD's coordinates, "
            "the projected sides the extraction's projections; no coherence."
        )
    return "\n".join(lines) + "\n" + "\n".join(note) + "\n"


def plot(table: pd.DataFrame, path: str | Path, spec: AblationSpec) -> Path:
    """NMI, ARI and coherence against the projection size (log axis): mean with a +-sd band and min-max
    bars per k-means feature set; the full-dimension mean as a dashed line with its +-sd band."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.9), layout="constrained")
    axes = fig.subplots(1, 3)
    labels = {"raw": "k-means on normalised rows", "svd": f"k-means on top-{spec.rank} SVD coords"}
    for ax, metric in zip(axes, ("nmi", "ari", "coherence"), strict=True):
        for i, feats in enumerate(FEATURES):
            color = f"C{i}"
            proj = table[(table["space"] == PROJECTED) & (table["features"] == feats)].sort_values("dimension")
            full = table[(table["space"] == FULL) & (table["features"] == feats)]
            if len(proj) and np.isfinite(proj[f"{metric}_mean"]).any():
                x = proj["dimension"].astype(float).to_numpy()
                m = proj[f"{metric}_mean"].to_numpy(dtype=float)
                sd = np.nan_to_num(proj[f"{metric}_sd"].to_numpy(dtype=float))
                lo, hi = proj[f"{metric}_min"].to_numpy(dtype=float), proj[f"{metric}_max"].to_numpy(dtype=float)
                ax.errorbar(
                    x,
                    m,
                    yerr=[m - lo, hi - m],
                    fmt="o-",
                    color=color,
                    capsize=3,
                    lw=1.3,
                    label=f"projection, {labels[feats]}",
                )
                ax.fill_between(x, m - sd, m + sd, color=color, alpha=0.15)
            if len(full) and np.isfinite(full[f"{metric}_mean"]).any():
                fm, fsd = float(full[f"{metric}_mean"].iloc[0]), float(np.nan_to_num(full[f"{metric}_sd"].iloc[0]))
                ax.axhline(fm, color=color, ls="--", lw=1.2, label=f"full dimension, {labels[feats]}")
                ax.axhspan(fm - fsd, fm + fsd, color=color, alpha=0.08)
        ax.set_xscale("log", base=2)
        dims = sorted(table.loc[table["space"] == PROJECTED, "dimension"].dropna().astype(int).unique())
        if dims:
            ax.set_xticks(dims, [str(p) for p in dims])
            ax.minorticks_off()
        ax.set_xlabel("projection dimension p")
        ax.set_ylabel(
            {"nmi": "NMI vs. domains", "ari": "ARI vs. domains", "coherence": "within-cluster gradient cosine"}[metric]
        )
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(
        f"Full dimension vs. {spec.kind} random projection: mean, ±sd band, min-max bars over {spec.seeds} seeds"
    )
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return out


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    from gs.cluster.assignments import align_records
    from gs.cluster.features import load_features

    parser = argparse.ArgumentParser(description="Fair full-dimension vs. random-projection clustering ablation.")
    parser.add_argument(
        "--features", required=True, help="features.npz of the extraction (ids, svd_coords, projected_<p>)"
    )
    parser.add_argument("--gradients", help="gradients.npy (n, d) kept by the extraction (gradients.keep_gradients)")
    parser.add_argument("--train", required=True, help="pooled training records (JSONL), for the domains")
    parser.add_argument("--params", required=True, help="the cluster config section as JSON")
    parser.add_argument("--rank", type=int, required=True, help="gradients.svd.rank")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out-dir", required=True, help="per_seed.csv and cost.json")
    parser.add_argument("--out-table", required=True, help="stem of the table: <stem>.csv and <stem>.md")
    parser.add_argument("--out-png", required=True)
    args = parser.parse_args(argv)
    feats = load_features(args.features)
    records = align_records(read_jsonl(args.train), feats.ids, args.train)
    domains = [str(r.get("domain")) for r in records]
    params = parse_params(args.params)
    section = dict(params.get("ablation") or {})
    if not args.gradients and "dims" not in section:  # a config without the section: what was projected
        params = {**params, "ablation": {**section, "dims": sorted(feats.projected)}}
    spec = spec_from_config(params, args.rank, args.seed, len(set(domains)))
    if args.gradients:
        if not Path(args.gradients).is_file():
            raise InputError(f"{args.gradients}: kept gradients not found")
        g = np.load(args.gradients, mmap_mode="r")
        if g.ndim != 2 or g.shape[0] != feats.n:
            raise InputError(f"{args.gradients}: shape {g.shape}, expected (n={feats.n}, d)")
        per_seed, cost = run_kept(np.asarray(g, dtype=np.float32), domains, spec)
    else:
        per_seed, cost = run_features(feats, domains, spec)
    table = summary_table(per_seed)
    out = Path(args.out_dir)
    with atomic_path(out / "per_seed.csv") as tmp:
        per_seed.to_csv(tmp, index=False)
    write_json(out / "cost.json", cost)
    stem = Path(args.out_table)
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(stem.with_suffix(".md")) as tmp:
        Path(tmp).write_text(table_markdown(table, cost, spec), encoding="utf-8")
    plot(table, args.out_png, spec)
    print(table.to_string(index=False))
    print(cost)


if __name__ == "__main__":
    run_cli(main)
