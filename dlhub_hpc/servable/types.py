"""Declared input and output types of servable methods, and the check of a value against one.

The names follow DLHub's servable schema (``number``, ``integer``, ``float``, ``boolean``,
``string``, ``ndarray``, ``list``, ``dict``, ``tuple``, ``file``, ``python object``, plus
``bytes`` and ``any``). A check returns the value,
coerced where that is lossless and expected (a nested list for an ``ndarray`` input, an
integer for a ``float``), or raises ``InvalidInput`` naming the path and what to send.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from dlhub_hpc.errors import InvalidInput

logger = logging.getLogger(__name__)

TypeName = Literal[
    "any", "string", "number", "integer", "float", "boolean", "list", "tuple", "dict",
    "ndarray", "bytes", "file", "python object",
]

# numpy dtype kinds accepted for each declared ndarray dtype family
_DTYPE_KINDS = {"float": "fiub", "integer": "iub", "boolean": "b", "complex": "fiubc"}


class ArgType(BaseModel):
    """One declared type, e.g. ``{"type": "ndarray", "shape": [null, 4], "dtype": "float"}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: TypeName
    description: str = ""
    item_type: ArgType | None = None
    element_types: list[ArgType] | None = None
    properties: dict[str, ArgType] | None = None
    shape: list[int | None] | None = None
    dtype: str | None = None
    python_type: str | None = None  # "python object": 'module.Class', documentation only

    @model_validator(mode="after")
    def _options_fit_type(self) -> ArgType:
        if self.shape is not None and self.type != "ndarray":
            raise ValueError("'shape' is only for type ndarray")
        if self.dtype is not None:
            if self.type != "ndarray":
                raise ValueError("'dtype' is only for type ndarray")
            if self.dtype not in _DTYPE_KINDS:
                try:
                    np.dtype(self.dtype)
                except TypeError:
                    families = ", ".join(_DTYPE_KINDS)
                    raise ValueError(
                        f"unknown dtype {self.dtype!r}; use a numpy dtype name or one of "
                        f"{families}"
                    ) from None
        if self.item_type is not None and self.type != "list":
            raise ValueError("'item_type' is only for type list")
        if self.element_types is not None and self.type != "tuple":
            raise ValueError("'element_types' is only for type tuple")
        if self.properties is not None and self.type != "dict":
            raise ValueError("'properties' is only for type dict")
        if self.python_type is not None and self.type != "python object":
            raise ValueError("'python_type' is only for type 'python object'")
        return self

    def describe(self) -> str:
        if self.type == "ndarray":
            shape = "" if self.shape is None else f" shape={self.shape}"
            dtype = "" if self.dtype is None else f" dtype={self.dtype}"
            return f"ndarray{shape}{dtype}"
        if self.type == "list" and self.item_type is not None:
            return f"list of {self.item_type.describe()}"
        if self.type == "python object" and self.python_type:
            return f"python object {self.python_type}"
        return self.type


def _fail(path: str, expected: ArgType, value: Any, why: str = "") -> InvalidInput:
    got = type(value).__name__
    if isinstance(value, np.ndarray):
        got = f"ndarray shape={list(value.shape)} dtype={value.dtype}"
    reason = f": {why}" if why else ""
    return InvalidInput(
        f"{path} should be {expected.describe()}, got {got}{reason}",
        path=path,
        expected=expected.describe(),
        got=got,
    )


