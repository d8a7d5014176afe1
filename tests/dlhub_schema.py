"""DLHub's published schemas (tests/data/dlhub/schema, see SOURCES.md there) as validators."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

SCHEMA_DIR = Path(__file__).parent / "data" / "dlhub" / "schema"
DLHUB_DATA = SCHEMA_DIR.parent
BASE = "https://schemas.dlhub.example/"


def _fixed_refs(node: Any) -> Any:
    # argument_type.json writes "#definitions/x" for "#/definitions/x" (DLHub's own validator
    # resolved both); the schema is otherwise used as published.
    if isinstance(node, dict):
        return {k: (v.replace("#definitions/", "#/definitions/") if k == "$ref" else
                    _fixed_refs(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_fixed_refs(v) for v in node]
    return node


@cache
def validator(kind: str = "servable") -> jsonschema.protocols.Validator:
    resources = [
        (BASE + f.relative_to(SCHEMA_DIR).as_posix(),
         Resource.from_contents(_fixed_refs(json.loads(f.read_text())),
                                default_specification=DRAFT7))
        for f in SCHEMA_DIR.rglob("*.json")
    ]
    registry = Registry().with_resources(resources)
    schema = registry.contents(BASE + f"{kind}.json")
    return jsonschema.Draft7Validator({"$ref": BASE + f"{kind}.json"} | {
        k: v for k, v in schema.items() if k == "$schema"}, registry=registry)


def errors(record: dict[str, Any]) -> list[str]:
    kind = "pipeline" if "pipeline" in record else "servable"
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator(kind).iter_errors(record)]


def real_records() -> list[Path]:
    return sorted((DLHUB_DATA / "sdk").glob("*.json")) + sorted(
        (DLHUB_DATA / "public").glob("*.json"))
