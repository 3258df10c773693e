"""The study's figures, each drawing its uncertainty: paired differences with bootstrap 95% intervals
(:mod:`gs.report.tables`), the ClusterUCB budget curve with one std over seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from gs.io import atomic_path  # noqa: E402


def save_figure(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)


def plot_differences(df: pd.DataFrame, reference: str, path: Path, *, ylabel: str, title: str) -> None:
    """Each system's paired difference to ``reference`` per domain (a :func:`gs.report.tables.paired_table`
    of one measure: columns ``system``, ``domain``, ``difference``, ``ci_low``, ``ci_high``), a marker with
    its 95% interval as error bars, one group per domain, a line at 0 (no difference)."""
    domains = list(dict.fromkeys(df["domain"]))
    systems = list(dict.fromkeys(df["system"]))
    fig, ax = plt.subplots(figsize=(max(7.0, 0.35 * len(systems) * len(domains)), 4.0))
    width = 0.8 / max(len(systems), 1)
    x = np.arange(len(domains))
    for i, system in enumerate(systems):
        sub = df[df["system"] == system].set_index("domain").reindex(domains)
        mid = sub["difference"].to_numpy(dtype=float)
        err = np.vstack([mid - sub["ci_low"].to_numpy(dtype=float), sub["ci_high"].to_numpy(dtype=float) - mid])
        ax.errorbar(x + (i - (len(systems) - 1) / 2) * width, mid, yerr=err, fmt="o", ms=4, capsize=3, label=system)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xticks(x, domains)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left", title=f"minus {reference}", title_fontsize=7)
    fig.suptitle(title)
    save_figure(fig, path)


def plot_budget(df: pd.DataFrame, targets: list[str], path: Path) -> None:
    """Overlap with LESS's top set and mean-influence ratio against total compute, one column per target
    (``df``: :func:`gs.report.build.clusterucb_budget_table`); a line per selector and k, error bars one std over
    seeds."""
    shown = [t for t in targets if not df.empty and (df["target"] == t).any()]
    fig, axes = plt.subplots(2, max(len(shown), 1), figsize=(3.6 * max(len(shown), 1), 6.4), squeeze=False)
    for col, t in enumerate(shown):
        sub = df[(df["target"] == t) & (df["seeds"] > 0)]
        for (method, k), g in sub.groupby(["method", "k"], sort=True):
            label = method if method == "random" else f"{method} k={k}"
            for row, (mean, std) in enumerate((("overlap_mean", "overlap_std"), ("ratio_mean", "ratio_std"))):
                axes[row, col].errorbar(g["budget_fraction"], g[mean], yerr=g[std], marker="o", capsize=2, label=label)
        axes[0, col].set_title(t)
        axes[1, col].set_xlabel("total compute / full LESS's")
    axes[0, 0].set_ylabel("overlap with LESS's top set")
    axes[1, 0].set_ylabel("mean influence / LESS top set's")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("ClusterUCB, uniform-over-clusters and random at equal total compute (mean +- std over seeds)")
    save_figure(fig, path)
