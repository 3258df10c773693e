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


def test_a_logged_kernel_peak_above_the_sampled_max_rss_is_the_measurement(tmp_path):
    """A job whose log ends with its VmHWM line (gs.io.run_cli) is compared against the larger of that
    and the benchmark's sampled max_rss; a job without the line against max_rss alone."""
    plan = pd.DataFrame(
        [
            {
                "stage": "prepare model",
                "rule": "prepare_model",
                "jobs": "prepare_model a",
                "host_peak_mib": 1400,
                "cpu_time_h": 0,
            }
        ]
    )
    bench, logs = tmp_path / "benchmarks", tmp_path / "logs"
    _bench(bench / "prepare_model" / "prepare_model.tsv", 40.0, 470.0)  # the peak fell between samples
    _bench(bench / "prepare_model" / "a.tsv", 40.0, 1000.0)
    (logs / "prepare_model").mkdir(parents=True)
    (logs / "prepare_model" / "prepare_model.log").write_text("wrote x\npeak resident memory: 1600 MiB (VmHWM)\n")
    (logs / "prepare_model" / "a.log").write_text("peak resident memory: 900 MiB (VmHWM)\n")  # below the sample
    peaks = compare.read_log_peaks(logs)
    assert peaks == {("prepare_model", "prepare_model"): 1600.0, ("prepare_model", "a"): 900.0}
    table = compare.compare(plan, compare.read_benchmarks(bench), log_peaks=peaks).set_index("job")
    assert table.loc["prepare_model", "measured_mib"] == 1600.0
    assert table.loc["prepare_model", "error_pct"] == -12  # (1400 - 1600) / 1600 = -12.5 -> round half even
    assert table.loc["a", "measured_mib"] == 1000.0 and table.loc["a", "error_pct"] == 40


def test_run_cli_ends_a_successful_run_with_the_peak_line(capsys):
    from gs.io import run_cli

    run_cli(lambda argv: print("done"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("peak resident memory: ") and err[0].endswith(" MiB (VmHWM)")
    mib = int(err[0].split()[3])
    import resource

    assert abs(mib - resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024) <= 2  # the kernel's own count
