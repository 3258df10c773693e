"""What a system is scored on: the config's targets as lm-eval task specs, and the per-run task folder.

A *target* (config ``targets.<name>``) lists the lm-eval tasks it is scored on. A task is either one
lm-eval ships (``mmlu``, ``bbh_cot_fewshot``, ``gsm8k_cot``, ``humaneval``: a task or a group) or a
YAML in ``gs/lm_eval_tasks/`` (the suite's own tasks and the tasks lm-eval lacks, such as TydiQA
GoldP). Per task a target may set::

    task: <name>                      # required
    data: {part: <part>, split: <s>}  # a suite task's data: results/data/<part>/<s>.jsonl
    dataset_path: <folder>            # an lm-eval task pointed at a local copy in its hub layout
    dataset_kwargs: {...}             # merged into the task's dataset_kwargs (tydiqa_goldp: data_dir)
    num_fewshot: <int>                # the reference's shot count (lm-eval's own default otherwise)
    max_gen_toks: <int>               # generation limit, overriding the task's YAML
    metric: <name>                    # the primary metric (default: the task's first)
    fluency: true                     # also score the generations' fluency under the base model

:func:`write_task_dir` writes per-run YAMLs into an lm-eval ``include_path``: each ``include:``s the
task's own YAML by absolute path (so its ``!function`` hooks and includes resolve next to it) and
overrides only what the spec sets. lm-eval's index puts an ``include_path`` after its own tasks, so a
per-run YAML replaces lm-eval's task of the same name and results keep the task's own name.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gs.io import InputError

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).resolve().parents[1] / "lm_eval_tasks"
#: Keys a target's task entry may have.
TASK_KEYS = ("task", "data", "dataset_path", "dataset_kwargs", "num_fewshot", "max_gen_toks", "metric", "fluency")
#: Keys of a target (``targets.<name>``).
TARGET_KEYS = ("tasks", "validation", "description")


@dataclass(frozen=True)
class TaskSpec:
    """One task a target is scored on (see the module docstring). ``part`` and ``split`` name the prepared
    file a suite task reads (:attr:`data`), both ``None`` for a task that reads its own dataset."""

    target: str
    task: str
    part: str | None = None
    split: str | None = None
    dataset_path: str | None = None
    dataset_kwargs: tuple[tuple[str, Any], ...] = ()
    num_fewshot: int | None = None
    max_gen_toks: int | None = None
    metric: str | None = None
    fluency: bool = False

    @property
    def data(self) -> str | None:
        """The prepared file, ``"<part>/<split>.jsonl"`` relative to the data folder, or ``None``."""
        return None if self.part is None else f"{self.part}/{self.split}.jsonl"

    @property
    def suite(self) -> bool:
        """Whether the task is a YAML of ``gs/lm_eval_tasks/`` rather than one lm-eval ships."""
        return self.task in suite_tasks()


class _TaskYamlLoader(yaml.SafeLoader):
    """Reads task YAMLs without importing their ``!function`` hooks."""


_TaskYamlLoader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")
_TaskYamlLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _load_yaml(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=_TaskYamlLoader) or {}  # noqa: S506 - a SafeLoader subclass


def suite_tasks() -> dict[str, Path]:
    """The suite's task YAMLs: ``{task name: path}`` for every YAML in ``gs/lm_eval_tasks/`` with a ``task:``
    (read once a process per folder: every spec check asks; do not modify the mapping)."""
    return _task_index(TASKS_DIR)


@functools.cache
def _task_index(folder: Path) -> dict[str, Path]:
    tasks = {}
    for path in sorted(folder.glob("*.yaml")):
        name = _load_yaml(path).get("task")
        if isinstance(name, str):
            tasks[name] = path
    return tasks


def read_task_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A task YAML with its ``include:`` chain merged (lm-eval merges shallowly: the including file wins)."""
    path = Path(path)
    cfg = _load_yaml(path)
    base = cfg.pop("include", None)
    if base is None:
        return cfg
    parent = Path(base) if Path(base).is_absolute() else path.parent / base
    return {**read_task_yaml(parent), **cfg}


