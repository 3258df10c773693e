"""The Snakemake workflow: lint, dry runs of every config, env files, and one end-to-end run."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from workflow_tools import ROOT, fresh_copy, run_snakemake


def _snakemake(*args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_snakemake(*args, cwd=cwd, timeout=timeout)


def test_lint_is_clean():
    result = _snakemake("--lint", "--nolock")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/test.yaml", "config/paper.yaml"])
def test_dry_run_lists_the_whole_dag(configfile):
    result = _snakemake("-n", "--forceall", "--nolock", "--cores", "2", "--configfile", configfile)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    defined = re.findall(r"^rule (\w+):", "".join(p.read_text() for p in (ROOT / "rules").glob("*.smk")), re.M)
    assert len(defined) >= 15
    gradients = yaml.safe_load((ROOT / configfile).read_text())["gradients"]
    # gradients.shards picks one job per gradient pass (S = 1) or S shard jobs and a merge (gs.gradients.shards);
    # Frequent Directions' shards add a merged basis and a second pass over each slice.
    single = {"extract_gradient_features", "gradient_coherence", "less_influence"}
    sharded = {r for r in defined if "shard" in r or r == "merge_gradient_basis"}
    fd_only = {"merge_gradient_basis", "gradient_shard_coordinates"}
    if gradients.get("shards", 1) > 1:
        absent = single | (set() if gradients["svd"]["method"] == "frequent_directions" else fd_only)
    else:
        absent = sharded
    # A target's own validation data (prepare_target) only where a target names a source, as ClusterUCB's do.
    own = yaml.safe_load((ROOT / configfile).read_text()).get("targets") or {}
    if not any("source" in (t.get("validation") or {}) for t in own.values()):
        absent = absent | {"prepare_target"}
    for rule in sorted(set(defined) - absent):
        assert re.search(rf"^{rule}\s+\d+$", out, re.M), f"rule {rule} missing from the DAG of {configfile}"
    # Every method gets a router (the router table); experts only where some system evaluates them.
    from gs.plan.cli import load_config

    config = load_config(ROOT / configfile, ROOT / "config" / "config.yaml")
    methods, modes = config["cluster"]["methods"], config["evaluation"]["modes"]
    counts = {rule: int(n) for rule, n in re.findall(r"^(train_router|train_experts)\s+(\d+)$", out, re.M)}
    assert counts["train_router"] == len(methods)
    assert counts["train_experts"] == sum(1 for m in methods if modes.get(m, ["single"]))


def test_the_longest_path_is_scheduled_first():
    """Snakemake's ILP picks ready jobs by priority: the chain warm-up -> gradients -> clusters -> experts
    -> routed evaluations outranks the jobs ready as early beside it (base and multitask evaluations,
    latency, LESS), and the ensemble's evaluation, the longest job, outranks the single-expert ones."""
    result = _snakemake("-n", "--forceall", "--nolock", "--cores", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    priority = {}
    for block in re.split(r"^(?:local)?rule ", result.stdout + result.stderr, flags=re.M)[1:]:
        name = block.split(":", 1)[0]
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        level = re.search(r"^\s+priority: (\d+)$", block, re.M)
        priority[(name, wildcards.group(1) if wildcards else "")] = int(level.group(1)) if level else 0
    chain = [
        ("warmup_lora", ""),
        ("extract_gradient_features", ""),
        ("cluster_samples", "method=gradientspace"),
        ("train_experts", "method=gradientspace"),
        ("train_router", "method=gradientspace"),
        ("evaluate_system", "system=gradientspace-single"),
    ]
    beside = [
        ("evaluate_system", "system=base"),
        ("evaluate_system", "system=multitask"),
        ("latency", ""),
        ("less_influence", ""),
        ("train_multitask", ""),
    ]
    assert min(priority[j] for j in chain) > max(priority[j] for j in beside)
    ensemble = priority[("evaluate_system", "system=gradientspace-elrea")]
    assert ensemble > priority[("evaluate_system", "system=gradientspace-single")]
    assert ensemble > priority[("evaluate_system", "system=semantic-single")]


def test_every_rule_has_log_benchmark_and_conda_env():
    rules_dir = ROOT / "rules"
    for smk in sorted(rules_dir.glob("*.smk")):
        text = smk.read_text()
        blocks = [b for b in text.split("\nrule ")[0:] if "shell:" in b or "script:" in b or "run:" in b]
        for block in blocks:
            name = block.strip().split(":")[0].removeprefix("rule ").strip()
            for directive in ("log:", "benchmark:", "conda:"):
                assert directive in block, f"rule {name} in {smk.name} has no {directive}"
    # Each rule's conda env exists and holds what its module imports: tests/workflow/test_profiles.py.


def test_env_files_parse_and_pin_every_package():
    for env in sorted((ROOT / "envs").glob("*.yaml")):
        spec = yaml.safe_load(env.read_text())
        deps = spec["dependencies"]
        pip = next(d["pip"] for d in deps if isinstance(d, dict))
        conda = [d for d in deps if isinstance(d, str)]
        for pkg in conda:
            assert "=" in pkg, f"{env.name}: conda package {pkg} is not pinned"
        for pkg in pip:
            assert "==" in pkg, f"{env.name}: pip package {pkg} is not pinned"


def _jsonl_ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]


