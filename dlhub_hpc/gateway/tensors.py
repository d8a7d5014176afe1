"""Open Inference Protocol tensors <-> the values servables take and return.

A request's tensors arrive as JSON (``data``, flat in row-major order) or, with the binary
tensor data extension, as raw little-endian bytes after the JSON header (BYTES elements each
behind a 4-byte length). One input tensor is the method's input; several are a dict by
tensor name. The declared input type shapes the value: an ``ndarray`` stays an array, a
``list`` becomes a list, a scalar type takes a one-element tensor, ``string`` and ``bytes``
take a BYTES tensor. An output is one tensor named ``output`` (a dict: one per key).
"""

from __future__ import annotations

import logging
import math
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlhub_hpc.errors import InvalidInput

logger = logging.getLogger(__name__)

# Protocol datatype -> numpy dtype (little-endian, as the binary extension sends them).
DATATYPES: dict[str, str] = {
    "BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}
_BY_KIND = {("b", 1): "BOOL", ("u", 1): "UINT8", ("u", 2): "UINT16", ("u", 4): "UINT32",
            ("u", 8): "UINT64", ("i", 1): "INT8", ("i", 2): "INT16", ("i", 4): "INT32",
            ("i", 8): "INT64", ("f", 2): "FP16", ("f", 4): "FP32", ("f", 8): "FP64"}
# A declared type's tensor: (datatype, shape); -1 is any size.
_SCALARS = {"float": "FP64", "number": "FP64", "integer": "INT64", "boolean": "BOOL",
            "string": "BYTES", "bytes": "BYTES"}
_FAMILIES = {"float": "FP64", "integer": "INT64", "boolean": "BOOL", "complex": "BYTES"}
MAX_DIMS = 32


@dataclass
class Tensor:
    """One decoded tensor: its name and its value as a numpy array (BYTES: object array)."""

    name: str
    array: np.ndarray


def datatype_of(array: np.ndarray) -> str:
    if array.dtype.kind in "OSU":
        return "BYTES"
    found = _BY_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if found is None:
        raise InvalidInput(f"an output of dtype {array.dtype} has no Open Inference Protocol "
                           "datatype; return bool, int, uint or float arrays, or strings")
    return found


def tensor_metadata(declared: dict[str, Any], name: str) -> dict[str, Any]:
    """A declared type (the spec's ``input``/``output``) as the protocol's tensor metadata."""
    kind = declared.get("type", "any")
    if kind == "ndarray":
        dtype = declared.get("dtype")
        datatype = _FAMILIES.get(dtype or "float") if dtype in (None, *_FAMILIES) else None
        if datatype is None:
            datatype = datatype_of(np.empty(0, dtype=np.dtype(dtype)))
        shape = [-1 if d is None else int(d) for d in declared.get("shape") or [None]]
        return {"name": name, "datatype": datatype, "shape": shape}
    if kind in ("list", "tuple"):
        item = declared.get("item_type") or {}
        return {"name": name, "datatype": _SCALARS.get(item.get("type", ""), "BYTES"),
                "shape": [-1]}
    return {"name": name, "datatype": _SCALARS.get(kind, "BYTES"), "shape": [1]}


def _shape(raw: Any, where: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_DIMS or not all(
            type(d) is int and d >= 0 for d in raw):
        raise InvalidInput(f"{where}: 'shape' must be a list of at most {MAX_DIMS} "
                           "non-negative integers")
    return tuple(raw)


def _flat(data: Any) -> list[Any]:
    """JSON ``data``, flat or nested (the protocol allows both), as one flat list."""
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) > MAX_DIMS:
                    raise InvalidInput(f"'data' nests more than {MAX_DIMS} deep")
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _bytes_elements(raw: memoryview, count: int, where: str) -> list[bytes]:
    out, at = [], 0
    for _ in range(count):
        if at + 4 > len(raw):
            raise InvalidInput(f"{where}: the binary BYTES data ends inside an element")
        (size,) = struct.unpack_from("<I", raw, at)
        if at + 4 + size > len(raw):
            raise InvalidInput(f"{where}: a BYTES element runs past the binary data")
        out.append(bytes(raw[at + 4:at + 4 + size]))
        at += 4 + size
    if at != len(raw):
        raise InvalidInput(f"{where}: {len(raw) - at} bytes left after {count} BYTES elements")
    return out


def decode_tensor(spec: Any, binary: memoryview | None, where: str) -> Tensor:
    """One request tensor (its JSON object, and its binary data if it came so)."""
    if not isinstance(spec, dict):
        raise InvalidInput(f"{where} must be a JSON object with name, shape, datatype, data")
    name, datatype = spec.get("name"), spec.get("datatype")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise InvalidInput(f"{where}: 'name' and 'datatype' must be strings")
    shape = _shape(spec.get("shape"), where)
    count = math.prod(shape)
    if datatype == "BYTES":
        values: list[Any] = (_bytes_elements(binary, count, where) if binary is not None
                             else _flat(spec.get("data")))
        if not all(isinstance(v, str | bytes) for v in values):
            raise InvalidInput(f"{where}: BYTES data must be strings")
        array = np.empty(len(values), dtype=object)
        array[:] = values
    elif datatype in DATATYPES:
        array = _numeric(spec, binary, DATATYPES[datatype], count, where)
    else:
        raise InvalidInput(f"{where}: datatype {datatype!r} is not one of "
                           f"{', '.join([*DATATYPES, 'BYTES'])}")
    if array.size != count:
        raise InvalidInput(f"{where}: shape {list(shape)} needs {count} elements, "
                           f"got {array.size}")
    return Tensor(name, array.reshape(shape))


def _numeric(spec: dict[str, Any], binary: memoryview | None, dtype: str, count: int,
             where: str) -> np.ndarray:
    if binary is not None:
        size = np.dtype(dtype).itemsize * count
        if len(binary) != size:
            raise InvalidInput(f"{where}: binary data is {len(binary)} bytes; shape and "
                               f"datatype need {size}")
        # Native order; no copy where it already is: the hub gets its own copy either way.
        return np.frombuffer(binary, dtype=dtype).astype(dtype[1:] if dtype != "?" else "?",
                                                         copy=False)
    flat = _flat(spec.get("data"))
    target = np.dtype(dtype).newbyteorder("=")
    if target.kind == "b":  # as Triton reads JSON: 1.5 or NaN is no truth value
        if not all(isinstance(v, bool) for v in flat):
            raise InvalidInput(f"{where}: 'data' must hold true or false for datatype BOOL")
        return np.asarray(flat, dtype=target)
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in flat):
        raise InvalidInput(f"{where}: 'data' must hold numbers for datatype "
                           f"{spec.get('datatype')}")
    if target.kind in "iu":  # numpy would wrap an integer out of range, or cut a fraction
        info = np.iinfo(target)
        if not all(isinstance(v, int) and info.min <= v <= info.max for v in flat):
            raise InvalidInput(f"{where}: 'data' does not fit {spec.get('datatype')}: "
                               f"integers from {info.min} to {info.max}")
    try:
        with np.errstate(over="ignore"):
            array = np.asarray(flat, dtype=target)
    except (OverflowError, ValueError) as exc:
        raise InvalidInput(f"{where}: 'data' does not fit {spec.get('datatype')}: "
                           f"{exc}") from None
    # a finite number past the datatype's range would arrive as infinity: say so
    if target.kind == "f" and not np.isfinite(array).all() and (
            np.isfinite(np.asarray(flat, dtype=np.float64)) & ~np.isfinite(array)).any():
        raise InvalidInput(f"{where}: 'data' does not fit {spec.get('datatype')}: "
                           f"numbers up to {float(np.finfo(target).max):.6g} in size")
    return array


