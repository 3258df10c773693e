"""The configuration reference: docs/configuration.md is what docs/make_configuration.py makes of
config/schema.yaml, and every key in the schema says what it does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "config" / "schema.yaml"
GENERATOR = ROOT / "docs" / "make_configuration.py"
PAGE = ROOT / "docs" / "configuration.md"
# Subschemas that declare keys or values; if/then/else only restate keys as conditions.
CHILD_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
CHILD_SCHEMAS = ("additionalProperties", "items", "propertyNames", "not")


def declared_properties(node: Any, path: str) -> list[tuple[str, Any]]:
    """Every (dotted path, schema) under ``properties`` anywhere in ``node``, except in if/then/else."""
    found: list[tuple[str, Any]] = []
    if not isinstance(node, dict):
        return found
    for key, child in (node.get("properties") or {}).items():
        child_path = f"{path}.{key}" if path else key
        found.append((child_path, child))
        found += declared_properties(child, child_path)
    for key in CHILD_SCHEMAS:
        if isinstance(node.get(key), dict):
            found += declared_properties(node[key], f"{path}.<{key}>")
    for key in CHILD_LISTS:
        for i, option in enumerate(node.get(key) or []):
            found += declared_properties(option, f"{path}.<{key}[{i}]>")
    return found


def test_configuration_page_is_generated_from_the_schema(tmp_path):
    out = tmp_path / "configuration.md"
    subprocess.run([sys.executable, str(GENERATOR), "--out", str(out)], check=True, cwd=tmp_path, capture_output=True)
    assert out.read_text(encoding="utf-8") == PAGE.read_text(encoding="utf-8"), (
        "docs/configuration.md is out of date with config/schema.yaml: "
        "regenerate with `python docs/make_configuration.py`"
    )


def test_every_schema_property_has_a_description():
    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    found = declared_properties(schema, "")
    for name, definition in (schema.get("$defs") or {}).items():
        found.append((f"$defs.{name}", definition))
        found += declared_properties(definition, f"$defs.{name}")
    assert len(found) > 100, f"only {len(found)} properties found: is the walk still right?"
    missing = [
        path
        for path, node in found
        if not (isinstance(node, dict) and isinstance(node.get("description"), str) and node["description"].strip())
    ]
    assert not missing, f"config/schema.yaml: properties without a description: {', '.join(missing)}"
