"""The resources a run gives each rule: the rule's own ``resources:``/``threads:`` as Snakemake
evaluates them, then the profile's ``default-resources`` (for what the rule leaves unset) and
``set-resources``/``set-threads`` (which win), as Snakemake applies a profile."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gs.io import InputError


@dataclass
class RuleResources:
    """``mem_mb`` (MB), ``runtime`` (minutes), ``gpu`` (count), ``threads``; None when nothing sets them."""

    mem_mb: float | None = None
    runtime: float | None = None
    gpu: int = 0
    threads: int = 1


def _number(value: Any) -> float | None:
    """A resource value at the first attempt: a number, a profile expression such as
    ``"16000 * attempt"`` or a rule's ``lambda wildcards, attempt: ...``; None when it is none of these."""
    if callable(value):
        try:
            value = value({}, 1)
        except Exception:  # a resource that needs a job's input or threads: not known before the run
            return None
    if isinstance(value, str):
        try:
            value = eval(value, {"__builtins__": {}}, {"attempt": 1})  # Snakemake's profile expressions
        except Exception:
            return None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _raw(resource: Any) -> Any:
    """A Snakemake ``Resource``'s value, or its function when it is evaluated per job."""
    evaluator = getattr(resource, "_evaluator", None)
    if evaluator is not None:
        return evaluator
    return getattr(resource, "value", resource)


def workflow_resources(snakefile: str | Path, configfile: str | Path, cores: int = 2) -> dict[str, dict[str, Any]]:
    """Per rule, its declared resources (plain numbers only) and ``_threads``, read by loading the
    workflow through Snakemake's API with ``configfile`` (nothing is run)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (
        ConfigSettings,
        OutputSettings,
        ResourceSettings,
        StorageSettings,
        WorkflowSettings,
    )

    out: dict[str, dict[str, Any]] = {}
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(cores=cores),
            config_settings=ConfigSettings(configfiles=[Path(configfile)]),
            storage_settings=StorageSettings(),
            workflow_settings=WorkflowSettings(),
            snakefile=Path(snakefile),
        )._workflow
        for rule in workflow.rules:
            values = {k: _number(_raw(v)) for k, v in rule.resources.items() if not k.startswith("_")}
            threads = _number(_raw(rule.resources.get("_cores") or 1))
            out[rule.name] = {k: v for k, v in values.items() if v is not None}
            out[rule.name]["_threads"] = int(threads) if threads is not None else 1
    return out


def read_profile(path: str | Path | None) -> dict[str, Any]:
    """A Snakemake profile's ``config.yaml`` (a folder or the file); ``{}`` for None."""
    if path is None:
        return {}
    p = Path(path)
    p = p / "config.yaml" if p.is_dir() else p
    if not p.is_file():
        raise InputError(f"plan.profile: {p} not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise InputError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{p}: a profile is a YAML mapping")
    return data


def _as_mapping(value: Any, where: str) -> dict[str, Any]:
    """Profile resources are a mapping or a list of ``key=value`` strings (both Snakemake forms)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    if isinstance(value, list):
        out = {}
        for item in value:
            key, sep, val = str(item).partition("=")
            if not sep:
                raise InputError(f"profile {where}: expected key=value, got {item!r}")
            out[key.strip()] = yaml.safe_load(val)
        return out
    raise InputError(f"profile {where}: expected a mapping or a list, got {type(value).__name__}")


def rule_resources(rule: str, declared: dict[str, Any], profile: dict[str, Any]) -> RuleResources:
    """What ``rule`` gets: profile defaults, then the rule's own resources, then the profile's
    ``set-resources``/``set-threads`` for it."""
    merged = dict(_as_mapping(profile.get("default-resources"), "default-resources"))
    merged.update({k: v for k, v in declared.items() if not k.startswith("_")})
    merged.update(_as_mapping(_as_mapping(profile.get("set-resources"), "set-resources").get(rule), rule))
    threads = _as_mapping(profile.get("set-threads"), "set-threads").get(rule, declared.get("_threads", 1))
    return RuleResources(
        mem_mb=_number(merged.get("mem_mb")),
        runtime=_number(merged.get("runtime")),
        gpu=int(_number(merged.get("gpu")) or 0),
        threads=int(threads),
    )
