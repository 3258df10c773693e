"""Every stage of the workflow as a plan: the step it repeats (traced), how often, and its host arrays.

A stage is one rule, or one kind of job of a rule where jobs differ in kind (an evaluation per
inference mode). Counts follow the code that runs the stage: ``gs.models.lora.train_lora``'s steps
(``ceil(n / batch) x epochs``), ``gs.gradients.extraction``' passes over the pool (two when ELREA's gradients take
another loss), ``gs.selection.influence``' pass per warm-up checkpoint over the pool and every target's
validation set, ``gs.evaluation.routed_model.RoutedLM``'s one forward per active expert per decoding step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gs.gradients.projection import projection_rows
from gs.io import studies
from gs.plan import devices, host
from gs.plan.lengths import (
    LengthFit,
    PoolLengths,
    fit_step,
    pool_lengths,
    shuffled_batches,
    spread,
    window_batches,
)
from gs.plan.lengths import part_sizes as _sizes
from gs.plan.projector import ProjectorCost, gpu_projector
from gs.plan.trace import Trace, decode_step, gradient_step, likelihood_step, trace_step, train_step

MODEL_IMPORTS = ("peft",)


@dataclass
class Work:
    """A traced step and how many times a job runs each of its phases.

    With ``fit`` and ``batch_lengths`` (one phase): the job runs ``len(batch_lengths)`` batches, each costed at
    its own padded length through ``fit`` rather than at the traced length. ``floor_flops``: the model's
    FLOPs the job cannot do without (each sample once per pass it needs, at its own length, no padding, no
    projection or host work); None: the traced FLOPs of every repeat.
    """

    trace: Trace
    repeats: dict[str, float]
    dtype: str
    fit: LengthFit | None = None
    batch_lengths: np.ndarray | None = None
    floor_flops: float | None = None

    def __post_init__(self) -> None:
        if self.floor_flops is None:
            self.floor_flops = float(sum(r * self.trace.flops.get(p, 0) for p, r in self.repeats.items()))


@dataclass
class Stage:
    """One row of the plan.

    ``device_bytes``: the stage's traced peak (0 for stages without a model); ``device_extra``: other
    device arrays (the SVD state on a GPU); ``host_extra``: host arrays by name; ``imports``: the
    modules whose import the baseline measures; ``jobs``: the Snakemake jobs (wildcards) it stands for;
    ``projector_calls``: per GPU projector, its cost and how many ``project`` calls the job makes;
    ``host_bytes_streamed``: host memory traffic of the job's own arithmetic on host arrays (the
    coherence pass's float64 sums), timed at the measured host bandwidth; ``host_flops``: float32
    matmul FLOPs the job runs on the host on any device (the ablation's CPU projections), timed at the
    measured CPU rate; ``host_seconds``: host work timed at its own measured rate (TRAK's Rademacher
    draw, :func:`gs.plan.host.measure_rademacher_rate`).
    """

    stage: str
    rule: str
    jobs: list[str]
    imports: tuple[str, ...]
    work: list[Work] = field(default_factory=list)
    device_extra: dict[str, int] = field(default_factory=dict)
    host_extra: dict[str, int] = field(default_factory=dict)
    host_weights: int = 0
    note: str = ""
    projector_calls: dict[str, tuple[ProjectorCost, float]] = field(default_factory=dict)
    host_bytes_streamed: float = 0.0
    device_bytes_streamed: float = 0.0  # the job's own arithmetic on device arrays (coherence sums on the GPU)
    host_flops: float = 0.0
    host_seconds: float = 0.0
    floor_shared: float = 0.0  # of the floor, FLOPs every job of the stage repeats (counted once in the DAG's)

    @property
    def floor_flops(self) -> float:
        return float(sum(w.floor_flops or 0.0 for w in self.work))

    @property
    def device_bytes(self) -> int:
        return max((w.trace.peak_bytes for w in self.work), default=0) + sum(self.device_extra.values())


def _ceil(a: float, b: float) -> int:
    return int(math.ceil(a / b))


#: Validation examples of a less_data eval file when the config gives no ``n`` (the planner counts them;
#: the data job reads them all): princeton-nlp/less_data eval/ as LESS's get_validation_dataset.py reads it.
LESS_EVAL_SIZES = {
    "mmlu": 57 * 5,  # eval/mmlu/dev/<subject>_dev.csv: 57 subjects x 5 rows
    "bbh": 27 * 3,  # eval/bbh/bbh-three-shot.json: 27 tasks x 3 shots
    "tydiqa": 9 * 1,  # eval/tydiqa/tydiqa-one-shot.json: 9 languages x 1 example
    "gsm": 50,  # ClusterUCB get_validation_dataset.py get_dataset: get_gsm_dataset(k=50)
    "humaneval": 10,  # ClusterUCB get_validation_dataset.py get_dataset: get_codex_dataset(k=10)
}
#: Subtasks of those files (the influence's max runs over them): MMLU subjects, BBH tasks, TydiQA languages.
LESS_EVAL_SUBTASKS = {"mmlu": 57, "bbh": 27, "tydiqa": 9, "gsm": 1, "humaneval": 1}


def validation_size(config: dict[str, Any], target: str) -> int:
    """Validation examples of ``target`` (``targets.<t>.validation``): a part's split, or its own source's ``n``."""
    from gs.io import InputError

    spec = (config.get("targets", {}).get(target) or {}).get("validation") or {}
    if "part" in spec:
        return _sizes(config, spec.get("split", "validation"))[spec["part"]]
    if spec.get("n") is not None:
        return int(spec["n"])
    task = (spec.get("options") or {}).get("task")
    if spec.get("source") == "less_eval" and task in LESS_EVAL_SIZES:
        return LESS_EVAL_SIZES[task]
    raise InputError(f"targets.{target}.validation: give 'n' so that the plan can count its examples")


def subtasks_per_target(config: dict[str, Any], targets: list[str]) -> list[int]:
    """The mean directions the influence passes keep per target, one per subtask
    (:func:`gs.selection.influence.subtask_groups`). Subtasks are data (the validation records'
    ``meta.subtask``): a less_data eval file's are counted (:data:`LESS_EVAL_SUBTASKS`), any other target
    counts one; each further subtask adds ``4 p`` device bytes (its direction) and ``8 (2 C + 1) n`` host
    bytes (its per-checkpoint and weighted scores) to the influence, clustering and selection jobs."""
    out = []
    for t in targets:
        spec = (config.get("targets", {}).get(t) or {}).get("validation") or {}
        task = (spec.get("options") or {}).get("task") if spec.get("source") == "less_eval" else None
        out.append(LESS_EVAL_SUBTASKS.get(task, 1))
    return out


def _joined(a: Work, b: Work) -> Work:
    """Two length-costed gradient works of one step (a pool slice and a validation set) as one."""
    lengths = np.concatenate([a.batch_lengths, b.batch_lengths])
    return Work(
        a.trace, {"gradient": int(lengths.size)}, a.dtype, a.fit, lengths, (a.floor_flops or 0) + (b.floor_flops or 0)
    )


def buffered_calls(n: int, batch: int, rows: int) -> tuple[int, int]:
    """``(calls, rows a call)`` of :func:`gs.gradients.projection.project_in_buffers` over ``n`` samples in
    batches of ``batch``: as many whole batches as fit ``rows`` go in one call (a batch larger than ``rows``
    alone), so ``ceil(ceil(n / batch) / per_call)`` calls of ``per_call x batch`` rows."""
    per_call = max(1, rows // batch)
    return _ceil(_ceil(n, batch), per_call), per_call * batch


def experts_per_method(config: dict[str, Any]) -> int:
    """Experts per method: ``cluster.k``, or for ``auto`` the largest k the search may choose."""
    k = config["cluster"]["k"]
    return int(config["cluster"]["auto_k"]["k_max"]) if k == "auto" else int(k)


def bandit_arms(config: dict[str, Any]) -> int:
    """ClusterUCB's arms: ``selection.ucb_clustering.k`` for its own clusters, else a cluster method's
    (:func:`experts_per_method`, an upper bound for ``auto``)."""
    sel = config["selection"]
    if sel["clusters"] == "clusterucb":
        return int(sel["ucb_clustering"]["k"])
    return experts_per_method(config)


def _dtype(section: dict[str, Any], config: dict[str, Any], auto: str = "float32") -> str:
    """The weights' dtype as the stage's code reads it: a section's own ``dtype`` (evaluation, latency),
    else ``model.dtype``, the default of :func:`gs.models.load.load_model` (the prepared folder's setting);
    ``auto`` is the dtype it resolves to where the jobs run (:func:`gs.models.dtype.resolve`)."""
    name = str(section.get("dtype") or config["model"].get("dtype", "float32"))
    return auto if name == "auto" else name


class Planner:
    """Builds the stages of one config. ``hf_config``: the model's transformers config;
    ``draw_rate``: Rademacher entries drawn per second on one host thread
    (:func:`gs.plan.host.measure_rademacher_rate`, measured when None and a stage needs it)."""

    def __init__(
        self,
        config: dict[str, Any],
        hf_config: Any,
        full_depth: bool = False,
        draw_rate: float | None = None,
        auto_dtype: str = "float32",
        lengths: PoolLengths | None = None,
    ) -> None:
        self.config, self.hf, self.full_depth = config, hf_config, full_depth
        # The pool's tokens a sample (gs.plan.lengths): the gradient passes' and training's batches are costed at
        # their padded lengths.
        self.lengths = lengths if lengths is not None else pool_lengths(config)
        self.auto_dtype = auto_dtype  # what a dtype: auto runs in (the plan's measured CPU choice, or the GPU's)
        self.draw_rate = draw_rate
        self.plan = config.get("plan", {})
        self.run_on = str(self.plan.get("run_on", "cpu"))
        self.prompt = int(self.plan.get("prompt_tokens", 256))
        self.fast_jl = bool(self.plan.get("fast_jl", False))  # the planned env runs fast_jl (CudaProjector)
        self.sms = devices.gpu(str(self.plan.get("gpu", "H100-80GB"))).sms
        self.n_pool = sum(_sizes(config, "train").values())
        self._cache: dict[tuple, Trace] = {}

    def trace(self, key: tuple, dtype: str, lora: dict[str, Any] | None, step: Any, adapters: int = 1) -> Trace:
        """:func:`gs.plan.trace.trace_step`, memoised on ``key`` (stages share steps)."""
        full = (key, dtype, repr(lora), adapters)
        if full not in self._cache:
            self._cache[full] = trace_step(self.hf, dtype, lora, step, adapters=adapters, full_depth=self.full_depth)
        return self._cache[full]

    def _projector_itemsize(self, dtype: str) -> int:
        """Bytes of a projector entry (:func:`gs.gradients.projection.projector_dtype`): the model's dtype on
        a GPU, float32 on the CPU."""
        return 4 if self.run_on == "cpu" or dtype == "float32" else 2

    def _projectors(
        self, stage: Stage, kind: str, d: int, b: int, calls: dict[int, float], dtype: str = "float32"
    ) -> None:
        """On a GPU run, the Rademacher projectors gs.gradients.projection builds there (``plan.fast_jl``:
        CudaProjector, else BasicProjector in ``dtype`` with its chosen block): each one's device bytes
        (all alive together) and its ``calls[p]`` calls on (b, d) blocks."""
        if self.run_on != "gpu" or kind != "rademacher":
            return
        for p, n_calls in sorted(calls.items()):
            cost = gpu_projector(d, p, b, self.fast_jl, self.sms, dtype)
            what = (
                "CudaProjector workspace"
                if cost.block is None
                else f"BasicProjector {cost.dtype} block, {cost.block} columns, and cast input"
            )
            name = f"projector {p} ({what})"
            stage.device_extra[name] = cost.device_bytes
            stage.projector_calls[name] = (cost, n_calls)

    # ------------------------------------------------------------------ training

    def _fit(self, key: tuple, dtype: str, lora: dict[str, Any] | None, step_at: Any, t: int) -> LengthFit:
        """:func:`gs.plan.lengths.fit_step` of ``step_at(t)``, its traces memoised under ``key + (t,)``."""
        return fit_step(lambda tt: self.trace(key + (tt,), dtype, lora, step_at(tt)), t)

    def _training(self, section: dict[str, Any], n: int, extra_steps: int = 0) -> Work:
        """``n`` samples of the pool, ``epochs`` times, in :func:`gs.models.lora.train_lora`'s shuffled
        micro-batches at their padded lengths. Floor: each sample once an epoch at its own length, without
        gradient checkpointing's second forward."""
        train, lora = section["train"], section["lora"]
        b, t = int(train["batch_size"]), int(train["max_length"])
        ckpt = bool(train.get("gradient_checkpointing", False))
        dtype = _dtype(section, self.config, self.auto_dtype)
        tr = self.trace(("train", b, ckpt, t), dtype, lora, train_step(b, t, checkpointing=ckpt))
        epochs = float(train["epochs"])
        steps = math.ceil(_ceil(n, b) * epochs) + extra_steps
        lengths = np.minimum(self.lengths.lengths, t)
        fit = self._fit(("train", b, ckpt), dtype, lora, lambda tt: train_step(b, tt, checkpointing=ckpt), t)
        bare = fit if not ckpt else self._fit(("train", b, False), dtype, lora, lambda tt: train_step(b, tt), t)
        step = b * int(train.get("gradient_accumulation_steps", 1))
        by_length = bool(train.get("group_by_length", False))
        padded = spread(shuffled_batches(lengths, b, int(self.config["seed"]), step, by_length), steps)
        floor = epochs * n / lengths.size * float(bare.flops_at("train", lengths).sum()) / b
        return Work(tr, {"train": steps}, dtype, fit, padded, floor)

    def _gradients(
        self,
        lora: dict[str, Any],
        b: int,
        t: int,
        dtype: str,
        batches: int,
        samples: list[np.ndarray] | None = None,
        passes: int = 1,
    ) -> Work:
        """A gradient pass. ``samples``: the token lengths of each set of samples the job passes over (a
        pool slice, a validation set), each batched in :func:`gs.gradients.per_sample.length_batches`'
        sorted windows, ``passes`` times (as given, ``batches`` batches at ``t`` tokens when None).
        Floor: every sample ``passes`` times at its own length."""
        tr = self.trace(("gradient", b, t), dtype, lora, gradient_step(b, t))
        if samples is None:
            return Work(tr, {"gradient": batches}, dtype)
        from gs.gradients.passes import gradient_window

        window = gradient_window({**self.config["gradients"], "batch_size": b})
        fit = self._fit(("gradient", b), dtype, lora, lambda tt: gradient_step(b, tt), t)
        cut = [np.minimum(s, t) for s in samples if s.size]
        padded = np.tile(np.concatenate([window_batches(s, b, window) for s in cut] or [np.zeros(0, np.int64)]), passes)
        floor = passes * sum(float(fit.flops_at("gradient", s).sum()) for s in cut) / b
        return Work(tr, {"gradient": int(padded.size)}, dtype, fit, padded, floor)

    def _pool_slice(self, shards: int) -> np.ndarray:
        """Token lengths of the gradient passes' largest job: of the ``shards`` slices
        (:func:`gs.gradients.passes.shard_bounds`), the one with the most tokens."""
        from gs.gradients.passes import shard_bounds

        arr = self.lengths.lengths
        slices = [arr[a:z] for a, z in shard_bounds(arr.size, shards)]
        return max(slices, key=lambda s: (int(s.sum()), s.size))

    def _validation(self, sizes: list[int], t: int) -> list[np.ndarray]:
        """Token lengths of the targets' validation sets: not read by the plan, taken at ``t`` (an upper bound)."""
        return [np.full(v, t, dtype=np.int64) for v in sizes]

    def gradient_passes(self, shards: int, n_methods: int, k: int) -> list[Stage]:
        """The extraction and coherence passes over the pool: one job each (``shards`` = 1), or per
        ``gradients.shards`` one job per contiguous slice (the largest, ``ceil(n / S)`` samples, is
        planned: :func:`gs.gradients.passes.shard_bounds`) plus the merges (:mod:`gs.gradients.shards`). Coherence
        last."""
        grads, n = self.config["gradients"], self.n_pool
        warm = grads["warmup"]
        gb, gt, gdtype = int(grads["batch_size"]), int(grads["max_length"]), _dtype(grads, self.config, self.auto_dtype)
        rank = int(grads["svd"]["rank"])
        n_job = _ceil(n, shards)
        passes = 1 if grads.get("elrea_loss_on", "instruction") == grads.get("loss_on", "response") else 2
        job = [self._pool_slice(shards)]
        ex = self._gradients(warm["lora"], gb, gt, gdtype, 0, job, passes)
        d = ex.trace.lora_dim
        svd_device = {"svd state": host.svd_state_bytes(d, rank, gb)} if self.run_on == "gpu" else {}
        from gs.gradients.passes import gradient_window

        window = gradient_window(grads)
        # gs.gradients.per_sample.iter_gradients: a (w, d) float32 window where the gradients stay (the model's
        # device on a GPU run), one per loss the extraction streams side by side; a window of one batch is the
        # step's own (b, d) block (in the trace), passed on without a copy.
        held = host.F32 * d * (window * passes - (gb if window == gb else 0) * 1)
        windows = {"gradient windows (float32, one a loss)": held} if self.run_on == "gpu" and held > 0 else {}
        co = Stage("gradient coherence", "gradient_coherence", ["coherence"], ("gs.cluster.coherence",))
        co.work = [self._gradients(warm["lora"], gb, gt, gdtype, 0, job)]
        from gs.cluster.coherence import coherence_sums_on

        co.host_extra = host.coherence_host_bytes(d, grads, n_methods, k, self.run_on)
        if self.run_on == "gpu":
            co.device_extra = {"gradient window (float32)": host.F32 * window * d}
        if coherence_sums_on(grads) == "device":
            # gs.cluster.coherence: float32 (k, d) sums per method where the gradients are, each window index_add_-ed
            # (4 + 4 read, 4 written an entry a sample and method); handed to the host in float64 at the end.
            traffic = 3.0 * host.F32 * n_job * d * n_methods
            if self.run_on == "gpu":
                co.device_extra["cluster sums (float32)"] = host.F32 * n_methods * k * d
                co.device_bytes_streamed = traffic
            else:
                co.host_extra["cluster sums (float32)"] = host.F32 * n_methods * k * d
                co.host_bytes_streamed = traffic
        else:
            co.host_bytes_streamed = host.coherence_host_traffic(d, n_job, n_methods)
        # gs.gradients.extraction.stream_features: every projection dim once per window, ELREA's dim again in its pass;
        # gs.gradients.extraction.make_projectors builds them in gs.gradients.projection.projector_dtype: the model's
        # on a GPU.
        proj = grads["projection"]
        nb, rows = buffered_calls(n_job, gb, projection_rows(grads))  # one call per window (gs.gradients.passes)
        calls = {p: float(nb) for p in {int(q) for q in proj["dims"]} | {int(proj["elrea_dim"])}}
        calls[int(proj["elrea_dim"])] += nb * (passes - 1)
        if shards == 1:
            stage = Stage(
                "gradient features", "extract_gradient_features", ["extract"], ("gs.gradients.extraction",), [ex]
            )
            stage.host_extra = host.extract_host_bytes(d, n, grads, self.run_on)
            if grads.get(
                "keep_gradients", False
            ):  # gs.gradients.extraction.stream_features: every row into the memory map
                stage.host_extra["kept gradients (memory map, pages written)"] = host.kept_gradients_bytes(n, d)
            stage.device_extra = {**svd_device, **windows}
            self._projectors(stage, proj.get("kind", "sparse"), d, rows, calls, gdtype)
            return [stage, co]
        jobs = [f"shard{i}" for i in range(shards)]
        stage = Stage(
            f"gradient features, 1 of {shards} shards", "extract_gradient_shard", jobs, ("gs.gradients.shards",), [ex]
        )
        stage.host_extra = host.extract_host_bytes(d, n_job, grads, self.run_on)
        stage.device_extra = {**svd_device, **windows}
        self._projectors(stage, proj.get("kind", "sparse"), d, rows, calls, gdtype)
        out = [stage]
        if grads["svd"]["method"] == "frequent_directions":  # no left factor: coordinates in a second pass
            second = self._gradients(warm["lora"], gb, gt, gdtype, 0, job)
            coords = Stage(
                f"gradient coordinates, 1 of {shards} shards",
                "gradient_shard_coordinates",
                jobs,
                ("gs.gradients.shards",),
                [second],
            )
            coords.host_extra = {"coordinates": host.F64 * n_job * rank}
            coords.device_extra = svd_device
            out.append(coords)
        # The merge holds every shard's features and the S states (m_i rows of d each) on the state's
        # device, float32 on a GPU. gs.gradients.shards.merge_brand: the states and the (rank, d) merged basis
        # (Gram route, no stack); merge_frequent_directions: the states and one FD update of a sketch
        # of ell rows by a state, d (2 ell + 3 m_i).
        m_i = rank + int(grads["svd"].get("options", {}).get("oversample", 0))
        extra_rows = rank
        if grads["svd"]["method"] == "frequent_directions":
            m_i = int(grads["svd"].get("options", {}).get("sketch_size", 2 * rank))
            extra_rows = 5 * m_i
        merge = Stage(
            f"merge of {shards} gradient shards", "merge_gradient_shards", ["merge"], ("gs.gradients.shards",)
        )
        merge.host_extra = host.extract_host_bytes(d, n, grads, self.run_on)
        merge.host_extra["shard states"] = host.F32 * d * shards * m_i
        stacked = {"svd states and merged basis": host.F32 * d * (shards * m_i + extra_rows)}
        if self.run_on == "gpu":
            merge.device_extra = stacked
        else:
            merge.host_extra.update(stacked)
        if grads["svd"]["method"] == "frequent_directions":
            # gs.gradients.shards.merge_basis: every shard payload (its projected features, once: nothing concatenated)
            # and state, and the FD merge of the states on the state's device.
            basis = Stage(
                f"basis of {shards} gradient shards", "merge_gradient_basis", ["basis"], ("gs.gradients.shards",)
            )
            features = merge.host_extra["projected features (parts + concatenated)"] // 2
            basis.host_extra = {"shard payloads' features": features, "shard states": host.F32 * d * shards * m_i}
            basis.device_extra = dict(merge.device_extra)
            if self.run_on != "gpu":
                basis.host_extra.update(stacked)
            out.insert(1, basis)
        out.append(merge)
        co.stage, co.rule, co.jobs, co.imports = (
            f"gradient coherence, 1 of {shards} shards",
            "gradient_coherence_shard",
            jobs,
            ("gs.cluster.coherence",),
        )
        # gs.cluster.coherence.coherence_shard (gs.cluster.coherence.cluster_gradient_sums): the float64 sums live on
        # the host
        # on every device (host.coherence_host_bytes); they are saved as float32, one method's copy at a
        # time, each float64 sum freed after its copy. The merge holds the float32 total and one shard's.
        co.host_extra["float32 copy of one method's sums (saving)"] = host.F32 * k * d
        sums_bytes = host.F32 * n_methods * k * d
        co_merge = Stage(
            f"merge of {shards} coherence shards", "merge_coherence_shards", ["merge"], ("gs.cluster.coherence",)
        )
        co_merge.host_extra = {"cluster sums (total and one shard's)": 2 * sums_bytes}
        return out + [co, co_merge]

    def influence_pass(self, shards: int) -> list[Stage]:
        """LESS influence: one job (``shards`` = 1) or one per slice (the largest planned; every shard
        recomputes the targets' directions, :func:`gs.selection.influence_shards.influence_shard`) and the merge."""
        c, grads = self.config, self.config["gradients"]
        warm = grads["warmup"]
        gb, gt, gdtype = int(grads["batch_size"]), int(grads["max_length"]), _dtype(grads, self.config, self.auto_dtype)
        n_job = _ceil(self.n_pool, shards)
        targets = list(c["selection"]["targets"])
        n_val = [validation_size(c, t) for t in targets]
        ckpts = math.ceil(float(warm["train"]["epochs"]))
        if shards == 1:
            inf = Stage("LESS influence", "less_influence", ["influence"], ("gs.selection.influence",))
        else:
            jobs = [f"shard{i}" for i in range(shards)]
            inf = Stage(
                f"LESS influence, 1 of {shards} shards",
                "less_influence_shard",
                jobs,
                ("gs.selection.influence_shards",),
            )
        pool_work = self._gradients(warm["lora"], gb, gt, gdtype, 0, [self._pool_slice(shards)], ckpts)
        val_work = self._gradients(warm["lora"], gb, gt, gdtype, 0, self._validation(n_val, gt), ckpts)
        inf.work = [_joined(pool_work, val_work)]
        if shards > 1:  # every shard recomputes the targets' directions (gs.selection.influence_shards)
            inf.floor_shared = float(val_work.floor_flops or 0.0)
        icfg = grads.get("influence", {})
        n_sub = sum(subtasks_per_target(c, targets))  # S directions in all, one per subtask
        calls, rows = buffered_calls(n_job, gb, projection_rows(grads))
        inf.host_extra, inf.device_extra = host.influence_bytes(
            inf.work[0].trace.lora_dim,
            n_job,
            len(targets),
            ckpts,
            gb,
            icfg.get("projection_dim"),
            icfg.get("projection_kind", "sparse"),
            self.run_on,
            subtasks=n_sub,
            rows=rows,
            buffer_itemsize=self._projector_itemsize(gdtype),
        )
        if icfg.get("projection_dim") is not None:
            p = int(icfg["projection_dim"])
            # gs.selection.influence.ProjectedFeatures: the projector in the model's dtype on a GPU
            # (gs.gradients.projection.projector_dtype); the pool's and the validation sets' windows (`rows`
            # samples, gs.gradients.passes.gradient_window) one call each.
            kind = icfg.get("projection_kind", "sparse")
            val_calls = sum(_ceil(v, rows) for v in n_val)
            self._projectors(inf, kind, inf.work[0].trace.lora_dim, rows, {p: ckpts * (calls + val_calls)}, gdtype)
        if shards == 1:
            return [inf]
        merge = Stage(
            f"merge of {shards} influence shards",
            "merge_influence_shards",
            ["merge"],
            ("gs.selection.influence_shards",),
        )
        # per target (C, T, n) and (T, n), per subtask (C, S, n) and (S, n): a shard's and the merged.
        merge.host_extra = {
            "influence scores (shards and merged)": 2 * host.F64 * (ckpts + 1) * (len(targets) + n_sub) * self.n_pool
        }
        return [inf, merge]

    def stages(self) -> list[Stage]:
        """Every stage of the workflow this config runs, in the order of the DAG."""
        c = self.config
        warm = c["gradients"]["warmup"]
        n_warm = max(1, round(float(warm["fraction"]) * self.n_pool))
        out = [
            self._prepare_model(),
            Stage(
                "warm-up LoRA", "warmup_lora", ["warmup_lora"], ("gs.gradients.warmup",), [self._training(warm, n_warm)]
            ),
        ]
        n_methods = len(c["cluster"]["methods"]) + len(c["cluster"].get("ablation_dims", []))
        shards = int(c["gradients"].get("shards", 1))
        passes = self.gradient_passes(shards, n_methods, experts_per_method(c))
        d = passes[0].work[0].trace.lora_dim
        gradientspace, clusterucb = studies(c)
        if gradientspace:
            out.extend(passes)
        if clusterucb:
            out.extend(self.influence_pass(shards))
            out.extend(self._selection(d))
        out.extend(self._prepare_domains())
        for stage, rule, jobs, module in (
            ("data pool", "pool_data", ["pool_data"], "gs.data.prepare"),
            ("tables and figures", "tables_and_figures", ["report"], "gs.report.build"),
        ):
            out.append(Stage(stage, rule, jobs, (module,)))
        if gradientspace:
            out.extend(self._clustering(d))
        out.extend(self._training_stages())
        out.extend(self._evaluation(experts_per_method(c)))
        if gradientspace:
            out.append(self._latency())
        return out

    def gradient_jobs(self, shards: int, n_methods: int, k: int) -> list[Stage]:
        """The sharded passes of the studies this config runs: GradientSpace's extraction and coherence,
        ClusterUCB's LESS influence (for the shard count that fits, :func:`gs.plan.report.shard_note`)."""
        gradientspace, clusterucb = studies(self.config)
        return (self.gradient_passes(shards, n_methods, k) if gradientspace else []) + (
            self.influence_pass(shards) if clusterucb else []
        )

    def _selection(self, d: int) -> list[Stage]:
        """ClusterUCB's own arms (when configured) and the selection jobs, one per target."""
        c, n = self.config, self.n_pool
        grads = c["gradients"]
        warm, icfg = grads["warmup"], grads.get("influence", {})
        gb, gt = int(grads["batch_size"]), int(grads["max_length"])
        gdtype = _dtype(grads, c, self.auto_dtype)
        targets = list(c["selection"]["targets"])
        n_val = [validation_size(c, t) for t in targets]
        subtasks = subtasks_per_target(c, targets)
        ckpts = math.ceil(float(warm["train"]["epochs"]))
        proj_dim, kind = icfg.get("projection_dim"), icfg.get("projection_kind", "sparse")
        out: list[Stage] = []
        if "ucb_clustering" in c["selection"]:
            # gs.selection.ucb_clustering: the influence pipeline at one checkpoint (pool and targets), features (n, p).
            ucb = Stage("ClusterUCB arms", "clusterucb_clusters", ["clusters"], ("gs.selection.ucb_clustering",))
            ucb.work = [
                self._gradients(warm["lora"], gb, gt, gdtype, 0, [self.lengths.lengths, *self._validation(n_val, gt)])
            ]
            calls, rows = buffered_calls(n, gb, projection_rows(grads))
            ucb.host_extra, ucb.device_extra = host.influence_bytes(
                d,
                n,
                len(targets),
                1,
                gb,
                proj_dim,
                kind,
                self.run_on,
                subtasks=sum(subtasks),
                rows=rows,
                buffer_itemsize=self._projector_itemsize(gdtype),
            )
            ucb.host_extra["features"] = host.F32 * n * int(proj_dim or d)
            if proj_dim is not None:  # gs.selection.influence.ProjectedFeatures: in the model's dtype, buffered
                val_calls = sum(_ceil(v, rows) for v in n_val)
                self._projectors(ucb, kind, d, rows, {int(proj_dim): calls + val_calls}, gdtype)
            out.append(ucb)
        # gs.selection.select with gs.selection.on_demand: one target a job; ClusterUCB's draws
        # (budget_fraction of the pool) run the influence pipeline at every checkpoint on the drawn
        # samples and the target's validation set, in one model with the checkpoints' adapters
        # swapped in (gs.selection.on_demand's module doc).
        sel = Stage("selection", "select_data", targets, ("gs.selection.select", "gs.selection.on_demand"))
        drawn = max(1, math.ceil(float(c["selection"].get("budget_fraction", 0.2)) * n))
        # gs.selection.bandit: a pull that finds its samples not computed asks gs.selection.on_demand for
        # max(draw_size, lookahead) of its cluster, batched and projected in its own windows (a draw of one
        # sample is one batch and one projector call); those computed ahead and never drawn are at most
        # k (lookahead - 1), planned at that bound.
        draw_size = int(c["selection"].get("draw_size", 1))
        pull = max(draw_size, int(c["selection"].get("lookahead", 1)))
        ahead = bandit_arms(c) * (pull - draw_size)
        evaluated = min(n, drawn + ahead)
        # The computed samples' lengths: a seeded draw of the pool's (the bandit's draws follow its clusters).
        draw = np.random.default_rng(int(c["seed"])).choice(self.lengths.lengths, size=evaluated, replace=False)
        pulls = [draw[i : i + pull] for i in range(0, draw.size, pull)]
        val = self._validation([max(n_val)], gt)[0]
        sel_work = self._gradients(warm["lora"], gb, gt, gdtype, 0, [*pulls, val], ckpts)
        # The floor: the budget's draws alone (the samples computed ahead and never drawn are not the work).
        sel_work.floor_flops = self._gradients(warm["lora"], gb, gt, gdtype, 0, [draw[:drawn], val], ckpts).floor_flops
        sel.work = [sel_work]
        from gs.gradients.passes import gradient_window

        window = gradient_window(grads)
        sel_calls = ckpts * (len(pulls) * _ceil(min(pull, evaluated), window) + _ceil(val.size, window))
        sel.host_extra, sel.device_extra = host.influence_bytes(
            d, n, 1, ckpts, gb, proj_dim, kind, self.run_on, subtasks=max(subtasks)
        )
        # influence.npz's (C, S, n) per-subtask scores read whole, and one target's rows of them.
        sel.host_extra["influence scores"] = host.F64 * (ckpts + 1) * sum(subtasks) * n
        if proj_dim is not None:
            self._projectors(sel, kind, d, min(pull, window), {int(proj_dim): sel_calls}, gdtype)
        out.append(sel)
        return out

    def _clustering(self, d: int) -> list[Stage]:
        """The clusterings (the semantic baseline apart: it loads an encoder), their quality and the ablation."""
        c, n, grads = self.config, self.n_pool, self.config["gradients"]
        methods = list(c["cluster"]["methods"])
        feats = host.features_file_bytes(n, grads)
        cl = Stage(
            "clustering",
            "cluster_samples",
            [m for m in methods + [f"rp{p}" for p in c["cluster"].get("ablation_dims", [])] if m != "semantic"],
            ("gs.cluster.methods", "sklearn.cluster", "pandas"),
        )
        cl.host_extra = {"features.npz": feats}
        qu = Stage(
            "cluster quality",
            "cluster_quality",
            ["quality"],
            ("gs.cluster.quality", "sklearn.metrics", "pandas", "matplotlib.pyplot"),
        )
        qu.host_extra = {"features.npz": feats}
        if grads.get("keep_gradients", False):  # gs.cluster.quality: every seed's coherence from the Gram matrix
            qu.host_extra.update(host.quality_gram_bytes(n, d))
        out = [cl, qu, self._ablation(d, feats)]
        if "semantic" in methods:
            sem = Stage(
                "clustering (semantic)",
                "cluster_samples",
                ["semantic"],
                ("gs.cluster.methods", "sklearn.cluster", "pandas", "sentence_transformers"),
            )
            sem.host_extra = {"features.npz": feats, **self._encoder_bytes(n)}
            out.append(sem)
        return out

    def _training_stages(self) -> list[Stage]:
        """The experts, the multi-task LoRA, the fine-tunes on selected data, the routers and their table."""
        c, n = self.config, self.n_pool
        methods, ex_cfg = list(c["cluster"]["methods"]), c["experts"]
        gradientspace, clusterucb = studies(c)
        targets = list(c["selection"]["targets"])
        out: list[Stage] = []
        if not gradientspace:
            methods = []
        # Experts are trained only for a method some system evaluates (rules/router.smk: routers do
        # not need them).
        modes = c["evaluation"]["modes"]
        trained = [m for m in methods if modes.get(m, ["single"])]
        if trained:
            extra = experts_per_method(c)
            out.append(
                Stage(
                    "experts",
                    "train_experts",
                    trained,
                    ("gs.experts.train",),
                    [self._training(ex_cfg, n, extra_steps=extra)],
                )
            )
        if gradientspace:
            out.append(
                Stage(
                    "multitask LoRA",
                    "train_multitask",
                    ["multitask"],
                    ("gs.experts.train",),
                    [self._training(ex_cfg, n)],
                )
            )
        keep = max(1, int(float(c["selection"]["keep_fraction"]) * n + 1e-9))
        fin = [
            f"{t}_{s}"
            for t in c["selection"].get("finetune_targets", targets)
            for s in ("clusterucb", "full", "random")
        ]
        if clusterucb:
            out.append(
                Stage(
                    "fine-tune selection",
                    "finetune_selected",
                    fin,
                    ("gs.experts.train",),
                    [self._training(ex_cfg, keep)],
                )
            )
        if gradientspace:
            ro = Stage("router", "train_router", methods, ("gs.router.train", "sentence_transformers"))
            ro.host_extra = self._encoder_bytes(n)
            out.append(ro)
            out.append(self._router_table(methods))
        return out

    # ------------------------------------------------------------------ stages without training

    def _prepare_domains(self) -> list[Stage]:
        """Rule ``prepare_part`` (and ``prepare_target``): one stage per set of modules the sources import
        (:func:`gs.data.sources.source_imports`), whose baseline is the job's memory (the items are small)."""
        from gs.data.sources import source_imports

        def imports(splits: list[dict[str, Any]]) -> tuple[str, ...]:
            found = {m for sp in splits if "source" in sp for m in source_imports(sp["source"], sp.get("options", {}))}
            return ("gs.data.prepare", *sorted(found))

        by_imports: dict[tuple[str, tuple[str, ...]], list[str]] = {}
        for part, spec in self.config["data"]["parts"].items():
            by_imports.setdefault(("prepare_part", imports(list(spec.values()))), []).append(part)
        for target, spec in self.config.get("targets", {}).items():
            if "source" in (spec.get("validation") or {}):
                by_imports.setdefault(("prepare_target", imports([spec["validation"]])), []).append(target)
        return [
            Stage("data" + (f" ({', '.join(mods[1:])})" if len(mods) > 1 else ""), rule, names, mods)
            for (rule, mods), names in sorted(by_imports.items())
        ]

    def _ablation(self, d: int, feats: int) -> Stage:
        """Rule ``ablation`` (:mod:`gs.cluster.ablation`). With ``gradients.keep_gradients`` (``run_kept``): the
        arrays of :func:`gs.plan.host.ablation_host_bytes`; time per seed, TRAK's draw of every
        (d, block) block (``d x block x ceil(P_max / block)`` entries at the measured draw rate) and the
        float32 projection (``2 n d`` FLOPs per column); once, the two float64 Gram matrices (``gram``
        for coherence and for ``decompose``: ``2 n^2 d`` each, counted twice for float64). k-means and
        the small decompositions ((n, n) and (n, p)) are left out. Without kept gradients
        (``run_features``): ``features.npz`` and decompositions of (n, p) features only.
        """
        from gs.cluster.ablation import DEFAULTS

        c, n = self.config, self.n_pool
        spec = {**DEFAULTS, **(c["cluster"].get("ablation") or {})}
        p_max, seeds, kind = max(int(p) for p in spec["dims"]), int(spec["seeds"]), str(spec["projection_kind"])
        imports = (
            "gs.cluster.ablation",
            "gs.cluster.methods",
            "gs.cluster.quality",
            "gs.gradients.projection",
            "sklearn.cluster",
            "matplotlib.figure",
        )
        if kind == "rademacher":
            imports += ("trak.projectors",)
        st = Stage("projection ablation", "ablation", ["ablation"], imports)
        st.host_extra = {"features.npz": feats}
        if not c["gradients"].get("keep_gradients", False):
            st.note = "features.npz only (no kept gradients)"
            return st
        st.host_extra.update(host.ablation_host_bytes(n, d, p_max, kind))
        block = min(128, p_max)
        columns = block * _ceil(p_max, block) if kind == "rademacher" else p_max
        if kind == "rademacher":
            if self.draw_rate is None:
                self.draw_rate = host.measure_rademacher_rate()
            st.host_seconds = seeds * d * columns / self.draw_rate
            st.host_flops = seeds * 2.0 * n * d * columns
        else:  # scikit-learn's sparse product: 2 n flops per non-zero of the (p_max, d) matrix
            st.host_flops = seeds * 2.0 * n * math.ceil(p_max * math.sqrt(d))
        st.host_flops += 2 * 2 * (2.0 * n * n * d)
        return st

    def _router_table(self, methods: list[str]) -> Stage:
        """Rule ``router_table`` (:mod:`gs.router.table`): one ``router.json`` a method into a table of one
        row a method: 8 fields and the :data:`gs.spread.STATS` of two accuracies (8-byte cells)."""
        from gs.spread import STATS

        st = Stage("router table", "router_table", ["router_table"], ("gs.router.table",))
        st.host_extra = {"table": host.F64 * len(methods) * (8 + 2 * len(STATS))}
        return st

    def _prepare_model(self) -> Stage:
        model = self.config["model"]
        from gs.models.load import resolve_dtype
        from gs.models.prepare import stored_dtype

        size = resolve_dtype(stored_dtype(model)).itemsize
        n_params = self._n_params()
        # gs.models.prepare: a GGUF model is de-quantised, then copied into a model built from its config; a hub
        # or local model is downloaded or copied as files, its weights never loaded.
        copies = 2 if model.get("source") == "gguf" else 0
        st = Stage("prepare model", "prepare_model", ["prepare_model"], ("gs.models.prepare",) + MODEL_IMPORTS)
        st.host_extra = {f"weights x{copies}": copies * n_params * size}
        return st

    def _n_params(self) -> int:
        import torch
        from torch._subclasses.fake_tensor import FakeTensorMode
        from transformers import AutoModelForCausalLM

        with FakeTensorMode(), torch.device("meta"):
            model = AutoModelForCausalLM.from_config(self.hf)
            return sum(p.numel() for p in model.parameters())

    def _encoder_bytes(self, n: int) -> dict[str, int]:
        """The router's/semantic clustering's sentence encoder (float32 weights) and (n, hidden) embeddings."""
        try:
            from transformers import AutoConfig

            from gs.models.embeddings import minilm_path

            cfg = AutoConfig.from_pretrained(minilm_path())
        except Exception:  # the encoder package is optional for a plan; the paper default is MiniLM-L6
            return {}
        h, layers, inter, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size
        # BERT: embeddings (vocab, positions, types) + per layer 4 h^2 + 2 h inter (+ biases, norms).
        params = (vocab + cfg.max_position_embeddings + cfg.type_vocab_size) * h
        params += layers * (4 * h * h + 2 * h * inter + 9 * h + inter)
        return {"encoder weights": host.F32 * params, "embeddings": host.F32 * n * h}

    def _evaluation(self, k: int) -> list[Stage]:
        """Rule ``evaluate_system``: per target task (:func:`gs.plan.tasks.target_work`) its requests, as
        :class:`gs.evaluation.routed_model.RoutedLM` runs them. Generation: ``ceil(n / b)`` batches, each a
        prefill of its prompt and ``max_gen_toks`` decoding steps (the limit; the until-stops may end a batch
        sooner); likelihood: ``ceil(requests / b)`` batches of prompt and answer (multiple choice: one request
        per choice). Each group's steps are traced once at its longest prompt (and generation limit, answer)
        and a task's batches count its tokens' share of that trace's. One stage per inference mode, scored on
        every target of ``evaluation.targets`` (absent: all); the selection systems (a multitask LoRA each,
        scored on their own target's tasks only, rules/common.smk ``system_targets``) get one stage per
        fine-tuned target."""
        from gs.plan.tasks import DEFAULT_MAX_GEN_TOKS, target_work

        c = self.config
        ev = c["evaluation"]
        gradientspace, clusterucb = studies(c)
        modes: set[str] = {"base", "multitask"} if gradientspace else {"base"}
        for method in c["cluster"]["methods"] if gradientspace else []:
            modes.update(ev["modes"].get(method, ["single"]))
        inf = {"top_m": None, "gradient_batch_size": 4, "gradient_max_length": 512, **ev.get("inference", {})}
        lik = ev.get("likelihood", {})
        lb = int(lik.get("batch_size", ev.get("batch_size", 8)))
        cap = lik.get("max_answer_tokens")
        chunk = lik.get("chunk_tokens")
        lora = c["experts"]["lora"]
        dtype = _dtype(ev, c, self.auto_dtype)
        # gs.models.load.load_model reads the prepared folder's safetensors in its own dtype (memory-mapped: the
        # pages read stay in the process's RSS) and casts them to the evaluation's dtype on the CPU.
        from gs.models.load import resolve_dtype
        from gs.models.prepare import stored_dtype

        folder_dtype = resolve_dtype(stored_dtype(c["model"]))
        cast = self.run_on == "cpu" and folder_dtype != resolve_dtype(dtype)
        folder_read = self._n_params() * folder_dtype.itemsize if cast else 0
        eval_targets = list(ev.get("targets") or c["targets"])
        finetuned = list(c["selection"].get("finetune_targets", c["selection"]["targets"])) if clusterucb else []
        by_target = {t: target_work(c, [t], self.prompt) for t in dict.fromkeys(eval_targets + finetuned)}
        every = [w for t in eval_targets for w in by_target[t]]
        groups = [(mode, f"evaluation ({mode})", self._systems(mode), every) for mode in sorted(modes)]
        for t in finetuned:
            systems = [f"select-{t}-{s}" for s in ("clusterucb", "full", "random")]
            groups.append(("multitask", f"evaluation (select-{t})", systems, by_target[t]))
        out = []
        by_mode = ev.get("batch_size_by_mode") or {}
        for mode, name, systems, tasks in groups:
            b = int(by_mode.get(mode, ev.get("batch_size", 8)))  # gs.evaluation.run.generation_batch_size
            streams = {"elrea": int(inf["top_m"] or k), "uniform": k}.get(mode, 1)
            adapters = 0 if mode == "base" else (1 if mode == "multitask" else k + (mode == "elrea"))
            use_lora = lora if adapters else None
            work = []
            gen = [w for w in tasks if w.kind == "generate_until"]
            if gen:
                p_max, g_max = max(w.prompt_tokens for w in gen), max(w.max_gen_toks for w in gen)
                dec = self.trace(
                    ("decode", b, p_max, g_max, streams),
                    dtype,
                    use_lora,
                    decode_step(b, p_max, g_max, streams),
                    max(adapters, 1),
                )
                steps = sum(_ceil(w.n, b) * w.max_gen_toks for w in gen)
                # The traced prefill fills the cache to its last position; a batch's real prefill is its prompt.
                prefill = sum(_ceil(w.n, b) * w.prompt_tokens for w in gen) / (p_max + g_max - 1)
                work.append(Work(dec, {"decode": steps, "prefill": prefill}, dtype))
            scored = [w for w in tasks if w.kind != "generate_until"]
            if scored:
                # An answer of unknown length (a suite task's reference) is counted at the likelihood cap.
                keep = {w.task: int(w.answer_tokens or cap or DEFAULT_MAX_GEN_TOKS) for w in scored}
                p_max, a_max = max(w.prompt_tokens for w in scored), max(keep.values())
                lk = self.trace(
                    ("lik", lb, p_max, a_max, streams, chunk),
                    dtype,
                    use_lora,
                    likelihood_step(lb, p_max, a_max, streams, chunk),
                    max(adapters, 1),
                )
                batches = sum(
                    _ceil(w.requests, lb) * (w.prompt_tokens + keep[w.task]) / (p_max + a_max) for w in scored
                )
                work.append(Work(lk, {"likelihood": batches}, dtype))
            st = Stage(name, "evaluate_system", systems, ("gs.evaluation.run",) + MODEL_IMPORTS, work)
            st.note = "; ".join(w.note for w in tasks if w.note)
            if mode == "elrea":
                # gs.evaluation.routed_model routes every request's prompt by its warm-up-adapter gradient.
                gb, gt = int(inf["gradient_batch_size"]), int(inf["gradient_max_length"])
                prompts = sum(w.requests for w in tasks)
                work.append(self._gradients(c["gradients"]["warmup"]["lora"], gb, gt, dtype, _ceil(prompts, gb)))
                proj = c["gradients"]["projection"]
                st.host_extra = {
                    "ELREA features": host.F32 * self.n_pool * int(proj["elrea_dim"]),
                    "projector": host.projector_bytes(
                        proj.get("kind", "sparse"), work[-1].trace.lora_dim, int(proj["elrea_dim"]), self.run_on
                    ),
                }
            if mode == "single":
                st.host_extra = self._encoder_bytes(0)
            if folder_read:
                st.host_extra["prepared folder read for the cast"] = folder_read
            if any(w.fluency for w in tasks) and ev.get("fluency", True) and self.run_on == "cpu" and cast:
                # gs.evaluation.fluency.fluency_scores loads the base model again after lm-eval; on the CPU, when the
                # weights are cast, the routed model's freed pages stay with the process (measured on the
                # default in bfloat16: RSS 1370 -> 2067 MiB during that load), so its weights and its folder
                # read come on top. Loaded in the folder's own dtype, the weights stay memory-mapped views of
                # the safetensors file and a reload maps the same pages (measured, float32: RSS 411 MiB after
                # the first load, 397 freed, 411 after the second). On a GPU the weights go to the device,
                # where the routed model's were released (torch.cuda.empty_cache).
                st.host_extra["fluency: base model loaded again"] = self._n_params() * resolve_dtype(dtype).itemsize
                if folder_read:
                    st.host_extra["fluency: its prepared folder read"] = folder_read
            out.append(st)
        return out

    def _systems(self, mode: str) -> list[str]:
        c = self.config
        if mode in ("base", "multitask"):
            return [mode]
        return [f"{m}-{mode}" for m in c["cluster"]["methods"] if mode in c["evaluation"]["modes"].get(m, ["single"])]

    def _latency(self) -> Stage:
        lat = self.config["latency"]
        n = max(int(x) for x in lat["n_experts"])
        b, new = int(lat.get("throughput_batch", 1)), int(lat["max_new_tokens"])
        dtype = _dtype(lat, self.config, self.auto_dtype)
        dec = self.trace(("decode", b, new, n), dtype, lat["lora"], decode_step(b, self.prompt, new, n), n + 1)
        repeats = int(lat.get("repeats", 1))
        # Per n: base, single (1 forward a token), uniform (n), ELREA (top_m <= n): about n + 3 streams,
        # at batch 1 and at the throughput batch, each repeated; counted at the largest batch.
        steps = repeats * 2 * new * sum(int(x) + 3 for x in lat["n_experts"]) / n
        work = [Work(dec, {"decode": steps, "prefill": steps / new * self.prompt / (self.prompt + new - 1)}, dtype)]
        st = Stage("latency", "latency", ["latency"], ("gs.evaluation.latency",) + MODEL_IMPORTS, work)
        modes = lat.get("modes", ["base", "single", "uniform", "elrea"])
        if "elrea" in modes:
            # ELREA routes each prompt by its warm-up-adapter gradient (gs.evaluation.routing.elrea_prompt_features at
            # gs.evaluation.routed_model's gradient batch, prompts cut to gradient_max_length), projected to
            # projection_dim by a sparse projector (gs.evaluation.latency.make_synthetic_elrea): measured on the
            # default, the job's peak (about 570 MiB over the decoding modes').
            inf = {"gradient_batch_size": 4, "gradient_max_length": 512, **lat.get("inference", {})}
            gb, gt = int(inf["gradient_batch_size"]), min(int(inf["gradient_max_length"]), self.prompt)
            # gs.evaluation.latency.time_generation, per n: a warm-up and `repeats` calls at batch 1, then at the
            # throughput batch
            calls = len(lat["n_experts"]) * (1 + repeats) * (1 + _ceil(b, gb))
            work.append(self._gradients(lat.get("warmup_lora") or lat["lora"], gb, gt, dtype, calls))
            st.host_extra["ELREA projector"] = host.projector_bytes(
                "sparse", work[-1].trace.lora_dim, int(lat.get("projection_dim", 256)), self.run_on
            )
        if "single" in modes:
            st.host_extra.update(self._encoder_bytes(0))
        from gs.models.load import resolve_dtype
        from gs.models.prepare import stored_dtype

        folder_dtype = resolve_dtype(stored_dtype(self.config["model"]))
        if self.run_on == "cpu" and folder_dtype != resolve_dtype(dtype):
            # As in the evaluation: gs.evaluation.latency.make_synthetic_suite loads the prepared folder in its own
            # dtype (memory-mapped pages) and RoutedLM casts those pages to the latency's dtype; the pages stay in the
            # process's resident set (measured on the default in bfloat16: 1766 MiB against 1124 planned without them).
            st.host_extra["prepared folder read for the cast"] = self._n_params() * folder_dtype.itemsize
        return st