def _config_tasks(config: dict) -> list[str]:
    """Every task of every target, in the config's order (the tables' column order)."""
    return [t["task"] if isinstance(t, dict) else t for spec in config["targets"].values() for t in spec["tasks"]]


def _check_evaluations(res: Path, config: dict) -> None:
    """Each evaluation JSON against its own per-sample results, and main.csv / likelihood.csv against
    the JSONs (values, row means, example counts). A task is a likelihood column when its primary
    metric is bits per byte, else an accuracy column."""
    limit = config["evaluation"]["limit"]
    main = pd.read_csv(res / "tables" / "main.csv").set_index("system")
    likelihood = pd.read_csv(res / "tables" / "likelihood.csv").set_index("system")
    tasks = _config_tasks(config)
    first = json.loads((res / "eval" / f"{main.index[0]}.json").read_text())
    assert first["targets"] == [
        {"target": t, "tasks": [x["task"] for x in c["tasks"]]} for t, c in config["targets"].items()
    ]
    bpb_tasks = [t for t in tasks if first["primary"][t]["metric"] == "bits_per_byte"]
    acc_tasks = [t for t in tasks if t not in bpb_tasks]
    intervals = ("_stderr", "_ci_low", "_ci_high")
    assert [c for c in main.columns if not c.endswith(intervals)] == [*acc_tasks, "average", "n_examples"]
    assert {f"{d}{x}" for d in [*acc_tasks, "average"] for x in intervals} <= set(main.columns)
    assert [c for c in likelihood.columns if not c.endswith(intervals)] == [*bpb_tasks, "average", "n_examples"]
    assert set(likelihood.index) == set(main.index)
    for system in main.index:
        report = json.loads((res / "eval" / f"{system}.json").read_text())
        for task in acc_tasks:
            entry, primary = report["tasks"][task], report["primary"][task]
            samples = entry["samples"]
            assert entry["n_examples"] == len(samples) == limit, (system, task)
            # The task's metric is the mean of the per-sample scores; the table shows that number.
            per_sample = [s["scores"][primary["metric"]] for s in samples]
            assert primary["value"] == pytest.approx(float(np.mean(per_sample)), abs=1e-12), (system, task)
            assert main.loc[system, task] == pytest.approx(primary["value"], abs=1e-12), (system, task)
        for task in bpb_tasks:
            # Bits per byte: -sum log p(answer) / (sum of the answers' UTF-8 bytes * ln 2), from the samples.
            lik = report["tasks"][task]["samples"]
            n_bytes = sum(len(s["target"].encode("utf-8")) for s in lik)
            bpb = -sum(s["loglikelihood"] for s in lik) / (n_bytes * math.log(2))
            assert report["primary"][task]["value"] == pytest.approx(bpb, rel=1e-9), (system, task)
            assert likelihood.loc[system, task] == pytest.approx(bpb, rel=1e-9), (system, task)
        assert main.loc[system, "average"] == pytest.approx(float(np.mean([main.loc[system, d] for d in acc_tasks])))
        assert likelihood.loc[system, "average"] == pytest.approx(
            float(np.mean([likelihood.loc[system, d] for d in bpb_tasks]))
        )
        assert main.loc[system, "n_examples"] == "/".join([str(limit)] * len(acc_tasks))
        for spec in config["targets"].values():
            for task in spec["tasks"]:
                if not task.get("fluency"):
                    continue
                entry = report["tasks"][task["task"]]
                ppl = [s["scores"]["perplexity"] for s in entry["samples"] if s["scores"]["perplexity"] is not None]
                if ppl:  # exp(total NLL / total tokens) over one passage is that passage's perplexity
                    assert len(ppl) == 1 and entry["metrics"]["fluency_perplexity"] == pytest.approx(ppl[0])


