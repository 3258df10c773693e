"""The table builders of :mod:`gs.report` on hand-made stage outputs: every cell against the number put in.

Expected values are written out by hand (or with numpy from the inputs), never read back from
:mod:`gs.report`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gs.io import InputError, write_json
from gs.report import (
    LIKELIHOOD_TASKS,
    clusterucb_table,
    compute_table,
    main,
    main_table,
)

DOMAINS = ["math", "code", "finance", "writing"]
PRIMARY = {"math": "exact_match", "code": "pass@1", "finance": "exact_match_1pct", "writing": "constraint"}

# system -> domain -> (accuracy, bits per byte, examples)
SCORES = {
    "base": {"math": (0.25, 0.9, 4), "code": (0.5, 0.3, 4), "finance": (0.0, 1.7, 4), "writing": (0.75, 1.1, 4)},
    "gradientspace-single": {
        "math": (0.5, 0.8, 4),
        "code": (0.25, 0.35, 4),
        "finance": (1.0, 1.5, 4),
        "writing": (0.0, 1.0, 3),
    },
}


def _eval_report(scores: dict[str, tuple[float | None, float | None, int]]) -> dict:
    """An evaluation JSON as gs.evaluation writes it (the keys gs.report reads)."""
    primary, tasks = {}, {}
    for d, (acc, bpb, n) in scores.items():
        primary[f"gs_{d}"] = {"metric": PRIMARY[d], "value": acc}
        primary[f"gs_{d}_likelihood"] = {"metric": "bits_per_byte", "value": bpb}
        tasks[f"gs_{d}"] = {"n_examples": n, "metrics": {PRIMARY[d]: acc}}
        tasks[f"gs_{d}_likelihood"] = {"n_examples": n, "metrics": {"bits_per_byte": bpb}}
    return {"primary": primary, "tasks": tasks}


@pytest.fixture()
def eval_files(tmp_path) -> dict[str, Path]:
    files = {}
    for system, scores in SCORES.items():
        files[system] = tmp_path / "eval" / f"{system}.json"
        write_json(files[system], _eval_report(scores))
    return files


def test_main_table_rows_are_the_primary_values_and_their_mean(eval_files):
    df, metrics = main_table(eval_files, DOMAINS)
    assert list(df.columns) == ["system", *DOMAINS, "average", "n_examples"]
    assert df["system"].tolist() == ["base", "gradientspace-single"]
    assert metrics == PRIMARY
    base, gs = df.iloc[0], df.iloc[1]
    assert [base[d] for d in DOMAINS] == [0.25, 0.5, 0.0, 0.75]
    assert base["average"] == pytest.approx((0.25 + 0.5 + 0.0 + 0.75) / 4)
    assert gs["average"] == pytest.approx((0.5 + 0.25 + 1.0 + 0.0) / 4)
    assert gs["n_examples"] == "4/4/4/3"


def test_likelihood_table_reads_the_likelihood_tasks(eval_files):
    df, metrics = main_table(eval_files, DOMAINS, LIKELIHOOD_TASKS)
    assert metrics == dict.fromkeys(DOMAINS, "bits_per_byte")
    assert df.loc[0, DOMAINS].tolist() == [0.9, 0.3, 1.7, 1.1]
    assert df.loc[1, "average"] == pytest.approx((0.8 + 0.35 + 1.5 + 1.0) / 4)


def test_a_missing_domain_does_not_drop_out_of_the_average(tmp_path, eval_files):
    # A report without the code task: an error naming the file and the task, not a mean over 3 domains.
    partial = {d: v for d, v in SCORES["base"].items() if d != "code"}
    write_json(tmp_path / "partial.json", _eval_report(partial))
    with pytest.raises(InputError, match=r"partial\.json: no result for gs_code \(domain code\)"):
        main_table({**eval_files, "partial": tmp_path / "partial.json"}, DOMAINS)
    # A task whose metric could not be computed (None): the row's average is undefined, not the others' mean.
    write_json(tmp_path / "none.json", _eval_report({**SCORES["base"], "finance": (None, 1.7, 4)}))
    df, _ = main_table({"none": tmp_path / "none.json"}, DOMAINS)
    assert df.loc[0, "finance"] is None or math.isnan(df.loc[0, "finance"])
    assert math.isnan(df.loc[0, "average"])


def test_systems_must_agree_on_the_metric_of_a_domain(tmp_path, eval_files):
    report = _eval_report(SCORES["base"])
    report["primary"]["gs_math"]["metric"] = "flexible_match"
    write_json(tmp_path / "other.json", report)
    with pytest.raises(InputError, match="gs_math.*flexible_match.*exact_match|gs_math.*exact_match.*flexible_match"):
        main_table({**eval_files, "other": tmp_path / "other.json"}, DOMAINS)


def _selection(n: int = 8) -> dict:
    methods = {
        "clusterucb": {"selected_ids": ["a", "b"], "computations": 6},
        "full": {"selected_ids": ["a", "c"], "computations": n},
        "random": {"selected_ids": ["d", "e"], "computations": 0},
    }
    for m, extra in zip(methods.values(), [(0.5, 0.9), (1.0, 1.0), (0.0, 0.4)], strict=True):
        m.update(
            computation_ratio_vs_full=m["computations"] / n, overlap_with_full=extra[0], mean_influence_ratio=extra[1]
        )
    return {"n": n, "keep": 2, "methods": methods, "budget_sweep": []}


def test_clusterucb_table(tmp_path):
    for t in ("math", "code"):
        write_json(tmp_path / "selection" / t / "selection.json", _selection())
    evals = {}
    for i, method in enumerate(("clusterucb", "full", "random")):
        evals[f"select-math-{method}"] = tmp_path / "eval" / f"select-math-{method}.json"
        write_json(evals[f"select-math-{method}"], _eval_report({"math": (0.25 * i, 0.6 + 0.01 * i, 4)}))
    df = clusterucb_table(tmp_path / "selection", ["math", "code"], evals)
    assert df[["target", "method"]].values.tolist() == [
        ["math", "clusterucb"],
        ["math", "full"],
        ["math", "random"],
        ["code", "clusterucb"],
        ["code", "full"],
        ["code", "random"],
    ]
    math_rows = df[df["target"] == "math"]
    assert math_rows["accuracy"].tolist() == [0.0, 0.25, 0.5]
    assert math_rows["metric"].tolist() == ["exact_match"] * 3
    assert math_rows["bits_per_byte"].tolist() == pytest.approx([0.6, 0.61, 0.62])
    assert df["influence_computations"].tolist() == [6, 8, 0] * 2
    assert df["computations_vs_full"].tolist() == [0.75, 1.0, 0.0] * 2
    assert df["selected"].tolist() == [2] * 6
    assert df["overlap_with_full_top"].tolist() == [0.5, 1.0, 0.0] * 2
    # Code was not fine-tuned: no accuracy, rather than another target's.
    assert df[df["target"] == "code"]["accuracy"].isna().all()
    # A fine-tuned system whose evaluation lacks its target's task is an error, not an empty cell.
    write_json(evals["select-math-full"], _eval_report({"code": (0.5, 0.6, 4)}))
    with pytest.raises(InputError, match=r"select-math-full\.json: no result for gs_math"):
        clusterucb_table(tmp_path / "selection", ["math"], evals)


def test_compute_table_reads_snakemake_benchmarks(tmp_path):
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    (tmp_path / "train_expert").mkdir()
    rows = [
        "10.0\t0:00:10\t500.5\t900\t400\t450\t1\t2\t90\t9.0\n",
        "14.0\t0:00:14\t700.25\t900\t400\t450\t1\t2\t90\t13.0\n",
    ]
    (tmp_path / "train_expert" / "gradientspace_0.tsv").write_text(header + "".join(rows))
    (tmp_path / "prepare_model").mkdir()
    (tmp_path / "prepare_model" / "model.tsv").write_text(header + "3.5\t0:00:03\t-\t-\t-\t-\t-\t-\t-\t-\n")
    df = compute_table(tmp_path)
    assert df["rule"].tolist() == ["prepare_model", "train_expert"]
    assert df["job"].tolist() == ["model", "gradientspace_0"]
    assert df["wall_s"].tolist() == [3.5, 12.0]
    assert df["max_rss_mb"].iloc[1] == 700.25 and math.isnan(df["max_rss_mb"].iloc[0])
    assert df["cpu_time_s"].iloc[1] == 11.0


def test_cli_tables_match_the_inputs(tmp_path, eval_files):
    res = tmp_path / "results"
    (res / "latency").mkdir(parents=True)
    pd.DataFrame({"mode": ["single"], "ttft_s": [0.1]}).to_csv(res / "latency" / "latency.csv", index=False)
    write_json(res / "router" / "gradientspace" / "router.json", {"expert_ids": [0, 1], "heldout_accuracy": 1.0})
    (tmp_path / "benchmarks").mkdir()
    tables, figures = tmp_path / "tables", tmp_path / "figures"
    evals = [f"{s}={p}" for s, p in eval_files.items()]
    main(
        ["--results", str(res), "--eval", *evals, "--domains", *DOMAINS]
        + ["--benchmarks", str(tmp_path / "benchmarks"), "--tables", str(tables), "--figures", str(figures)]
    )
    table = pd.read_csv(tables / "main.csv")
    for _, row in table.iterrows():
        scores = SCORES[row["system"]]
        assert [row[d] for d in DOMAINS] == [scores[d][0] for d in DOMAINS]
        assert row["average"] == pytest.approx(np.mean([scores[d][0] for d in DOMAINS]))
    likelihood = pd.read_csv(tables / "likelihood.csv")
    assert likelihood.set_index("system")["average"].to_dict() == pytest.approx(
        {s: np.mean([v[d][1] for d in DOMAINS]) for s, v in SCORES.items()}
    )
    assert (tables / "main.md").read_text().startswith("# Accuracy per system and domain\n")
    assert (figures / "likelihood.png").stat().st_size > 5000
    assert not list(tables.glob(".*"))  # no temporaries left
