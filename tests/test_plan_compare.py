"""gs.plan.compare: each benchmark's max_rss beside its plan row, error by hand."""

from __future__ import annotations

import pandas as pd
import pytest

from gs.io import InputError
from gs.plan import compare

BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _bench(path, seconds: float, rss: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(BENCH_HEADER + f"{seconds}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t50\t{seconds / 2}\n")


def test_compare_matches_jobs_and_computes_error(tmp_path):
    plan = pd.DataFrame(
        [
            {
                "stage": "evaluation (single)",
                "rule": "evaluate_system",
                "jobs": "gs-single rp-single",
                "host_peak_mib": 1200,
                "cpu_time_h": 0.01,
            },
            {"stage": "data", "rule": "prepare_domain", "jobs": "math code", "host_peak_mib": 100, "cpu_time_h": 0.0},
        ]
    )
    _bench(tmp_path / "evaluate_system" / "gs-single.tsv", 90.0, 1000.0)
    _bench(tmp_path / "evaluate_system" / "rp-single.tsv", 80.0, 1600.0)
    _bench(tmp_path / "prepare_domain" / "math.tsv", 0.5, 50.0)  # under 2 s: listed, not counted
    _bench(tmp_path / "latency" / "latency.tsv", 30.0, 700.0)  # no plan row
    table = compare.compare(plan, compare.read_benchmarks(tmp_path)).set_index("job")
    assert table.loc["gs-single", "error_pct"] == 20  # (1200 - 1000) / 1000
    assert table.loc["rp-single", "error_pct"] == -25  # (1200 - 1600) / 1600
    assert table.loc["math", "error_pct"] == 100 and not table.loc["math", "counted"]
    assert pd.isna(table.loc["latency", "stage"]) and not table.loc["latency", "counted"]
    assert table.loc["gs-single", "planned_cpu_s"] == 36.0
    line = compare.summary(table.reset_index())
    assert "2 of 2 jobs" in line and "2 jobs under 2 s" in line


def test_missing_inputs_fail_with_one_line(tmp_path):
    with pytest.raises(InputError, match="plan not found"):
        compare.main(["--plan", str(tmp_path / "none.csv"), "--benchmarks", str(tmp_path)])
    (tmp_path / "plan.csv").write_text("stage,rule,jobs,host_peak_mib,cpu_time_h\n")
    with pytest.raises(InputError, match="no benchmarks"):
        compare.main(["--plan", str(tmp_path / "plan.csv"), "--benchmarks", str(tmp_path / "b")])
