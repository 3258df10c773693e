"""The table builders of gs.report.build / gs.report.tables on hand-made evaluation reports: every cell against
the number put in, every interval against a bootstrap written here with numpy (the same seeded draws as
scipy.stats.bootstrap), never read back from the code under test.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gs.io import InputError, write_json
from gs.report.build import clusterucb_table, compute_table, main
from gs.report.tables import (
    NO_DIFFERENCE,
    TOO_FEW,
    clusterucb_paired_table,
    comparisons,
    load_reports,
    main_table,
    paired_table,
)

DOMAINS = ["math", "code", "finance", "writing"]
PRIMARY = {"math": "exact_match", "code": "pass@1", "finance": "exact_match_1pct", "writing": "constraint"}
LN2 = math.log(2)
# The tables' columns: a label (here the part's name) -> the task scored there.
ACC = {d: f"gs_{d}" for d in DOMAINS}
LIKELIHOOD_TASKS = {d: f"gs_{d}_likelihood" for d in DOMAINS}

# system -> domain -> (per-example accuracy, per-example (loglikelihood, bytes)); example i has id "<domain>-i".
SCORES = {
    "base": {
        "math": ([0, 1, 0, 0], [(-90.0, 100), (-45.0, 60), (-30.0, 40), (-80.0, 80)]),
        "code": ([1, 0, 1, 0], [(-10.0, 50), (-20.0, 40), (-30.0, 90), (-12.0, 30)]),
        "finance": ([0, 0, 0, 0], [(-170.0, 100), (-50.0, 30), (-60.0, 40), (-40.0, 20)]),
        "writing": ([1, 1, 1, 0], [(-110.0, 100), (-30.0, 40), (-50.0, 50), (-20.0, 20)]),
    },
    "gradientspace-single": {
        "math": ([1, 1, 1, 1], [(-80.0, 100), (-40.0, 60), (-25.0, 40), (-70.0, 80)]),
        "code": ([1, 0, 0, 0], [(-12.0, 50), (-20.0, 40), (-28.0, 90), (-12.0, 30)]),
        "finance": ([1, 1, 1, 1], [(-150.0, 100), (-45.0, 30), (-55.0, 40), (-35.0, 20)]),
        "writing": ([0, 0, 0], [(-100.0, 100), (-30.0, 40), (-45.0, 50)]),
    },
}


def _value(acc: list[int], ll: list[tuple[float, int]]) -> tuple[float, float]:
    """lm-eval's aggregates: the mean score, and the corpus bits per byte -sum ll / (ln 2 sum bytes)."""
    return float(np.mean(acc)), -sum(x for x, _ in ll) / (LN2 * sum(b for _, b in ll))


def _eval_report(scores: dict, *, reverse: bool = False) -> dict:
    """An evaluation JSON as gs.evaluation.run writes it (the keys gs.report.build reads), samples in example order
    (or reversed: pairing must go by id, not position)."""
    primary, tasks = {}, {}
    for d, (acc, ll) in scores.items():
        value, bpb = _value(acc, ll) if acc else (None, None)
        order = range(len(acc))[::-1] if reverse else range(len(acc))
        gen = [{"doc_id": str(i), "id": f"{d}-{i}", "scores": {PRIMARY[d]: float(acc[i])}} for i in order]
        lik = [
            {"doc_id": str(i), "id": f"{d}-{i}", "loglikelihood": ll[i][0], "target": "x" * ll[i][1]}
            | {"scores": {"bits_per_byte": -ll[i][0] / (ll[i][1] * LN2)}}
            for i in order
        ]
        se = float(np.std(acc, ddof=1) / math.sqrt(len(acc))) if len(acc) > 1 else None
        primary[f"gs_{d}"] = {"metric": PRIMARY[d], "value": value}
        primary[f"gs_{d}_likelihood"] = {"metric": "bits_per_byte", "value": bpb}
        tasks[f"gs_{d}"] = {"n_examples": len(acc), "metrics": {PRIMARY[d]: value}, "stderr": {PRIMARY[d]: se}}
        tasks[f"gs_{d}"]["samples"] = gen
        tasks[f"gs_{d}_likelihood"] = {"n_examples": len(acc), "metrics": {"bits_per_byte": bpb}, "samples": lik}
        tasks[f"gs_{d}_likelihood"]["stderr"] = {"bits_per_byte": None}
    targets = [{"target": d, "tasks": [f"gs_{d}", f"gs_{d}_likelihood"]} for d in scores]
    return {"targets": targets, "primary": primary, "tasks": tasks}