def _positive(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (value == 0 and what != "num_fewshot"):
        raise InputError(
            f"{what} must be a {'non-negative' if what == 'num_fewshot' else 'positive'} integer, got {value!r}"
        )
    return value


def _task_spec(target: str, entry: Any) -> TaskSpec:
    where = f"targets.{target}.tasks"
    if isinstance(entry, str):
        entry = {"task": entry}
    if not isinstance(entry, Mapping) or not isinstance(entry.get("task"), str) or not entry["task"]:
        raise InputError(f"{where}: each entry needs a task name ('task: <lm-eval task>'), got {entry!r}")
    unknown = sorted(set(entry) - set(TASK_KEYS))
    if unknown:
        raise InputError(
            f"{where}: task {entry['task']!r} has unknown key(s) {unknown}; expected {', '.join(TASK_KEYS)}"
        )
    data = entry.get("data")
    if data is not None:
        if not isinstance(data, Mapping) or set(data) != {"part", "split"}:
            raise InputError(
                f"{where}: task {entry['task']!r}: data must be {{part: <part>, split: <split>}}, got {data!r}"
            )
    kwargs = entry.get("dataset_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise InputError(f"{where}: task {entry['task']!r}: dataset_kwargs must be a mapping, got {kwargs!r}")
    fluency = entry.get("fluency", False)
    if not isinstance(fluency, bool):
        raise InputError(f"{where}: task {entry['task']!r}: fluency must be true or false, got {fluency!r}")
    return TaskSpec(
        target=target,
        task=entry["task"],
        part=None if data is None else str(data["part"]),
        split=None if data is None else str(data["split"]),
        dataset_path=None if entry.get("dataset_path") is None else str(entry["dataset_path"]),
        dataset_kwargs=tuple(sorted(kwargs.items())),
        num_fewshot=_positive(entry.get("num_fewshot"), "num_fewshot"),
        max_gen_toks=_positive(entry.get("max_gen_toks"), "max_gen_toks"),
        metric=entry.get("metric"),
        fluency=fluency,
    )


def task_specs(targets: Mapping[str, Any], names: Sequence[str] | None = None) -> list[TaskSpec]:
    """The task specs of ``targets`` (the config's ``targets`` section), or of the targets ``names``.

    Raises :class:`InputError` (one line) for a target without tasks, a malformed entry, a suite task
    without ``data`` (or an lm-eval task with it), or one task named by two targets.
    """
    if not isinstance(targets, Mapping) or not targets:
        raise InputError("targets: expected a mapping of target names to their tasks")
    names = list(targets) if names is None else list(names)
    specs: list[TaskSpec] = []
    owner: dict[str, str] = {}
    suite = suite_tasks()
    for name in names:
        if name not in targets:
            raise InputError(f"unknown target {name!r}; expected one of {', '.join(targets)}")
        target = targets[name]
        if not isinstance(target, Mapping) or not target.get("tasks"):
            raise InputError(f"targets.{name}: no tasks (expected 'tasks: [<lm-eval task>, ...]')")
        for entry in target["tasks"]:
            spec = _task_spec(name, entry)
            reads_prepared = (
                read_task_yaml(suite[spec.task]).get("dataset_path") == "json" if spec.task in suite else False
            )
            if reads_prepared and spec.data is None:
                raise InputError(f"targets.{name}: suite task {spec.task!r} needs 'data: {{part: ..., split: ...}}'")
            if not reads_prepared and spec.data is not None:
                raise InputError(
                    f"targets.{name}: task {spec.task!r} reads its own dataset, not a prepared split; point it at a "
                    "local copy with 'dataset_path' or 'dataset_kwargs', not 'data'"
                )
            if spec.task in owner:
                raise InputError(
                    f"task {spec.task!r} is named by targets {owner[spec.task]!r} and {name!r}; a task "
                    "scores one target"
                )
            owner[spec.task] = name
            specs.append(spec)
    return specs


def check_known(specs: Sequence[TaskSpec], known: Sequence[str], groups: Sequence[str] = ()) -> None:
    """Every lm-eval task of ``specs`` is in ``known`` (lm-eval's index); overrides name a task, not a group."""
    known_set, group_set = set(known), set(groups)
    for spec in specs:
        if spec.suite:
            continue
        if spec.task not in known_set:
            raise InputError(
                f"targets.{spec.target}: unknown lm-eval task {spec.task!r} (neither lm-eval's own task or group nor "
                f"a YAML in {TASKS_DIR})"
            )
        if spec.task in group_set and (spec.dataset_path or spec.dataset_kwargs or spec.max_gen_toks):
            raise InputError(
                f"targets.{spec.target}: {spec.task!r} is an lm-eval group; dataset_path, dataset_kwargs and "
                "max_gen_toks apply to its tasks: name them instead"
            )


def task_yaml_path(spec: TaskSpec, index: Mapping[str, Any] | None = None) -> Path:
    """The YAML defining ``spec.task``: the suite's, else lm-eval's (``index``: name -> entry with ``yaml_path``)."""
    if spec.suite:
        return suite_tasks()[spec.task]
    entry = (index or {}).get(spec.task)
    path = getattr(entry, "yaml_path", None)
    if path is None:
        raise InputError(f"targets.{spec.target}: lm-eval task {spec.task!r} has no YAML to override")
    return Path(path)


def task_config(spec: TaskSpec, index: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The task's YAML settings with includes merged (hooks as strings); ``{}`` for an lm-eval group."""
    if not spec.suite and getattr((index or {}).get(spec.task), "yaml_path", None) is None:
        return {}
    return read_task_yaml(task_yaml_path(spec, index))


def write_task_dir(
    specs: Sequence[TaskSpec],
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    index: Mapping[str, Any] | None = None,
) -> Path:
    """Write per-run task YAMLs into ``out_dir`` (an lm-eval ``include_path``); return it.

    A suite task gets ``dataset_kwargs.data_files.test`` = the absolute path of ``<data_dir>/<spec.data>``;
    a task with ``dataset_path`` gets that (absolute), and for a local folder ``dataset_kwargs.cache_dir`` =
    ``<out_dir>/.datasets_cache`` (``datasets`` would otherwise answer from a cache of any folder of the
    same name); ``max_gen_toks`` overrides the whole
    ``generation_kwargs`` dict (lm-eval merges includes shallowly). ``index``: lm-eval's task index, for
    the YAML of an lm-eval task that is overridden. An lm-eval task with nothing to override gets no file
    (lm-eval's index has it); a suite task always gets one (the index of a run is this folder and lm-eval's).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(data_dir).resolve()
    for spec in specs:
        overrides: dict[str, Any] = {}
        if spec.dataset_kwargs:
            kwargs = dict(task_config(spec, index).get("dataset_kwargs") or {})
            overrides["dataset_kwargs"] = {**kwargs, **dict(spec.dataset_kwargs)}
        if spec.data is not None:
            overrides.setdefault("dataset_kwargs", {})["data_files"] = {"test": str(data / spec.data)}
        if spec.dataset_path is not None:
            overrides["dataset_path"] = str(Path(spec.dataset_path).resolve())
            if Path(spec.dataset_path).is_dir():
                # datasets (5.x) caches a local hub-layout folder under its name, config and file patterns,
                # not its contents or location: a cache of this run's own keeps another folder of the same
                # name (or this one before an edit) from answering for it.
                kwargs = overrides.setdefault(
                    "dataset_kwargs", dict(task_config(spec, index).get("dataset_kwargs") or {})
                )
                kwargs.setdefault("cache_dir", str((out / ".datasets_cache").resolve()))
        if spec.max_gen_toks is not None:
            generation = task_config(spec, index).get("generation_kwargs") or {}
            overrides["generation_kwargs"] = {**generation, "max_gen_toks": spec.max_gen_toks}
        if not overrides and not spec.suite:
            continue  # lm-eval's own task, as lm-eval defines it
        cfg = {"include": str(task_yaml_path(spec, index).resolve()), "task": spec.task, **overrides}
        (out / f"{spec.task}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return out