def _check_clustering_and_routers(res: Path, config: dict) -> None:
    """Cluster sizes against the assignments, the router table against router.json, the ablation
    table against its per-seed rows, the quality table's seed count."""
    pool = _jsonl_ids(res / "data" / "pool" / "train.jsonl")
    quality = pd.read_csv(res / "clusters" / "quality.csv").set_index("method")
    for method in config["cluster"]["methods"]:
        assignments = pd.read_csv(res / "clusters" / method / "assignments.csv", dtype={"id": str})
        assert sorted(assignments["id"]) == sorted(pool), method
        sizes = assignments["cluster"].value_counts().sort_index().tolist()
        assert quality.loc[method, "sizes"] == "/".join(map(str, sizes)), method
        assert quality.loc[method, "k"] == len(sizes) <= config["cluster"]["k"], method
        info = json.loads((res / "router" / method / "router.json").read_text())
        row = pd.read_csv(res / "tables" / "router.csv").set_index("method").loc[method]
        assert row["experts"] == len(info["expert_ids"])
        held_out = info["heldout_accuracy"]
        assert math.isnan(row["heldout_accuracy"]) if held_out is None else row["heldout_accuracy"] == held_out
        assert row["n_heldout"] == info["n_heldout"]
    ablation = pd.read_csv(res / "tables" / "ablation.csv")
    abl = config["cluster"]["ablation"]
    proj = ablation[ablation["space"] == "random projection"]
    assert sorted(proj["dimension"].unique()) == sorted(abl["dims"])
    assert set(ablation["features"]) == {"raw", "svd"} and (ablation["seeds"] == abl["seeds"]).all()
    per_seed = pd.read_csv(res / "ablation" / "per_seed.csv")
    row = ablation[(ablation["dimension"] == max(abl["dims"])) & (ablation["features"] == "raw")].iloc[0]
    sub = per_seed[(per_seed["dimension"] == max(abl["dims"])) & (per_seed["features"] == "raw")]
    assert len(sub) == abl["seeds"] and row["nmi_mean"] == pytest.approx(sub["nmi"].mean())
    seeds = pd.read_csv(res / "tables" / "cluster_quality.csv").set_index("method")
    assert (seeds["seeds"] == config["cluster"]["quality_seeds"]).all()