def _boot(strata: list[tuple[np.ndarray, np.ndarray]], seed: int = 0, b: int = 2000) -> tuple[float, float]:
    """Percentile bootstrap of the mean over strata of sum(num) / sum(den), drawn stratum by stratum."""
    rng, reps = np.random.default_rng(seed), np.zeros(b)
    for num, den in strata:
        idx = rng.integers(0, len(num), (b, len(num)))
        reps += np.array([num[r].sum() / den[r].sum() for r in idx]) / len(strata)
    low, high = np.percentile(reps, [2.5, 97.5])
    return float(low), float(high)


def _ones(acc: list[int]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(acc, dtype=float)
    return x, np.ones_like(x)


def _acc(system: str, d: str) -> tuple[np.ndarray, np.ndarray]:
    return _ones(SCORES[system][d][0])


def _bits(system: str, d: str) -> tuple[np.ndarray, np.ndarray]:
    ll = SCORES[system][d][1]
    return np.array([-x / LN2 for x, _ in ll]), np.array([float(b) for _, b in ll])


@pytest.fixture()
def eval_files(tmp_path) -> dict[str, Path]:
    files = {}
    for system, scores in SCORES.items():
        files[system] = tmp_path / "eval" / f"{system}.json"
        write_json(files[system], _eval_report(scores))
    return files


def test_main_table_values_stderr_and_intervals(eval_files):
    df, metrics = main_table(load_reports(eval_files), DOMAINS, ACC, resamples=2000, seed=0)
    per = [f"{d}{s}" for d in DOMAINS for s in ("", "_stderr", "_ci_low", "_ci_high")]
    avg = ["average", "average_stderr", "average_ci_low", "average_ci_high"]
    assert list(df.columns) == ["system", *per, *avg, "n_examples"]
    assert df["system"].tolist() == ["base", "gradientspace-single"]
    assert metrics == PRIMARY
    base, gs = df.iloc[0], df.iloc[1]
    assert [base[d] for d in DOMAINS] == [0.25, 0.5, 0.0, 0.75]
    assert base["average"] == pytest.approx((0.25 + 0.5 + 0.0 + 0.75) / 4)
    assert gs["average"] == pytest.approx((1.0 + 0.25 + 1.0 + 0.0) / 4)
    assert gs["n_examples"] == "4/4/4/3"
    # lm-eval's stderr of math, base: sample std of [0, 1, 0, 0] / sqrt(4) = 0.5 / 2; the average's combines them.
    assert base["math_stderr"] == pytest.approx(0.25)
    ses = [np.std(SCORES["base"][d][0], ddof=1) / 2 for d in DOMAINS]
    assert base["average_stderr"] == pytest.approx(math.sqrt(sum(e * e for e in ses)) / 4)
    for system, row in (("base", base), ("gradientspace-single", gs)):
        for d in DOMAINS:
            assert (row[f"{d}_ci_low"], row[f"{d}_ci_high"]) == pytest.approx(_boot([_acc(system, d)]), abs=1e-12)
        expected = _boot([_acc(system, d) for d in DOMAINS])
        assert (row["average_ci_low"], row["average_ci_high"]) == pytest.approx(expected, abs=1e-12)
    # All four math answers right: every resample is 1; a constant domain has a zero-width interval.
    assert (gs["math_ci_low"], gs["math_ci_high"]) == (1.0, 1.0)
    assert base["code_ci_low"] < 0.5 < base["code_ci_high"]


def test_likelihood_intervals_resample_the_corpus_bits_per_byte(eval_files):
    df, metrics = main_table(load_reports(eval_files), DOMAINS, LIKELIHOOD_TASKS, seed=3)
    assert metrics == dict.fromkeys(DOMAINS, "bits_per_byte")
    base = df.iloc[0]
    # -sum ll / (ln 2 sum bytes), not the mean of the per-example ratios.
    assert base["math"] == pytest.approx(245 / (LN2 * 280))
    assert base["math"] != pytest.approx(np.mean([90 / 100, 45 / 60, 30 / 40, 80 / 80]) / LN2)
    num, den = _bits("base", "math")
    assert (base["math_ci_low"], base["math_ci_high"]) == pytest.approx(_boot([(num, den)], seed=3), abs=1e-12)
    strata = [_bits("gradientspace-single", d) for d in DOMAINS]
    gs = df.iloc[1]
    assert (gs["average_ci_low"], gs["average_ci_high"]) == pytest.approx(_boot(strata, seed=3), abs=1e-12)


def test_a_missing_domain_does_not_drop_out_of_the_average(tmp_path, eval_files):
    # A report without the code task: an error naming the file and the task, not a mean over 3 domains.
    partial = {d: v for d, v in SCORES["base"].items() if d != "code"}
    write_json(tmp_path / "partial.json", _eval_report(partial))
    with pytest.raises(InputError, match=r"partial\.json: no result for gs_code; rerun"):
        main_table(load_reports({**eval_files, "partial": tmp_path / "partial.json"}), DOMAINS, ACC)
    # A task whose metric could not be computed (None): the row's average is undefined, not the others' mean.
    report = _eval_report(SCORES["base"])
    report["primary"]["gs_finance"]["value"] = None
    for s in report["tasks"]["gs_finance"]["samples"]:
        s["scores"]["exact_match_1pct"] = None
    write_json(tmp_path / "none.json", report)
    df, _ = main_table(load_reports({"none": tmp_path / "none.json"}), DOMAINS, ACC)
    assert df.loc[0, "finance"] is None or math.isnan(df.loc[0, "finance"])
    assert math.isnan(df.loc[0, "finance_ci_low"])
    assert math.isnan(df.loc[0, "average"]) and math.isnan(df.loc[0, "average_ci_high"])


def test_samples_that_do_not_give_the_reported_value_are_an_error(tmp_path):
    report = _eval_report(SCORES["base"])
    report["tasks"]["gs_code"]["samples"][0]["scores"]["pass@1"] = 0.0  # now 1 of 4, the report says 2 of 4
    write_json(tmp_path / "bad.json", report)
    with pytest.raises(InputError, match=r"bad\.json: gs_code: the 4 samples' pass@1 gives 0\.25, the report 0\.5"):
        main_table(load_reports({"bad": tmp_path / "bad.json"}), DOMAINS, ACC)
    report = _eval_report(SCORES["base"])
    report["tasks"]["gs_math"]["samples"].append(report["tasks"]["gs_math"]["samples"][0])
    write_json(tmp_path / "twice.json", report)
    with pytest.raises(InputError, match=r"twice\.json: gs_math sample 4: example \('0', 'math-0'\) scored twice"):
        main_table(load_reports({"twice": tmp_path / "twice.json"}), DOMAINS, ACC)


def test_systems_must_agree_on_the_metric_of_a_domain(tmp_path, eval_files):
    report = _eval_report(SCORES["base"])
    report["primary"]["gs_math"]["metric"] = "flexible_match"
    for s in report["tasks"]["gs_math"]["samples"]:
        s["scores"]["flexible_match"] = s["scores"]["exact_match"]
    write_json(tmp_path / "other.json", report)
    with pytest.raises(InputError, match="gs_math.*flexible_match.*exact_match|gs_math.*exact_match.*flexible_match"):
        main_table(load_reports({**eval_files, "other": tmp_path / "other.json"}), DOMAINS, ACC)


NOT_RUN = (
    "bubblewrap unavailable (`bwrap` not found on PATH; install the `bubblewrap` package); set "
    "evaluation.run_code_without_bubblewrap: true to run it with the in-process guards only"
)


def _code_not_run(system: str) -> dict:
    """``system``'s evaluation JSON as gs.evaluation.run writes it when gs_code's code was not run (no bubblewrap):
    written out here, not produced by the code under test."""
    report = _eval_report(SCORES[system])
    report["primary"]["gs_code"] = {"metric": "pass@1", "value": None, "not_run": NOT_RUN}
    report["tasks"]["gs_code"] = {"domain": "code", "not_run": NOT_RUN, "metrics": {}, "n_examples": 0, "samples": []}
    report["code_sandbox"] = "not run: " + NOT_RUN
    return report


def test_code_not_run_shows_as_not_run_and_the_average_is_over_the_domains_that_ran(tmp_path, eval_files):
    from gs.report.tables import interval_markdown, not_run_note

    write_json(eval_files["gradientspace-single"], _code_not_run("gradientspace-single"))
    reports = load_reports(eval_files)
    df, metrics = main_table(reports, DOMAINS, ACC, resamples=2000, seed=0)
    assert metrics == PRIMARY
    base, gs = df.iloc[0], df.iloc[1]
    assert (base["not_run"], gs["not_run"]) == ("", "code")
    assert math.isnan(gs["code"]) and math.isnan(gs["code_ci_low"])
    # The mean over math, finance and writing (1, 1, 0): 2/3, not the 0.5 that scoring code 0 would give.
    assert gs["average"] == pytest.approx(2 / 3)
    ran = {d: SCORES["gradientspace-single"][d][0] for d in DOMAINS if d != "code"}
    ses = [np.std(a, ddof=1) / math.sqrt(len(a)) for a in ran.values()]
    assert gs["average_stderr"] == pytest.approx(math.sqrt(sum(e * e for e in ses)) / 3)
    expected = _boot([_acc("gradientspace-single", d) for d in DOMAINS if d != "code"])
    assert (gs["average_ci_low"], gs["average_ci_high"]) == pytest.approx(expected, abs=1e-12)
    assert gs["n_examples"] == "4/-/4/3" and base["n_examples"] == "4/4/4/4"
    assert base["average"] == pytest.approx((0.25 + 0.5 + 0.0 + 0.75) / 4)  # the other row is unchanged
    md = interval_markdown(df, DOMAINS)
    assert md.loc[1, "code"] == "not run" and md.loc[1, "average"].endswith(" (without code)")
    assert md.loc[1, "average"].startswith("0.667 ± ")
    assert md.loc[0, "code"].startswith("0.500 ± ") and "without" not in md.loc[0, "average"]
    note = not_run_note(reports, DOMAINS, ACC)
    assert note.startswith(f"Not run: code (pass@1) for gradientspace-single: {NOT_RUN}. ")
    assert "over the domains that ran" in note and "without code" in note
    assert not_run_note(reports, DOMAINS, LIKELIHOOD_TASKS) == ""  # the likelihood task still ran
    # Paired: the code row reads "not run"; the average is over the three domains both ran.
    pairs = [("GradientSpace experts vs. base", "gradientspace-single", "base")]
    acc = paired_table(reports, {"accuracy": ACC}, pairs, seed=1).set_index("domain")
    assert acc.loc["code", "reading"] == "not run" and acc.loc["code", "n"] == 0
    # math +0.75, finance +1.0, writing on the 3 examples both scored: 0 - 1 = -1.0.
    assert acc.loc["average", "difference"] == pytest.approx((0.75 + 1.0 - 1.0) / 3)
    assert acc.loc["average", "n"] == 4 + 4 + 3


def test_cli_main_table_says_not_run_once_and_leaves_the_csv_cell_empty(tmp_path, eval_files):
    write_json(eval_files["base"], _code_not_run("base"))
    write_json(eval_files["gradientspace-single"], _code_not_run("gradientspace-single"))
    res = tmp_path / "results"
    (res / "latency").mkdir(parents=True)
    pd.DataFrame({"mode": ["single"], "ttft_s": [0.1]}).to_csv(res / "latency" / "latency.csv", index=False)
    (tmp_path / "benchmarks").mkdir()
    tables = tmp_path / "tables"
    main(
        ["--results", str(res), "--eval", *[f"{s}={p}" for s, p in eval_files.items()]]
        + ["--benchmarks", str(tmp_path / "benchmarks"), "--tables", str(tables), "--figures", str(tmp_path / "f")]
    )
    table = pd.read_csv(tables / "main.csv", keep_default_na=False).set_index("system")
    # The CLI's columns are the tasks themselves.
    assert table.loc["base", "gs_code"] == "" and table.loc["base", "not_run"] == "gs_code"
    assert float(table.loc["base", "average"]) == pytest.approx((0.25 + 0.0 + 0.75) / 3)
    md = (tables / "main.md").read_text()
    assert md.count("| not run ") == 2
    assert md.count(NOT_RUN) == 1  # the reason once, under the table
    assert "Not run: gs_code (pass@1) for base, gradientspace-single: " in md


def test_comparisons_are_the_papers_among_the_systems_present():
    systems = ["base", "multitask", "gradientspace-single", "gradientspace-elrea", "gradientspace-oracle"]
    systems += ["elrea-single", "elrea-elrea", "semantic-elrea", "random-single", "select-math-full"]
    assert comparisons(systems) == [
        ("elrea vs. single routing (gradientspace clusters)", "gradientspace-elrea", "gradientspace-single"),
        ("oracle vs. single routing (gradientspace clusters)", "gradientspace-oracle", "gradientspace-single"),
        ("elrea vs. single routing (elrea clusters)", "elrea-elrea", "elrea-single"),
        # semantic-elrea has no semantic-single to compare with: left out.
        ("GradientSpace vs. elrea clustering (single expert)", "gradientspace-single", "elrea-single"),
        ("GradientSpace vs. random clustering (single expert)", "gradientspace-single", "random-single"),
        ("GradientSpace experts vs. multitask", "gradientspace-single", "multitask"),
        ("GradientSpace experts vs. base", "gradientspace-single", "base"),
    ]
    assert comparisons(["base", "elrea-single", "elrea-uniform"]) == [
        ("uniform vs. single routing (elrea clusters)", "elrea-uniform", "elrea-single")
    ]


def test_paired_table_pairs_by_example_id(tmp_path, eval_files):
    # The reference's samples stored in reverse order: pairing by position would mismatch every example.
    write_json(eval_files["base"], _eval_report(SCORES["base"], reverse=True))
    pairs = [("GradientSpace experts vs. base", "gradientspace-single", "base")]
    df = paired_table(
        load_reports(eval_files),
        {"accuracy": {d: ACC[d] for d in DOMAINS[:3]}, "bits_per_byte": {d: LIKELIHOOD_TASKS[d] for d in DOMAINS[:3]}},
        pairs,
        seed=1,
    )
    assert df.columns.tolist() == [
        "measure", "comparison", "system", "reference", "domain", "metric", "difference", "ci_low", "ci_high", "n",
        "reading",
    ]  # fmt: skip
    assert df["domain"].tolist() == ["math", "code", "finance", "average"] * 2
    acc = df[df["measure"] == "accuracy"].set_index("domain")
    # math: gs right on all 4, base on 1 -> +0.75, and gs is never worse on an example: the interval excludes 0,
    # but on 4 examples that names no winner.
    assert acc.loc["math", "difference"] == pytest.approx(0.75)
    assert acc.loc["math", "reading"] == TOO_FEW and acc.loc["math", "ci_low"] > 0
    # code: gs right on 1 (example 0), base on 0 and 2: -0.25 with disagreement both ways.
    a, b = _acc("gradientspace-single", "code"), _acc("base", "code")
    diff = a[0] - b[0]
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 4, (2000, 4))
    expected = tuple(np.percentile(diff[idx].mean(axis=1), [2.5, 97.5]))
    assert acc.loc["code", "difference"] == pytest.approx(-0.25)
    assert (acc.loc["code", "ci_low"], acc.loc["code", "ci_high"]) == pytest.approx(expected, abs=1e-12)
    assert acc.loc["code", "reading"] == NO_DIFFERENCE
    assert acc.loc["average", "difference"] == pytest.approx((0.75 - 0.25 + 1.0) / 3)
    assert acc.loc["average", "n"] == 12 and acc.loc["math", "metric"] == "exact_match"
    bits = df[df["measure"] == "bits_per_byte"].set_index("domain")
    # finance bits per byte: gs's corpus value minus base's, on the same four answers (lower is better).
    gs_fin, base_fin = 285 / (LN2 * 190), 320 / (LN2 * 190)
    assert bits.loc["finance", "difference"] == pytest.approx(gs_fin - base_fin)
    assert bits.loc["finance", "ci_high"] < 0 and bits.loc["finance", "reading"] == TOO_FEW
    # The stratified paired average, drawn domain by domain with the same indices for both systems.
    rng, reps = np.random.default_rng(1), np.zeros(2000)
    for d in DOMAINS[:3]:
        (na, da), (nb, db) = _bits("gradientspace-single", d), _bits("base", d)
        idx = rng.integers(0, 4, (2000, 4))
        reps += (na[idx].sum(1) / da[idx].sum(1) - nb[idx].sum(1) / db[idx].sum(1)) / 3
    assert (bits.loc["average", "ci_low"], bits.loc["average", "ci_high"]) == pytest.approx(
        tuple(np.percentile(reps, [2.5, 97.5])), abs=1e-12
    )