def _check_ndarray(t: ArgType, value: Any, path: str) -> Any:
    if not isinstance(value, np.ndarray):
        if not isinstance(value, list | tuple | int | float | bool):
            raise _fail(path, t, value)
        try:
            value = np.asarray(value)  # then the same casting rules as for arrays
        except (ValueError, TypeError) as exc:
            raise _fail(path, t, value, str(exc)) from exc
        if value.dtype.hasobject:
            raise _fail(path, t, value, "ragged or mixed nested lists")
    if t.dtype in _DTYPE_KINDS:
        if value.dtype.kind not in _DTYPE_KINDS[t.dtype]:
            raise _fail(path, t, value, f"dtype {value.dtype} is not {t.dtype}")
    elif t.dtype is not None and value.dtype != np.dtype(t.dtype):
        if not np.can_cast(value.dtype, t.dtype, casting="same_kind"):
            raise _fail(path, t, value, f"dtype {value.dtype} cannot be cast to {t.dtype}")
        value = value.astype(t.dtype)
    if t.shape is not None and (
        value.ndim != len(t.shape)
        or any(w is not None and w != g for w, g in zip(t.shape, value.shape, strict=True))
    ):
        raise _shape_error(path, t.shape, list(value.shape))
    return value


def _shape_text(shape: list[int | None]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _shape_error(path: str, declared: list[int | None], actual: list[int | None]) -> InvalidInput:
    want, got = _shape_text(declared), _shape_text(actual)
    return InvalidInput(
        f"{path}.shape: expected {want}, got {got} (None is a free dimension)",
        path=f"{path}.shape", expected=want, got=got,
    )


def _check_list(t: ArgType, value: Any, path: str) -> Any:
    if not isinstance(value, list | tuple):
        raise _fail(path, t, value)
    if t.item_type is None:
        return list(value)
    return [check_value(t.item_type, v, f"{path}[{i}]") for i, v in enumerate(value)]


def _check_tuple(t: ArgType, value: Any, path: str) -> Any:
    if not isinstance(value, list | tuple):
        raise _fail(path, t, value)
    if t.element_types is None:
        return list(value)
    if len(value) != len(t.element_types):
        raise _fail(path, t, value, f"{len(value)} elements, expected {len(t.element_types)}")
    return [
        check_value(et, v, f"{path}[{i}]")
        for i, (et, v) in enumerate(zip(t.element_types, value, strict=True))
    ]


def _check_dict(t: ArgType, value: Any, path: str) -> Any:
    if not isinstance(value, dict):
        raise _fail(path, t, value)
    if t.properties is None:
        return value
    missing = sorted(set(t.properties) - set(value))
    if missing:
        raise _fail(path, t, value, f"missing keys {missing}")
    checked = dict(value)
    for key, sub in t.properties.items():
        checked[key] = check_value(sub, value[key], f"{path}[{key!r}]")
    return checked


def _check_scalar(pytypes: tuple[type, ...], *, exclude_bool: bool = True) -> Callable[..., Any]:
    def check(t: ArgType, value: Any, path: str) -> Any:
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(value, pytypes) or (exclude_bool and isinstance(value, bool)):
            raise _fail(path, t, value)
        return value

    return check


def _check_float(t: ArgType, value: Any, path: str) -> Any:
    return float(_check_scalar((int, float))(t, value, path))


def _check_file(t: ArgType, value: Any, path: str) -> Any:
    # A file travels as a path or URL the worker can open, or as its raw bytes.
    if isinstance(value, str) and value:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return value
    raise _fail(path, t, value, "send a path or URL string, or the file's bytes")


_CHECKERS: dict[str, Callable[[ArgType, Any, str], Any]] = {
    "any": lambda t, v, p: v,
    "string": _check_scalar((str,)),
    "number": _check_scalar((int, float)),
    "integer": _check_scalar((int,)),
    "float": _check_float,
    "boolean": _check_scalar((bool,), exclude_bool=False),
    "bytes": _check_scalar((bytes, bytearray, memoryview)),
    "list": _check_list,
    "tuple": _check_tuple,
    "dict": _check_dict,
    "ndarray": _check_ndarray,
    "file": _check_file,
    # The wire carries msgpack values only; the shim rebuilds the object, so accept any.
    "python object": lambda t, v, p: v,
}


def check_value(expected: ArgType, value: Any, path: str = "input") -> Any:
    """Return ``value`` checked (and losslessly coerced) against ``expected``."""
    return _CHECKERS[expected.type](expected, value, path)