def _check_selection(res: Path, config: dict) -> None:
    """Selection against the configured sizes and the compute accounting (:mod:`gs.selection.accounting`), full
    LESS against the influence scores, the subsets against the ids, and clusterucb.csv against
    selection.json and the fine-tuned systems' evaluations."""
    cfg = config["selection"]
    pool = _jsonl_ids(res / "data" / "pool" / "train.jsonl")
    n = len(pool)
    with np.load(res / "selection" / "influence.npz") as f:
        ids, targets = f["ids"].astype(str).tolist(), f["targets"].tolist()
        per_checkpoint, weights = f["per_checkpoint"], f["weights"]
    assert ids == pool
    n_ckpt = per_checkpoint.shape[0]
    table = pd.read_csv(res / "tables" / "clusterucb.csv")
    for target in cfg["targets"]:
        sel = json.loads((res / "selection" / target / "selection.json").read_text())
        keep, draws = math.floor(cfg["keep_fraction"] * n + 1e-9), math.floor(cfg["budget_fraction"] * n + 1e-9)
        assert (sel["n"], sel["keep"], sel["draws"], sel["checkpoints"]) == (n, keep, draws, n_ckpt)
        methods = sel["methods"]
        assert {"full", "clusterucb", "random"} <= set(methods)
        assert {f"clusterucb_{m}" for m in cfg.get("compare_clusters", [])} <= set(methods)
        # Full LESS is the top-keep of the checkpoint-weighted influences, computed at every checkpoint.
        s = weights @ per_checkpoint[:, targets.index(target), :]
        order = np.argsort(-s, kind="stable")
        top = {ids[i] for i in order[:keep]}
        assert set(methods["full"]["selected_ids"]) == top
        assert s[order[keep - 1]] >= s[order[keep]]
        full_total = n * n_ckpt
        assert methods["full"]["computations"] == full_total
        assert methods["random"]["computations"] == 0
        ucb = methods["clusterucb"]
        # The bandit draws until its budget of floor(budget_fraction * n) samples is spent (a hard cap);
        # each draw costs one gradient per influence checkpoint the clustering pass did not cover.
        drawn = sum(ucb["pulls_per_cluster"])
        assert drawn == min(draws, n)
        per_draw = n_ckpt - (sel["clustering_covers_checkpoint"] is not None)
        assert ucb["charge"]["clustering"] == n
        assert ucb["charge"]["cold_start"] + ucb["charge"]["draws"] == drawn * per_draw
        assert ucb["computations"] == n + drawn * per_draw == ucb["measured_gradient_computations"]
        for name, m in methods.items():
            assert len(m["selected_ids"]) == len(set(m["selected_ids"])) == keep, name
            assert set(m["selected_ids"]) <= set(ids), name
            assert m["computation_ratio_vs_full"] == pytest.approx(m["computations"] / full_total), name
            overlap = len(set(m["selected_ids"]) & top) / keep
            assert m["overlap_with_full"] == pytest.approx(overlap), name
            mean = float(np.mean([s[ids.index(i)] for i in m["selected_ids"]]))
            assert m["mean_influence_ratio"] == pytest.approx(mean / float(np.mean([s[ids.index(i)] for i in top])))
            row = table[(table["target"] == target) & (table["method"] == name)].iloc[0]
            assert row["selected"] == keep and row["total_computations"] == m["computations"], name
            assert row["overlap_with_full_top"] == pytest.approx(overlap), name
        for name in ("clusterucb", "full", "random"):
            assert _jsonl_ids(res / "selection" / target / f"{name}.jsonl") == methods[name]["selected_ids"], name
            if target in cfg.get("finetune_targets", cfg["targets"]):
                report = json.loads((res / "eval" / f"select-{target}-{name}.json").read_text())
                own = [t["task"] for t in config["targets"][target]["tasks"]]
                assert report["targets"] == [{"target": target, "tasks": own}]  # its own target's tasks only
                rows = table[(table["target"] == target) & (table["method"] == name)].set_index("task")
                assert rows.index.tolist() == own
                for task in own:
                    assert rows.loc[task, "value"] == pytest.approx(report["primary"][task]["value"]), task


def check_run(work: Path, config: dict) -> None:
    """The numbers of a finished run, cross-checked between stages (no stage's own arithmetic reused)."""
    res = work / "results"
    _check_evaluations(res, config)
    _check_clustering_and_routers(res, config)
    _check_selection(res, config)
    compute = pd.read_csv(res / "tables" / "compute.csv")
    bench = pd.read_csv(work / "benchmarks" / "cluster_quality" / "quality.tsv", sep="\t")
    row = compute[(compute["rule"] == "cluster_quality") & (compute["job"] == "quality")].iloc[0]
    assert row["wall_s"] == pytest.approx(float(bench["s"].mean()))