def test_paired_table_on_disjoint_examples_is_undefined(tmp_path, eval_files):
    other = _eval_report(SCORES["base"])
    for task in other["tasks"].values():
        for s in task["samples"]:
            s["id"] = "other-" + s["id"]
    write_json(tmp_path / "other.json", other)
    reports = load_reports({**eval_files, "other": tmp_path / "other.json"})
    df = paired_table(reports, {"accuracy": {"math": "gs_math"}}, [("x", "gradientspace-single", "other")])
    assert df["n"].tolist() == [0, 0] and df["difference"].isna().all()
    assert df["reading"].tolist() == ["undefined (no examples scored by both)"] * 2


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
        acc = [1] * i + [0] * (4 - i)
        ll = [(-(0.6 + 0.01 * i) * LN2 * b, b) for b in (100, 50, 80, 20)]
        write_json(evals[f"select-math-{method}"], _eval_report({"math": (acc, ll)}))
    df = clusterucb_table(tmp_path / "selection", ["math", "code"], load_reports(evals))
    # One row per target, method and the target's task (code was not fine-tuned: one row, no task).
    assert df[["target", "method", "task"]].fillna("-").values.tolist() == [
        ["math", "clusterucb", "gs_math"],
        ["math", "clusterucb", "gs_math_likelihood"],
        ["math", "full", "gs_math"],
        ["math", "full", "gs_math_likelihood"],
        ["math", "random", "gs_math"],
        ["math", "random", "gs_math_likelihood"],
        ["code", "clusterucb", "-"],
        ["code", "full", "-"],
        ["code", "random", "-"],
    ]
    math_rows = df[df["target"] == "math"]
    accuracy, bits = math_rows[math_rows["task"] == "gs_math"], math_rows[math_rows["task"] == "gs_math_likelihood"]
    assert accuracy["value"].tolist() == [0.0, 0.25, 0.5]
    assert accuracy["metric"].tolist() == ["exact_match"] * 3
    assert bits["value"].tolist() == pytest.approx([0.6, 0.61, 0.62])
    assert bits["metric"].tolist() == ["bits_per_byte"] * 3
    # Intervals over the target's four examples: a bootstrap of [1, 0, 0, 0] for full; every answer of
    # every example at 0.61 bits per byte: a zero-width interval.
    full = accuracy.iloc[1]
    assert (full["ci_low"], full["ci_high"]) == pytest.approx(_boot([_ones([1, 0, 0, 0])]))
    assert (bits.iloc[1]["ci_low"], bits.iloc[1]["ci_high"]) == pytest.approx((0.61, 0.61))
    assert df["influence_computations"].tolist() == [6, 6, 8, 8, 0, 0, 6, 8, 0]
    assert df["computations_vs_full"].tolist() == [0.75, 0.75, 1.0, 1.0, 0.0, 0.0, 0.75, 1.0, 0.0]
    assert df["selected"].tolist() == [2] * 9
    assert df["overlap_with_full_top"].tolist() == [0.5, 0.5, 1.0, 1.0, 0.0, 0.0, 0.5, 1.0, 0.0]
    # Code was not fine-tuned: no value, rather than another target's.
    assert df[df["target"] == "code"]["value"].isna().all()
    # A fine-tuned system whose evaluation lacks its target's task is an error, not an empty cell.
    report = _eval_report({"code": ([1, 0], [(-5.0, 10), (-5.0, 10)])})
    write_json(evals["select-math-full"], {**report, "targets": [{"target": "math", "tasks": ["gs_math"]}]})
    with pytest.raises(InputError, match=r"select-math-full\.json: no result for gs_math"):
        clusterucb_table(tmp_path / "selection", ["math"], load_reports(evals))


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


