"""The suite's lm-eval tasks (``gs/lm_eval_tasks/``) and the per-run task folders that point them at
a data folder.

The packaged YAMLs read ``results/data/<domain>/{test,reference}.jsonl`` relative to the workflow
root; :func:`write_task_dir` writes per-run YAMLs that ``include:`` them and point at absolute paths
under any data folder. Groups: ``gs_all`` (generation) and ``gs_likelihood`` (bits per byte).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from gs.data.prepare import DOMAINS
from gs.io import InputError

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).resolve().parents[1] / "lm_eval_tasks"


GENERATION_TASKS = {f"gs_{d}": d for d in DOMAINS}


LIKELIHOOD_TASKS = {f"gs_{d}_likelihood": d for d in DOMAINS}


TASK_DOMAINS = {**GENERATION_TASKS, **LIKELIHOOD_TASKS}


#: The data file (``<data_dir>/<domain>/<split>.jsonl``) each task reads.
TASK_SPLIT = {**dict.fromkeys(GENERATION_TASKS, "test"), **dict.fromkeys(LIKELIHOOD_TASKS, "reference")}


GROUPS = {"gs_all": tuple(GENERATION_TASKS), "gs_likelihood": tuple(LIKELIHOOD_TASKS)}


class _TaskYamlLoader(yaml.SafeLoader):
    """Reads the packaged task YAMLs without importing their ``!function`` hooks."""


_TaskYamlLoader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def read_task_yaml(task: str) -> dict[str, Any]:
    """The packaged YAML of ``task`` (its own keys, includes not merged; hooks as ``"!function ..."``)."""
    path = TASKS_DIR / f"{task}.yaml"
    if not path.is_file():
        raise InputError(f"unknown task {task!r}; expected one of {', '.join([*TASK_DOMAINS, *GROUPS])}")
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=_TaskYamlLoader)  # noqa: S506 - a SafeLoader subclass


def expand_tasks(tasks: Sequence[str]) -> list[str]:
    """The leaf tasks of ``tasks`` (groups expanded), in order, without repeats."""
    if not tasks:
        raise InputError("no tasks given")
    leaves: list[str] = []
    for task in tasks:
        if task in GROUPS:
            names = GROUPS[task]
        elif task in TASK_DOMAINS:
            names = (task,)
        else:
            raise InputError(f"unknown task {task!r}; expected one of {', '.join([*TASK_DOMAINS, *GROUPS])}")
        leaves += [n for n in names if n not in leaves]
    return leaves


def _max_gen_toks_for(setting: Any, task: str) -> int | None:
    """``max_gen_toks`` from params: one int for all tasks, or per task (``gs_math``) or domain (``math``)."""
    if setting is None:
        return None
    if isinstance(setting, dict):
        value = setting.get(task, setting.get(TASK_DOMAINS[task]))
    else:
        value = setting
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"max_gen_toks for {task} must be a positive integer, got {value!r}")
    return value


def write_task_dir(data_dir: str | os.PathLike, out_dir: str | os.PathLike, *, max_gen_toks: Any = None) -> Path:
    """Write per-run task YAMLs into ``out_dir`` (an lm-eval ``include_path``); return it.

    Each task's YAML there ``include:``s the packaged task (absolute path, so its ``!function``
    hooks still resolve next to it) and overrides ``dataset_kwargs`` with the absolute path of
    ``<data_dir>/<domain>/<split>.jsonl`` (:data:`TASK_SPLIT`); with ``max_gen_toks`` (an int, or a
    dict by task or domain) a generation task also overrides ``generation_kwargs`` (lm-eval merges
    includes shallowly, so the whole dict is written). The groups are copied.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(data_dir).resolve()
    for task, domain in TASK_DOMAINS.items():
        packaged = TASKS_DIR / f"{task}.yaml"
        cfg: dict[str, Any] = {
            "include": str(packaged.resolve()),
            "dataset_kwargs": {"data_files": {"test": str(data / domain / f"{TASK_SPLIT[task]}.jsonl")}},
        }
        limit = _max_gen_toks_for(max_gen_toks, task) if task in GENERATION_TASKS else None
        if limit is not None:
            cfg["generation_kwargs"] = {**read_task_yaml(task)["generation_kwargs"], "max_gen_toks": limit}
        (out / f"{task}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    for group in GROUPS:
        shutil.copyfile(TASKS_DIR / f"{group}.yaml", out / f"{group}.yaml")
    return out