def as_input(tensors: list[Tensor], declared: dict[str, Any]) -> Any:
    """The method's input from the request's tensors, shaped by its declared type."""
    if not tensors:
        raise InvalidInput("the request has no inputs; send one tensor in 'inputs'")
    kind = declared.get("type", "any")
    if len(tensors) > 1 or kind == "dict":
        twice = sorted(n for n, k in Counter(t.name for t in tensors).items() if k > 1)
        if twice:  # as a dict by name, one would silently replace the other
            raise InvalidInput(f"inputs are named {', '.join(map(repr, twice))} more than once; "
                               "give each input tensor its own name")
        props = declared.get("properties") or {}
        return {t.name: as_input([t], props.get(t.name, {"type": "any"})) for t in tensors}
    array = tensors[0].array
    if kind in ("list", "tuple"):
        return [_plain(v) for v in array.tolist()] if array.dtype == object else array.tolist()
    if kind in _SCALARS:
        if array.size != 1:
            raise InvalidInput(f"the input is a single {kind}: send a tensor of shape [1], "
                               f"not {list(array.shape)}")
        value = array.reshape(-1)[0]
        if kind == "string" and isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        if kind == "bytes" and isinstance(value, str):
            return value.encode()
        return value.item() if isinstance(value, np.generic) else value
    if array.dtype == object:  # BYTES to an ndarray or any: strings, in their shape
        return [_plain(v) for v in array.reshape(-1).tolist()] if kind != "ndarray" else array
    return array


def _plain(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def as_tensors(value: Any, name: str = "output") -> list[tuple[str, np.ndarray]]:
    """A method's output as (name, array) pairs: a dict is one tensor per key."""
    if isinstance(value, dict):
        return [pair for key, item in value.items() for pair in as_tensors(item, str(key))]
    if isinstance(value, str | bytes):
        array = np.empty(1, dtype=object)
        array[0] = value
        return [(name, array)]
    array = np.asarray(value)
    if array.dtype.kind in "SU":
        array = array.astype(object)
    elif array.dtype == object and not all(isinstance(v, str | bytes)
                                           for v in array.reshape(-1)):
        raise InvalidInput(f"the output {name!r} is not a tensor: a numeric array, a number, "
                           "a string, or a dict of those")
    return [(name, array.reshape(1) if array.ndim == 0 else array)]


def encode_output(name: str, array: np.ndarray, binary: bool) -> tuple[dict[str, Any], bytes]:
    """One output tensor's JSON object, and its raw bytes when ``binary`` (else b"")."""
    datatype = datatype_of(array)
    out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if not binary:
        flat = array.reshape(-1).tolist()
        out["data"] = [_plain(v) for v in flat] if datatype == "BYTES" else flat
        return out, b""
    if datatype == "BYTES":
        parts = [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)]
        raw = b"".join(struct.pack("<I", len(p)) + p for p in parts)
    else:
        raw = np.ascontiguousarray(array, dtype=np.dtype(DATATYPES[datatype])).tobytes()
    out["parameters"] = {"binary_data_size": len(raw)}
    return out, raw
