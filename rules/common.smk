# Helpers shared by every stage file: config sections as shell-safe JSON, and paths.
import json
import shlex

from snakemake.exceptions import WorkflowError

from gs.data.prepare import check_name, part_files
from gs.evaluation.tasks import task_specs
from gs.io import InputError, studies


def checked(check, *args):
    """A gs check at DAG time: its one-line error as Snakemake's, before any job runs."""
    try:
        return check(*args)
    except InputError as err:
        raise WorkflowError(str(err)) from None


# The pool's parts (data.parts): each one's name is its hidden label and its folder results/data/<part>/.
PARTS = {checked(check_name, name): spec for name, spec in config["data"]["parts"].items()}
PART_FILES = {name: checked(part_files, spec) for name, spec in PARTS.items()}

# The targets (config `targets`): the lm-eval tasks the systems are scored on and, for selection, each
# one's validation examples: a part's split, or the target's own data (results/data/targets/<target>/).
TARGET_SPECS = config["targets"]
for _target in TARGET_SPECS:
    checked(check_name, _target, "target")
# Every target's tasks, parsed and checked once (gs.evaluation.tasks.TaskSpec).
TASKS = checked(task_specs, TARGET_SPECS)
for _spec in TASKS:
    if _spec.part is not None and (_spec.part not in PARTS or _spec.split not in PART_FILES[_spec.part]):
        raise WorkflowError(
            f"targets.{_spec.target}: task {_spec.task!r} reads split {_spec.split!r} of part "
            f"{_spec.part!r}, which data.parts does not make"
        )
    if _spec.task in PARTS:
        raise WorkflowError(
            f"part {_spec.task!r} has the name of a task of target {_spec.target!r}; rename the part"
        )


def target_validation(target):
    """The file of a target's validation examples (its influence on the pool is computed from them)."""
    spec = TARGET_SPECS[target].get("validation")
    if spec is None:
        raise WorkflowError(f"targets.{target}: no validation examples (selection.targets needs 'validation')")
    if "part" in spec:
        split = spec.get("split", "validation")
        if spec["part"] not in PARTS or split not in PART_FILES[spec["part"]]:
            raise WorkflowError(
                f"targets.{target}.validation: part {spec['part']!r} has no split {split!r} in data.parts"
            )
        return f"results/data/{spec['part']}/{split}.jsonl"
    return f"results/data/targets/{target}/validation.jsonl"


def part_outputs(part):
    return [f"results/data/{part}/{split}.jsonl" for split in PART_FILES[part]]


def quote_json(section, sort_keys=True):
    """A config section as one shell-quoted JSON argument (the gs CLIs take --params JSON); sort_keys=False
    where the order is data (the targets: the tables' column order)."""
    return shlex.quote(json.dumps(section, sort_keys=sort_keys))


def json_param(section):
    """``quote_json`` as a params function: Snakemake does not expand braces in a function's value
    (hub dataset templates such as ``{question}`` must reach the CLI as they are)."""
    quoted = quote_json(section)
    return lambda wildcards: quoted


