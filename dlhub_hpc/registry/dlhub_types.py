"""DLHub's argument types <-> ours, both ways, with the field path in every error.

On import: ``ndarray`` ``item_type`` ({"type": "float"}) becomes our ``dtype`` family
(float, integer, boolean, complex; other item types leave the dtype free); ``complex``,
``timedelta`` and ``datetime`` values are not checked (``any``); ``file_types`` are dropped.
On export every type is one DLHub's schema has: ``any``, ``bytes`` and containers without
their item types become ``python object``; numpy dtypes become an ``item_type``. The exact
types travel in the record's ``dlhub_hpc`` block.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from dlhub_hpc.errors import RecordError
from dlhub_hpc.servable.types import ArgType

logger = logging.getLogger(__name__)

MAX_DEPTH = 32  # nesting of item/element/property types a record may have
DLHUB_TYPES = ("number", "ndarray", "string", "python object", "boolean", "integer", "float",
               "complex", "timedelta", "datetime", "list", "dict", "tuple", "file")
_UNCHECKED = ("complex", "timedelta", "datetime")
_FAMILIES = ("float", "integer", "boolean", "complex")


def record_error(field: str, problem: str, fix: str) -> RecordError:
    return RecordError(f"{field}: {problem}; {fix}", field=field)


def arg_in(data: Any, path: str, depth: int = 0) -> dict[str, Any]:
    """Our type declaration of DLHub's ``data`` found at ``path``."""
    if depth > MAX_DEPTH:
        raise record_error(path, f"types nest deeper than {MAX_DEPTH} levels",
                           "declare the inner part as 'python object'")
    if isinstance(data, str):  # the SDK's shorthand: item_type="float"
        data = {"type": data}
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise record_error(path, "a type should be an object with a 'type' string",
                           f"use one of {', '.join(DLHUB_TYPES)}")
    kind = data["type"]
    if kind not in DLHUB_TYPES:
        raise record_error(f"{path}.type", f"{kind!r} is not one of DLHub's types",
                           f"use one of {', '.join(DLHUB_TYPES)}")
    out: dict[str, Any] = {"type": "any" if kind in _UNCHECKED else kind}
    if isinstance(data.get("description"), str) and data["description"]:
        out["description"] = data["description"]
    if kind == "ndarray":
        out.update(_ndarray_in(data, path))
    elif kind == "list" and data.get("item_type") is not None:
        out["item_type"] = arg_in(data["item_type"], f"{path}.item_type", depth + 1)
    elif kind == "tuple" and data.get("element_types") is not None:
        out["element_types"] = [arg_in(e, f"{path}.element_types[{i}]", depth + 1)
                                for i, e in enumerate(_list(data["element_types"],
                                                            f"{path}.element_types"))]
    elif kind == "dict" and data.get("properties") is not None:
        props = data["properties"]
        if not isinstance(props, dict):
            raise record_error(f"{path}.properties", "should be an object of key -> type",
                               "give each key's type")
        out["properties"] = {str(k): arg_in(v, f"{path}.properties.{k}", depth + 1)
                             for k, v in props.items()}
    elif kind == "python object" and isinstance(data.get("python_type"), str):
        out["python_type"] = data["python_type"]
    return out


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise record_error(path, f"should be a list, got {type(value).__name__}",
                           "give a JSON array")
    return value


def _ndarray_in(data: dict[str, Any], path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    shape = data.get("shape")
    if shape is not None:
        for i, d in enumerate(_list(shape, f"{path}.shape")):
            if d is not None and (not isinstance(d, int) or isinstance(d, bool) or d < 0):
                raise record_error(f"{path}.shape[{i}]", f"{d!r} is not a dimension",
                                   "use a non-negative integer, or null for any size")
        out["shape"] = list(shape)
    item = data.get("item_type")
    if isinstance(item, str):
        item = {"type": item}
    if isinstance(item, dict) and item.get("type") in _FAMILIES:
        out["dtype"] = item["type"]
    elif item is not None and not isinstance(item, dict):
        raise record_error(f"{path}.item_type", "should be an object such as "
                           '{"type": "float"}', "give the element type")
    return out


def _family(dtype: str) -> str | None:
    if dtype in _FAMILIES:
        return dtype
    kind = np.dtype(dtype).kind
    return {"f": "float", "i": "integer", "u": "integer", "b": "boolean",
            "c": "complex"}.get(kind)


def _opaque(python_type: str, t: ArgType) -> dict[str, Any]:
    out = {"type": "python object", "python_type": python_type}
    return out | ({"description": t.description} if t.description else {})


def arg_out(t: ArgType, nested: bool = False) -> dict[str, Any]:
    """DLHub's declaration of our type ``t`` (valid against DLHub's argument_type schema)."""
    if t.type in ("any", "bytes"):
        return _opaque("object" if t.type == "any" else "bytes", t)
    if t.type == "file":
        return _opaque("str", t) if nested else {"type": "file"}
    if (t.type == "list" and t.item_type is None) or (t.type == "tuple" and t.element_types
                                                     is None) or (t.type == "dict" and
                                                                  t.properties is None):
        return _opaque("list" if t.type == "tuple" else t.type, t)
    out: dict[str, Any] = {"type": t.type}
    if t.description:
        out["description"] = t.description
    if t.type == "ndarray":
        out["shape"] = [] if t.shape is None else [d if d else None for d in t.shape]
        family = _family(t.dtype) if t.dtype else None
        if family:
            out["item_type"] = {"type": family}
    elif t.type == "list" and t.item_type is not None:
        out["item_type"] = arg_out(t.item_type, nested=True)
    elif t.type == "tuple" and t.element_types is not None:
        out["element_types"] = [arg_out(e, nested=True) for e in t.element_types]
    elif t.type == "dict" and t.properties is not None:
        out["properties"] = {k: arg_out(v, nested=True) for k, v in t.properties.items()}
    elif t.type == "python object":
        out["python_type"] = t.python_type or "object"
    return out