def test_clusterucb_paired_table(tmp_path):
    evals = {}
    # 12 examples: over gs.report.tables.SMALL_SAMPLE, so an interval that excludes 0 names the better system.
    accs = {"clusterucb": [1] * 10 + [1, 0], "full": [1] * 10 + [0, 1], "random": [0] * 12}
    for method, acc in accs.items():
        ll = [(-50.0 - i - (10.0 if method == "random" else 0.0), 40) for i in range(12)]
        evals[f"select-math-{method}"] = tmp_path / f"select-math-{method}.json"
        write_json(evals[f"select-math-{method}"], _eval_report({"math": (acc, ll)}))
    reports = load_reports(evals)
    measures = {"accuracy": {"gs_math": "gs_math"}, "bits_per_byte": {"gs_math_likelihood": "gs_math_likelihood"}}
    df = clusterucb_paired_table(reports, ["math", "code"], measures)
    # Code was not fine-tuned: no rows for it.
    assert df[["target", "measure", "reference"]].values.tolist() == [
        ["math", "accuracy", "select-math-full"],
        ["math", "bits_per_byte", "select-math-full"],
        ["math", "accuracy", "select-math-random"],
        ["math", "bits_per_byte", "select-math-random"],
    ]
    assert df["difference"].tolist() == pytest.approx([0.0, 0.0, 11 / 12, -120 / (LN2 * 480)])
    assert df["reading"].tolist() == [NO_DIFFERENCE, NO_DIFFERENCE] + ["select-math-clusterucb better"] * 2
    assert df["n"].tolist() == [12] * 4
    # The same comparison on the first 6 examples only: the interval still excludes 0, the reading names no winner.
    for method, acc in accs.items():
        ll = [(-50.0 - i - (10.0 if method == "random" else 0.0), 40) for i in range(6)]
        write_json(evals[f"select-math-{method}"], _eval_report({"math": (acc[:6], ll)}))
    small = clusterucb_paired_table(load_reports(evals), ["math"], measures)
    assert (small["ci_high"].iloc[2:] < 0).tolist() == [False, True] and (small["ci_low"].iloc[2] > 0)
    assert small["reading"].tolist()[2:] == [TOO_FEW, TOO_FEW]