# Threads of a training or gradient job: half the cores, so two such jobs (or one beside an evaluation)
# share the machine. A job that asked for every core would wait for both to be free while one-thread
# jobs kept taking the freed core; on 2 cores that idled a core for about 160 s of a default run.
# A cluster run sets no --cores (workflow.cores raises): there the profile's set-threads decides.
try:
    HEAVY_THREADS = max(1, (workflow.cores or 1) // 2)
except WorkflowError:
    HEAVY_THREADS = 1


# GPU requests. Each stage that runs the base model asks for GPU_REQUEST GPUs; 1 when the config
# pins the model on CUDA (model.device: cuda, the paper config), else 0. The workflow profile
# (profiles/default) caps `gpu` at 1, so on a GPU box the paper's GPU jobs run one at a time while the
# embedded default (model.device: auto) requests none and keeps its CPU jobs side by side. On SLURM
# the cap does not apply across jobs: `gpu` has a local scope (rules/models.smk).
GPU_REQUEST = 1 if config["model"].get("device", "auto") == "cuda" else 0


def grow(base):
    """A resource (MB, minutes) that grows with each retry: ``base`` times the attempt (1, 2, ...)."""
    return lambda wildcards, attempt: base * attempt


# Scheduling on a few cores: Snakemake's ILP picks among the ready jobs by priority, then by core
# load, and breaks ties as its solver likes. The longest path is warm-up -> gradients -> clusters ->
# experts -> the routed systems' evaluations (the ELREA-style ensemble's evaluation alone is a fifth of
# the default's job-seconds), so its jobs go first and the independent ones (base and multitask
# evaluations, latency, LESS, ClusterUCB) fill the other cores. Left to the tie-break, one fresh run of
# the default started the warm-up after both of those evaluations, 270 s late.
CHAIN_PRIORITY = 1


def evaluation_priority(wildcards):
    """An ensemble's evaluation (the longest job) first, then the other routed systems', then the rest."""
    mode = system_spec(wildcards.system)["mode"]
    if mode in ("base", "multitask"):
        return 0
    return CHAIN_PRIORITY + 1 if mode in ("elrea", "uniform") else CHAIN_PRIORITY


# The papers' studies this config runs (schema: studies): GradientSpace's clusters, experts and routed
# systems, and ClusterUCB's selections.
GRADIENTSPACE, CLUSTERUCB = studies(config)

# What rule all asks for besides the report's tables (rules/report.smk waits for these too).
OTHER_PRODUCTS = ["results/plan/plan.csv", "results/data/summary.csv"] + (
    [
        "results/clusters/quality.csv",
        "results/tables/cluster_quality.md",
        "results/figures/clusters.png",
        "results/tables/router.md",
        "results/tables/ablation.md",
        "results/figures/ablation.png",
        "results/figures/latency.png",
    ]
    if GRADIENTSPACE
    else []
)


# The resource plan (rules/plan.smk): every rule that runs the model directly, rather than through
# another rule's outputs, waits for it, so a stage that cannot fit stops the run before model work;
# the rest (data, prepare_model's download) runs beside it.
PLAN = "results/plan/plan.csv"


def model_dir():
    return f"resources/models/{config['model']['name']}"


# The clustering methods compared (wildcard {method}) and the projection-size ablation (rp<p>).
METHODS = list(config["cluster"]["methods"])
ABLATION_METHODS = [f"rp{p}" for p in config["cluster"].get("ablation_dims", [])]
QUALITY_METHODS = METHODS + ABLATION_METHODS

# ClusterUCB: the selection targets and the selection methods compared at the same selected size.
TARGETS = list(config["selection"]["targets"]) if CLUSTERUCB else []
for _target in TARGETS:
    if _target not in TARGET_SPECS:
        raise WorkflowError(f"selection.targets: {_target!r} is not a target; expected one of {', '.join(TARGET_SPECS)}")
TARGET_VALIDATION = {t: target_validation(t) for t in TARGETS}
# The targets every system is scored on (selection systems: their own target only).
EVAL_TARGETS = list(config["evaluation"].get("targets") or TARGET_SPECS)
for _target in EVAL_TARGETS:
    if _target not in TARGET_SPECS:
        raise WorkflowError(f"evaluation.targets: {_target!r} is not a target; expected one of {', '.join(TARGET_SPECS)}")
# Oracle routing sends a prompt to the expert of its part: every evaluated task must read a part's split.
_ORACLE = (
    [m for m, modes in config["evaluation"]["modes"].items() if "oracle" in (modes or [])]
    if GRADIENTSPACE
    else []
)
for _spec in TASKS if _ORACLE else []:
    if _spec.target in EVAL_TARGETS and _spec.part is None:
        raise WorkflowError(
            f"evaluation.modes: oracle routing ({', '.join(_ORACLE)}) needs each prompt's part, and task "
            f"{_spec.task!r} of target {_spec.target!r} reads no part's split; drop oracle from the modes"
        )
SELECTORS = ["clusterucb", "full", "random"]

# Systems scored by lm-eval (wildcard {system}): the base model, the multitask LoRA, every clustering
# method under every inference mode, and the LoRAs fine-tuned on each selected subset.
MODES = config["evaluation"]["modes"]
SYSTEMS = ["base"] + (
    ["multitask"] + [f"{m}-{mode}" for m in METHODS for mode in MODES.get(m, ["single"])]
    if GRADIENTSPACE
    else []
)
FINETUNE_TARGETS = (
    list(config["selection"].get("finetune_targets", TARGETS)) if CLUSTERUCB else []
)
SELECTION_SYSTEMS = [f"select-{t}-{s}" for t in FINETUNE_TARGETS for s in SELECTORS]
ELREA_DIM = config["gradients"]["projection"]["elrea_dim"]


def system_spec(name):
    """The evaluation system behind a name: its inference mode and the artefacts it loads."""
    spec = {"name": name, "model_dir": model_dir(), "mode": name}
    if name == "multitask":
        spec["experts_dir"] = "results/experts/multitask"
    elif name.startswith("select-"):
        target, selector = name.split("-", 1)[1].rsplit("-", 1)
        spec.update(
            mode="multitask", experts_dir=f"results/selection/{target}/{selector}_lora"
        )
    elif name != "base":
        method, mode = name.rsplit("-", 1)
        spec.update(
            mode=mode,
            experts_dir=f"results/experts/{method}",
            router_dir=f"results/router/{method}",
            warmup_dir="results/gradients/warmup",
            features_path="results/gradients/features.npz",
            projector_path=f"results/gradients/projector_{ELREA_DIM}.joblib",
            assignments_path=f"results/clusters/{method}/assignments.csv",
        )
    return spec


def system_inputs(wildcards):
    spec = system_spec(wildcards.system)
    keys = (
        "model_dir",
        "experts_dir",
        "router_dir",
        "warmup_dir",
        "features_path",
        "projector_path",
        "assignments_path",
    )
    return [spec[k] for k in keys if k in spec]


def system_targets(name):
    """The targets a system is scored on: a selection system's own target, else every evaluated target."""
    if name.startswith("select-"):
        return [name.split("-", 1)[1].rsplit("-", 1)[0]]
    return EVAL_TARGETS


def target_data(targets):
    """The prepared files the targets' suite tasks read."""
    return [f"results/data/{s.data}" for s in TASKS if s.target in targets and s.data is not None]


# Gradient passes (rules/gradients.smk, rules/cluster.smk, rules/selection.smk).
SHARDS = int(config["gradients"].get("shards", 1))
SHARD_IDS = list(range(SHARDS))
# The gradients section without `shards`: the number of jobs changes no job's result, so it stays out of
# their params (no rerun of the warm-up or a shard's fingerprint when S changes).
GRADIENT_PARAMS = {k: v for k, v in config["gradients"].items() if k != "shards"}
# Frequent Directions keeps no left factor: its shards take coordinates in a second pass over the merged basis.
SHARD_SECOND_PASS = config["gradients"]["svd"]["method"] == "frequent_directions"
PROJECTION_DIMS = sorted(
    set(config["gradients"]["projection"]["dims"])
    | {config["gradients"]["projection"]["elrea_dim"]}
)


def merge_shard_inputs(wildcards):
    """The shards' states, and for Frequent Directions the merged basis and the second-pass coordinates."""
    inputs = {
        "states": expand("results/gradients/shards/{shard}/shard.pt", shard=SHARD_IDS)
    }
    if SHARD_SECOND_PASS:
        inputs["basis"] = "results/gradients/shards/basis.pt"
        inputs["coords"] = expand(
            "results/gradients/shards/{shard}/coords.npy", shard=SHARD_IDS
        )
    return inputs


# Clustering (rules/cluster.smk).
def match_k_input(wildcards):
    """Random clusters with k: auto take the k that GradientSpace's silhouette chose (a baseline at equal k)."""
    if wildcards.method == "random" and config["cluster"].get("k") == "auto":
        return {"match_k": "results/clusters/gradientspace/cluster_info.json"}
    return {}


def match_k_arg(wildcards, input):
    return f"--match-k {input.match_k}" if "match_k" in input.keys() else ""