@pytest.mark.slow
def test_end_to_end_on_the_tiny_config(tmp_path):
    """The whole DAG on a handful of samples with the real embedded model: every stage must run, the
    tables and figures must come out with numbers that agree between stages (:func:`check_run`), and
    rerunning the gradient stages must reproduce the clusters."""
    work = fresh_copy(tmp_path / "wf")
    result = _snakemake("--cores", "2", "--configfile", "config/test.yaml", cwd=work, timeout=3000)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    res = work / "results"
    summary = pd.read_csv(res / "data" / "summary.csv")
    assert set(summary["domain"]) == {"math", "code", "finance", "writing"}
    main = pd.read_csv(res / "tables" / "main.csv")
    assert {
        "base",
        "multitask",
        "gradientspace-single",
        "gradientspace-elrea",
        "gradientspace-uniform",
        "gradientspace-oracle",
        "semantic-single",
    } == set(main["system"])
    accuracy = ["gs_math", "gs_math_choice", "gs_code", "gs_finance", "gs_writing"]
    assert [*accuracy, "average"] == [c for c in main.columns if c in [*accuracy, "average"]]
    assert main[accuracy].apply(lambda c: c.between(0, 1)).all().all()
    assert "reference" in set(summary["split"])
    likelihood = pd.read_csv(res / "tables" / "likelihood.csv")
    assert set(likelihood["system"]) == set(main["system"])
    bpb = likelihood[[f"gs_{d}_likelihood" for d in ("math", "code", "finance", "writing")]].to_numpy(dtype=float)
    assert np.isfinite(bpb).all() and (bpb > 0).all()
    # Each system scores the answers under its own weights and routing: they do not all agree.
    assert likelihood["average"].nunique() > 1
    quality = pd.read_csv(res / "clusters" / "quality.csv")
    assert {"gradientspace", "semantic", "rp16"} <= set(quality["method"])
    for name in ("latency.png", "clusters.png", "ablation.png", "clusterucb_budget.png", "likelihood.png"):
        assert (res / "figures" / name).stat().st_size > 5000, name
    for name in (
        "main.md",
        "likelihood.md",
        "router.md",
        "cluster_quality.md",
        "ablation.md",
        "latency.md",
        "clusterucb.md",
        "paired.md",
    ):
        assert (res / "tables" / name).read_text().startswith("# "), name
    # Every compared value carries its interval where one is defined (2+ examples a domain); the paired
    # table reads each difference by its interval.
    for table in (main, likelihood):
        lo, hi, avg = table["average_ci_low"], table["average_ci_high"], table["average"]
        assert ((lo <= avg) & (avg <= hi))[lo.notna()].all()
    paired = pd.read_csv(res / "tables" / "paired.csv")
    assert len(paired) and paired["reading"].notna().all()
    includes_zero = (paired["ci_low"] <= 0) & (paired["ci_high"] >= 0)
    assert (paired.loc[includes_zero, "reading"] == "no difference detected at this scale").all()
    compute = pd.read_csv(res / "tables" / "compute.csv")
    assert "extract_gradient_features" in set(compute["rule"])
    # Every benchmarked job of a planned rule finds its plan row (gs.plan.compare pairs them by rule and job).
    from gs.plan.compare import compare, read_benchmarks

    plan = pd.read_csv(res / "plan" / "plan.csv")
    table = compare(plan, read_benchmarks(work / "benchmarks"))
    unpaired = table[table["rule"].isin(set(plan["rule"])) & table["stage"].isna()]
    assert unpaired.empty, unpaired[["rule", "job"]].to_dict("records")
    assert "clusterucb_clusters" in set(table["rule"])
    # dtype: auto was measured once by the plan, logged on one line, and is the dtype the evaluations ran in;
    # compute.md names the CPU and that choice.
    chosen = json.loads((res / "plan" / "cpu_dtype.json").read_text())
    lines = (work / "logs" / "plan" / "plan.log").read_text().splitlines()
    line = re.compile(r"cpu dtype: (float32|bfloat16) \(float32 [0-9.]+ s, bfloat16 [0-9.]+ s\)$")
    assert [x for x in lines if line.match(x)] == [chosen["line"]]
    for system in set(main["system"]):
        ran = json.loads((res / "eval" / f"{system}.json").read_text())["lm_eval"]["model_args"]["dtype"]
        assert ran == chosen["dtype"], system
    compute_md = (res / "tables" / "compute.md").read_text()
    assert chosen["line"] in compute_md and chosen["cpu"] in compute_md
    check_run(work, yaml.safe_load((work / "config" / "test.yaml").read_text()))
    # The README's report command on this finished run (tests/workflow/test_commands.py runs it as written on
    # stand-ins).
    report = _snakemake("--report", "results/report.html", "--configfile", "config/test.yaml", cwd=work)
    assert report.returncode == 0, (report.stdout + report.stderr)[-3000:]
    assert (res / "report.html").stat().st_size > 100_000
    (res / "report.html").unlink()
    # A killed job leaves no temporary output behind (gs.io.atomic_path), and a finished run none either.
    assert not [p for p in res.rglob(".*") if not p.name.startswith(".snakemake")]

    before = (res / "clusters" / "gradientspace" / "assignments.csv").read_text()
    with np.load(res / "gradients" / "features.npz") as f:
        coords = f["svd_coords"].copy()
    again = _snakemake(
        "--cores",
        "2",
        "--configfile",
        "config/test.yaml",
        "--forcerun",
        "warmup_lora",
        "--until",
        "cluster_samples",
        cwd=work,
        timeout=1500,
    )
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert (res / "clusters" / "gradientspace" / "assignments.csv").read_text() == before
    with np.load(res / "gradients" / "features.npz") as f:
        np.testing.assert_array_equal(f["svd_coords"], coords)