def test_cli_tables_match_the_inputs(tmp_path, eval_files):
    res = tmp_path / "results"
    (res / "latency").mkdir(parents=True)
    pd.DataFrame({"mode": ["single"], "ttft_s": [0.1]}).to_csv(res / "latency" / "latency.csv", index=False)
    (tmp_path / "benchmarks").mkdir()
    tables, figures = tmp_path / "tables", tmp_path / "figures"
    evals = [f"{s}={p}" for s, p in eval_files.items()]
    main(
        ["--results", str(res), "--eval", *evals, "--seed", "5"]
        + ["--benchmarks", str(tmp_path / "benchmarks"), "--tables", str(tables), "--figures", str(figures)]
    )
    table = pd.read_csv(tables / "main.csv")
    for _, row in table.iterrows():
        scores = SCORES[row["system"]]
        # The CLI's columns are the tasks, in the reports' target order.
        assert [row[ACC[d]] for d in DOMAINS] == [np.mean(scores[d][0]) for d in DOMAINS]
        assert row["average"] == pytest.approx(np.mean([np.mean(scores[d][0]) for d in DOMAINS]))
        expected = _boot([_acc(row["system"], "math")], 5)
        assert (row["gs_math_ci_low"], row["gs_math_ci_high"]) == pytest.approx(expected)
    likelihood = pd.read_csv(tables / "likelihood.csv")
    assert likelihood.set_index("system")["average"].to_dict() == pytest.approx(
        {s: np.mean([_value(*v[d])[1] for d in DOMAINS]) for s, v in SCORES.items()}
    )
    md = (tables / "main.md").read_text()
    assert md.startswith("# Accuracy per system and task\n")
    # base, code: 0.5 ± lm-eval's stderr (std [1, 0, 1, 0] / 2 = 0.289) [the bootstrap interval].
    lo, hi = _boot([_acc("base", "code")], 5)
    assert f"| 0.500 ± 0.289 [{lo:.3f}, {hi:.3f}] |" in md
    paired = pd.read_csv(tables / "paired.csv")
    assert set(paired["comparison"]) == {"GradientSpace experts vs. base"}
    assert len(paired) == 2 * 5 and "no difference detected at this scale" in (tables / "paired.md").read_text()
    figure_data = pd.read_csv(tables / "likelihood_paired.csv")
    assert figure_data["reference"].unique().tolist() == ["base"]
    assert figure_data["measure"].unique().tolist() == ["bits_per_byte"]
    assert (figures / "likelihood.png").stat().st_size > 5000
    # no --targets: the selection tables (outputs of the report rule) say they were not run
    assert "Not run: no selection targets." in (tables / "clusterucb.md").read_text()
    assert not list(tables.glob(".*"))  # no temporaries left
