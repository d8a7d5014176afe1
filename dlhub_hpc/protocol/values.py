"""What a message may carry besides plain values (``StreamRef``, ``Encoded``, numpy arrays)
and the checks on values: the sender's (``check_carriable``, ``check_sendable_array``,
``plain_value``) and the decoder's (``_check_field``: types, int64 range, NaN, depth, keys)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from dlhub_hpc import references
from dlhub_hpc.errors import InvalidInput, ProtocolError
from dlhub_hpc.protocol.constants import _WALK_SLICE, INT64_MAX, INT64_MIN, MAX_DEPTH, Pause
from dlhub_hpc.protocol.messages import _NONE, Message, _Check


@dataclass(frozen=True, slots=True, eq=False)
class StreamRef:
    """Stands in a message for an array that follows in chunks: transfer ``transfer_id``
    of ``nbytes`` bytes. Compared by identity: the hub routes a transfer only with the very
    ref object its sender's message held."""

    transfer_id: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize * _product(self.shape))

    def __repr__(self) -> str:
        return f"StreamRef({self.transfer_id!r}, {self.dtype!r}, {self.shape!r})"


def _product(shape: Sequence[int]) -> int:
    out = 1
    for dim in shape:
        out *= dim
    return out



@dataclass(frozen=True, slots=True)
class Encoded:
    """One value kept as the msgpack bytes it arrived in, to be sent on without decoding
    and re-encoding it (the hub forwards a large checked input this way). ``data`` holds
    exactly one value with no array frames of its own (small arrays inline are fine)."""

    data: Any  # bytes, or a memoryview of a received frame

    def __repr__(self) -> str:
        return f"Encoded({memoryview(self.data).nbytes} bytes)"


def check_sendable_array(arr: np.ndarray) -> None:
    """Refuse arrays whose bytes alone cannot rebuild them (objects, structured records)."""
    if arr.dtype.hasobject or arr.dtype.names is not None or arr.dtype.kind == "V":
        raise InvalidInput(
            f"numpy arrays of dtype {arr.dtype} cannot be sent; convert to a numeric, "
            "bool, string or datetime dtype, or to a list",
            dtype=str(arr.dtype),
        )


def plain_value(obj: Any) -> Any:
    """msgpack's fallback for what is not an array: numpy scalars, tuples and sets."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    if isinstance(obj, int):  # msgpack hands over the integers it has no form for
        raise InvalidInput(f"the integer {obj} does not fit in 64 bits; send it as a string "
                           "or a float", type="int")
    raise InvalidInput(
        f"values of type {type(obj).__name__} cannot be sent; use numbers, strings, bytes, "
        "lists, dicts or numpy arrays",
        type=type(obj).__name__,
    )


class _Refused(Exception):
    """A value that cannot travel; ``path`` is filled in on the way out of the walk."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why
        self.path: list[Any] = []

    def where(self, root: str) -> str:
        return root + "".join(f"[{step!r}]" for step in reversed(self.path))


# What a decoded value may hold besides lists and dicts (a timestamp ext is not in it).
_LEAVES = frozenset({str, int, float, bool, bytes, _NONE, np.ndarray, references.FileRef,
                     references.URLRef, StreamRef})
_CONTAINERS = (dict, list, tuple, set, frozenset)  # what msgpack sends as a map or an array


def _walk(value: Any, room: int, strict: bool) -> None:
    """Refuse a list or dict nested deeper than ``room`` or holding a non-string key; with
    ``strict`` (decoded values) also any leaf not in ``_LEAVES``."""
    if room <= 0:
        raise _Refused(f"it nests deeper than {MAX_DEPTH} lists or dicts; flatten it, "
                       "or send a numpy array")
    items = value
    if isinstance(value, dict):
        if value and set(map(type, value)) != _STR:
            _check_keys(value)
        items = value.values()
    kinds = set(map(type, items))
    if kinds <= _LEAVES:  # the usual case: nothing nested, checked in C
        return
    room -= 1
    if kinds == _LIST and room and set(map(type, chain.from_iterable(items))) <= _LEAVES:
        return  # flat lists in a list (a batch's results, rows of numbers): checked in C
    for item in items:
        kind = type(item)
        if kind in _LEAVES or (kind is list and room and set(map(type, item)) <= _LEAVES):
            continue  # a leaf, or a flat list (a result's [ok, value] pair): no call needed
        try:
            if isinstance(item, _CONTAINERS):
                _walk(item, room, strict)
            elif strict and type(item) not in _LEAVES:
                raise _Refused(f"a {type(item).__name__} is not a message value")
        except _Refused as exc:  # the slow path, once: say where
            exc.path.append(_key_of(value, item))
            raise


_STR = {str}
_LIST = {list}


def _check_keys(value: dict[Any, Any]) -> None:
    for key in value:
        if not isinstance(key, str):
            raise _Refused(f"dict key {key!r} is a {type(key).__name__}, not a string; use "
                           "string keys, or a list of [key, value] pairs")


def _key_of(container: Any, item: Any) -> Any:
    pairs = container.items() if isinstance(container, dict) else enumerate(container)
    return next((k for k, v in pairs if v is item), "?")


def check_carriable(value: Any, what: str = "the input") -> None:
    """Refuse, as ``InvalidInput``, what the hub cannot carry: lists and dicts nested deeper
    than ``MAX_DEPTH``, or a dict key that is not a string. (``encode`` refuses the rest:
    lone surrogates, integers past 64 bits, types msgpack has no form for.)"""
    if isinstance(value, _CONTAINERS):
        try:
            _walk(value, MAX_DEPTH, strict=False)
        except _Refused as exc:
            raise InvalidInput(f"{exc.where(what)} cannot be sent: {exc.why}",
                               path=exc.where(what)) from None

def _check_field(cls: type[Message], check: _Check, value: Any,
                 pause: Pause | None = None) -> None:
    kind = type(value)
    if check.types is not object and (
        not isinstance(value, check.types) or (kind is bool and check.exact_bool)
    ):
        raise ProtocolError(f"{cls.__name__}.{check.name} has type {kind.__name__}")
    if kind is int and check.ints and not INT64_MIN <= value <= INT64_MAX:
        raise ProtocolError(f"{cls.__name__}.{check.name} {value} does not fit in 64 bits")
    if kind is float and check.floats and value != value:
        raise ProtocolError(f"{cls.__name__}.{check.name} is NaN")
    if check.depth and (kind is list or kind is dict):
        try:
            if pause is not None and kind is list and len(value) > _WALK_SLICE:
                _walk_sliced(value, check.depth, pause)
            else:
                _walk(value, check.depth, strict=True)
        except _Refused as exc:
            raise ProtocolError(
                f"{exc.where(f'{cls.__name__}.{check.name}')} cannot be carried: {exc.why}"
            ) from None


def _walk_sliced(value: list[Any], room: int, pause: Pause) -> None:
    """``_walk(value, room, strict=True)``, a slice of the list at a time."""
    for start in range(0, len(value), _WALK_SLICE):
        try:
            _walk(value[start:start + _WALK_SLICE], room, strict=True)
        except _Refused as exc:
            if exc.path and type(exc.path[-1]) is int:  # an index in the slice: in the list
                exc.path[-1] += start
            raise
        pause()

