"""The report's tables for any number of parts and targets: 2 and 5 targets, each with an accuracy task and a
bits-per-byte task (and one multiple-choice task), every cell against numpy on the numbers written in."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from gs.cluster.quality import external_scores
from gs.io import write_json
from gs.report.build import main

LN2 = math.log(2)


def _report(targets: list[str], rng: np.random.Generator) -> tuple[dict, dict[str, float], dict[str, float]]:
    """An evaluation JSON with per target ``<t>_acc`` (acc) and ``<t>_bpb`` (bits per byte), and the values put in."""
    report = {"targets": [], "primary": {}, "tasks": {}}
    acc_values, bpb_values = {}, {}
    for t in targets:
        n = int(rng.integers(4, 9))
        acc = rng.integers(0, 2, n).astype(float)
        ll = -rng.uniform(5, 50, n)
        n_bytes = rng.integers(10, 60, n)
        acc_values[f"{t}_acc"] = float(acc.mean())
        bpb_values[f"{t}_bpb"] = float(-ll.sum() / (LN2 * n_bytes.sum()))
        report["targets"].append({"target": t, "tasks": [f"{t}_acc", f"{t}_bpb"]})
        report["primary"][f"{t}_acc"] = {"metric": "acc", "value": acc_values[f"{t}_acc"]}
        report["primary"][f"{t}_bpb"] = {"metric": "bits_per_byte", "value": bpb_values[f"{t}_bpb"]}
        report["tasks"][f"{t}_acc"] = {
            "target": t,
            "n_examples": n,
            "metrics": {"acc": acc_values[f"{t}_acc"]},
            "stderr": {"acc": float(np.std(acc, ddof=1) / math.sqrt(n))},
            "samples": [{"doc_id": i, "id": f"{t}-{i}", "scores": {"acc": a}} for i, a in enumerate(acc)],
        }
        report["tasks"][f"{t}_bpb"] = {
            "target": t,
            "n_examples": n,
            "metrics": {"bits_per_byte": bpb_values[f"{t}_bpb"]},
            "stderr": {"bits_per_byte": None},
            "samples": [
                {
                    "doc_id": i,
                    "id": f"{t}-{i}",
                    "loglikelihood": float(ll[i]),
                    "target": "x" * int(n_bytes[i]),
                    "scores": {"bits_per_byte": float(-ll[i] / (n_bytes[i] * LN2))},
                }
                for i in range(n)
            ],
        }
    return report, acc_values, bpb_values


@pytest.mark.parametrize("n_targets", [2, 5])
def test_tables_have_a_column_per_task_for_any_number_of_targets(tmp_path, n_targets):
    targets = [f"target{i}" for i in range(n_targets)]
    rng = np.random.default_rng(n_targets)
    values = {}
    evals = []
    for system in ("base", "multitask", "gradientspace-single"):
        report, acc, bpb = _report(targets, rng)
        values[system] = (acc, bpb)
        path = tmp_path / "eval" / f"{system}.json"
        write_json(path, report)
        evals.append(f"{system}={path}")
    res = tmp_path / "results"
    (res / "latency").mkdir(parents=True)
    pd.DataFrame({"mode": ["single"], "ttft_s": [0.1]}).to_csv(res / "latency" / "latency.csv", index=False)
    (tmp_path / "benchmarks").mkdir()
    tables = tmp_path / "tables"
    main(
        ["--results", str(res), "--eval", *evals, "--benchmarks", str(tmp_path / "benchmarks")]
        + ["--tables", str(tables), "--figures", str(tmp_path / "figures"), "--resamples", "200"]
    )
    main_csv = pd.read_csv(tables / "main.csv").set_index("system")
    likelihood = pd.read_csv(tables / "likelihood.csv").set_index("system")
    acc_cols = [f"{t}_acc" for t in targets]
    bpb_cols = [f"{t}_bpb" for t in targets]
    plain = [c for c in main_csv.columns if not c.endswith(("_stderr", "_ci_low", "_ci_high"))]
    assert plain == [*acc_cols, "average", "n_examples"]
    for system, (acc, bpb) in values.items():
        assert main_csv.loc[system, acc_cols].tolist() == pytest.approx([acc[c] for c in acc_cols])
        assert main_csv.loc[system, "average"] == pytest.approx(np.mean(list(acc.values())))
        assert likelihood.loc[system, bpb_cols].tolist() == pytest.approx([bpb[c] for c in bpb_cols])
        assert likelihood.loc[system, "average"] == pytest.approx(np.mean(list(bpb.values())))
    paired = pd.read_csv(tables / "paired.csv")
    # GradientSpace vs. multitask and vs. base, each measure, per task and the average.
    assert len(paired) == 2 * 2 * (n_targets + 1)
    assert set(paired["domain"]) == {*acc_cols, *bpb_cols, "average"}
    assert (tmp_path / "figures" / "likelihood.png").stat().st_size > 5000


@pytest.mark.parametrize("n_parts", [2, 5])
def test_cluster_quality_for_any_number_of_parts(n_parts):
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rng = np.random.default_rng(n_parts)
    parts = np.array([f"part{i}" for i in rng.integers(0, n_parts, 60)])
    labels = rng.integers(0, 3, 60)
    scores = external_scores(labels, parts)
    assert scores["nmi"] == pytest.approx(normalized_mutual_info_score(parts, labels))
    assert scores["ari"] == pytest.approx(adjusted_rand_score(parts, labels))
    # Purity by hand: each cluster's most common part, summed over clusters, over all samples.
    purity = sum(pd.Series(parts[labels == c]).value_counts().iloc[0] for c in np.unique(labels)) / len(parts)
    assert scores["purity"] == pytest.approx(purity)


def test_a_base_model_alone_without_latency_or_selections(tmp_path):
    """A study that measures neither latency nor selections (studies: [clusterucb] without targets, or a
    config's own subset): the main table has the base model's row, and the other tables say they were not run."""
    rng = np.random.default_rng(0)
    report, acc, _ = _report(["a", "b"], rng)
    path = tmp_path / "eval" / "base.json"
    write_json(path, report)
    (tmp_path / "benchmarks").mkdir()
    tables = tmp_path / "tables"
    main(
        ["--results", str(tmp_path / "results"), "--eval", f"base={path}", "--latency", "none"]
        + ["--benchmarks", str(tmp_path / "benchmarks"), "--tables", str(tables), "--figures", str(tmp_path / "figs")]
        + ["--resamples", "200"]
    )
    main_csv = pd.read_csv(tables / "main.csv").set_index("system")
    assert main_csv.index.tolist() == ["base"]
    assert main_csv.loc["base", ["a_acc", "b_acc"]].tolist() == pytest.approx([acc["a_acc"], acc["b_acc"]])
    assert "Not measured" in (tables / "latency.md").read_text()
    for stem in ("clusterucb", "clusterucb_paired", "clusterucb_budget", "clusterucb_ablation"):
        assert "Not run: no selection targets." in (tables / f"{stem}.md").read_text(), stem
    assert (tmp_path / "figs" / "clusterucb_budget.png").is_file()


@pytest.mark.parametrize("n_targets", [2, 5])
def test_budget_curve_table_and_figure_for_any_number_of_targets(tmp_path, monkeypatch, n_targets):
    """Each target's budget curve (selection.json) in the table, in the targets' order, and one column of the
    figure per target (a 2 x n grid) with that target's points."""
    from gs.report import figures as report_figures
    from gs.report.build import clusterucb_budget_table

    targets = [f"target{i}" for i in range(n_targets)]
    rng = np.random.default_rng(n_targets)
    expected = []
    for t in targets:
        curve = [
            {
                "method": method,
                "k": 4,
                "budget_fraction": b,
                "seeds": 2,
                "overlap_mean": float(rng.uniform()),
                "overlap_std": 0.1,
                "ratio_mean": float(rng.uniform()),
                "ratio_std": 0.1,
            }
            for method in ("clusterucb", "random")
            for b in (0.5, 1.0)
        ]
        expected += [{"target": t, **point} for point in curve]
        write_json(tmp_path / "selection" / t / "selection.json", {"budget_curve": curve})
    df = clusterucb_budget_table(tmp_path / "selection", targets)
    assert df.to_dict("records") == expected
    figures = []
    monkeypatch.setattr(report_figures, "save_figure", lambda fig, path: figures.append(fig))
    report_figures.plot_budget(df, targets, tmp_path / "budget.png")
    titles = [ax.get_title() for ax in figures[0].axes]
    assert titles == targets + [""] * n_targets  # overlap row titled by target, ratio row below it
    for col, t in enumerate(targets):  # two lines (methods) per panel, the target's own points
        lines = figures[0].axes[col].containers
        assert len(lines) == 2
        ys = sorted(float(y) for c in lines for y in c.lines[0].get_ydata())
        assert ys == pytest.approx(sorted(p["overlap_mean"] for p in expected if p["target"] == t))
