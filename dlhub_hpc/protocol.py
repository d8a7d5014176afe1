"""The wire format between clients, the hub and workers.

A message is one msgpack header frame ``[PROTOCOL_VERSION, tag, *fields]`` followed by
zero or more raw buffer frames. A numpy array larger than ``INLINE_ARRAY_BYTES`` travels
as a raw frame: the header holds only an ext record ``(dtype, shape, frame index)``, so a
large array is never copied through Python objects on either side (it is sent from, and
decoded as a view of, the frame's memory). A smaller one travels inside the header, so a
batch of single rows stays one message part per hop. Messages are small dataclasses
dispatched by tag.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, fields
from enum import IntEnum
from typing import Any, ClassVar, TypeVar

import msgpack
import numpy as np

from dlhub_hpc.errors import InvalidInput, ProtocolError

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
NDARRAY_EXT = 1  # an array in a frame of its own: "dtype;shape;frame index"
NDARRAY_INLINE_EXT = 2  # a small array inside the header: "dtype;shape;" then its bytes
# Arrays up to this size travel inside the header: every extra frame costs a message part
# (and a CurveZMQ box) on each hop, and ZeroMQ copies parts this small anyway.
INLINE_ARRAY_BYTES = 16384

DEFAULT_CLIENT_PORT = 47650
DEFAULT_WORKER_PORT = 47651


class Tag(IntEnum):
    REQUEST = 1
    REPLY = 2
    CONTROL = 3
    HELLO = 4
    ASSIGN = 5
    READY = 6
    LOAD_FAILED = 7
    BATCH = 8
    BATCH_RESULT = 9
    HEARTBEAT = 10
    SHUTDOWN = 11
    BYE = 12
    DRAIN = 20  # worker lifecycle messages beyond the core set start at 20


_NONE = type(None)
_NUM = (int, float)


class Message:
    """Base of all messages: ``TAG`` picks the class, ``TYPES`` checks each field."""

    TAG: ClassVar[Tag]
    TYPES: ClassVar[tuple[Any, ...]]
    FIELDS: ClassVar[tuple[str, ...]]
    REQUIRED: ClassVar[int]  # fields without a default; later ones may be left off the wire


_BY_TAG: dict[int, type[Message]] = {}
M = TypeVar("M", bound=type[Message])


def _message(cls: M) -> M:
    cls.FIELDS = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
    if len(cls.FIELDS) != len(cls.TYPES):
        raise TypeError(f"{cls.__name__}: TYPES does not match its fields")
    cls.REQUIRED = len([
        f for f in fields(cls)  # type: ignore[arg-type]
        if f.default is MISSING and f.default_factory is MISSING
    ])
    _BY_TAG[cls.TAG] = cls
    return cls


@_message
@dataclass(slots=True)
class Request(Message):
    """Client -> hub: run ``method`` of ``servable`` (at ``version``; None is the latest).

    ``cache=False`` bypasses the memo cache (and single flight) for this request.
    """

    TAG = Tag.REQUEST
    TYPES = (str, str, (int, _NONE), str, object, (*_NUM, _NONE), bool)
    request_id: str
    servable: str
    version: int | None
    method: str
    payload: Any
    timeout: float | None = None
    cache: bool = True


@_message
@dataclass(slots=True)
class Reply(Message):
    """Hub -> client: the value, or an error record (``DlhubHpcError.to_wire``).

    ``timing`` is ``[invocation, inference]`` in seconds: from the hub receiving the request
    to its reply, and the worker's run of the batch that held it (0 for a memo hit).
    ``warning`` tells the caller something the answer does not, e.g. that the version is
    deprecated.
    """

    TAG = Tag.REPLY
    TYPES = (str, bool, object, (dict, _NONE), (list, _NONE), (str, _NONE))
    request_id: str
    ok: bool
    value: Any = None
    error: dict[str, Any] | None = None
    timing: list[float] | None = None
    warning: str | None = None


@_message
@dataclass(slots=True)
class Control(Message):
    """Client -> hub: an administrative operation (publish, status, workers, shutdown)."""

    TAG = Tag.CONTROL
    TYPES = (str, str, dict)
    request_id: str
    op: str
    args: dict[str, Any]


@_message
@dataclass(slots=True)
class Hello(Message):
    """Worker -> hub: a new worker that wants to serve ``servable``."""

    TAG = Tag.HELLO
    TYPES = (str, str, (int, _NONE), str, int, (str, _NONE), int, (dict, _NONE))
    worker_id: str
    servable: str
    version: int | None
    host: str
    pid: int
    block: str | None = None
    ranks: int = 1  # MPI ranks behind this worker (rank 0 speaks for them)
    binding: dict[str, Any] | None = None  # GPU binding: {"env", "devices", "local_rank"}


@_message
@dataclass(slots=True)
class Assign(Message):
    """Hub -> worker: the servable to load, with its spec and bundle (a tar archive)."""

    TAG = Tag.ASSIGN
    TYPES = (str, int, str, dict, bytes)
    servable: str
    version: int
    digest: str
    spec: dict[str, Any]
    bundle: bytes


@_message
@dataclass(slots=True)
class Ready(Message):
    """Worker -> hub: the servable is loaded; send batches."""

    TAG = Tag.READY
    TYPES = (str,)
    worker_id: str


@_message
@dataclass(slots=True)
class LoadFailed(Message):
    """Worker -> hub: the servable could not be loaded; the worker exits."""

    TAG = Tag.LOAD_FAILED
    TYPES = (str, dict)
    worker_id: str
    error: dict[str, Any]


@_message
@dataclass(slots=True)
class Batch(Message):
    """Hub -> worker: run ``method`` on each payload."""

    TAG = Tag.BATCH
    TYPES = (int, str, list)
    batch_id: int
    method: str
    payloads: list[Any]


@_message
@dataclass(slots=True)
class BatchResult(Message):
    """Worker -> hub: one ``[ok, value or error record]`` per payload, in order.

    ``elapsed`` is the seconds the servable took to run the whole batch.
    """

    TAG = Tag.BATCH_RESULT
    TYPES = (int, list, _NUM)
    batch_id: int
    results: list[Any]
    elapsed: float = 0.0


@_message
@dataclass(slots=True)
class Heartbeat(Message):
    """Either way: the sender is alive."""

    TAG = Tag.HEARTBEAT
    TYPES = (str,)
    sender: str


@_message
@dataclass(slots=True)
class Shutdown(Message):
    """Hub -> worker: finish and exit."""

    TAG = Tag.SHUTDOWN
    TYPES = (str,)
    reason: str


@_message
@dataclass(slots=True)
class Bye(Message):
    """Worker -> hub: the worker is exiting; anything it held must be retried."""

    TAG = Tag.BYE
    TYPES = (str, str)
    worker_id: str
    reason: str


@_message
@dataclass(slots=True)
class Drain(Message):
    """Worker -> hub: take no new work from me; I finish what I hold, then await Shutdown.

    Sent before a walltime ends (``--drain-after``) or on SIGTERM. The hub answers with
    ``Shutdown`` once the worker holds no batch, so nothing crosses the boundary unanswered.
    """

    TAG = Tag.DRAIN
    TYPES = (str, str)
    worker_id: str
    reason: str


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
    raise InvalidInput(
        f"values of type {type(obj).__name__} cannot be sent; use numbers, strings, bytes, "
        "lists, dicts or numpy arrays",
        type=type(obj).__name__,
    )


def _pack_default(buffers: list[Any]) -> Any:
    def default(obj: Any) -> Any:
        if not isinstance(obj, np.ndarray):
            return plain_value(obj)
        check_sendable_array(obj)
        shape = ",".join(map(str, obj.shape))
        # "dtype;d0,d1,...;...": cheaper than a nested packb inside this hook
        if obj.nbytes <= INLINE_ARRAY_BYTES:
            head = f"{obj.dtype.str};{shape};".encode()
            return msgpack.ExtType(NDARRAY_INLINE_EXT, head + obj.tobytes())
        arr = np.ascontiguousarray(obj)  # a no-op (no copy) for C-ordered arrays
        buffers.append(arr.reshape(-1).view(np.uint8).data)  # any dtype, still no copy
        return msgpack.ExtType(NDARRAY_EXT, f"{obj.dtype.str};{shape};{len(buffers)}".encode())

    return default


def encode(msg: Message) -> list[Any]:
    """Encode ``msg`` as frames: a msgpack header, then one raw frame per numpy array larger
    than ``INLINE_ARRAY_BYTES`` (smaller ones travel in the header)."""
    buffers: list[Any] = []
    values = [PROTOCOL_VERSION, int(msg.TAG)]
    values.extend(getattr(msg, name) for name in msg.FIELDS)
    header = msgpack.packb(values, default=_pack_default(buffers), use_bin_type=True)
    return [header, *buffers]


def _as_buffer(frame: Any) -> Any:
    # zmq.Frame exposes its memory as .buffer; bytes and memoryview are used as they are.
    return getattr(frame, "buffer", frame)


def _ext_hook(frames: Sequence[Any]) -> Any:
    def hook(code: int, data: bytes) -> Any:
        if code == NDARRAY_INLINE_EXT:
            dtype, shape, raw = data.split(b";", 2)
            memory: Any = bytearray(raw)  # writable, like an array read from its own frame
        elif code == NDARRAY_EXT:
            dtype, shape, index = data.split(b";")
            if int(index) < 1:
                raise ProtocolError(f"array frame index {int(index)} points at the header")
            memory = _as_buffer(frames[int(index)])
        else:
            raise ProtocolError(f"unknown msgpack extension code {code}")
        dt = np.dtype(dtype.decode())
        if dt.hasobject or dt.names is not None or dt.kind == "V":
            # What encode() refuses must not get in either: it could not be sent on.
            raise ProtocolError(f"numpy arrays of dtype {dt} are not accepted on the wire")
        dims = [int(d) for d in shape.split(b",")] if shape else []
        return np.frombuffer(memory, dtype=dt).reshape(dims)

    return hook


def decode(frames: Sequence[Any]) -> Message:
    """Decode frames made by :func:`encode`; anything malformed raises ``ProtocolError``."""
    if not frames:
        raise ProtocolError("empty message")
    try:
        values = msgpack.unpackb(
            _as_buffer(frames[0]), ext_hook=_ext_hook(frames), raw=False, strict_map_key=False
        )
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"undecodable header frame: {exc}") from exc
    if not isinstance(values, list) or len(values) < 2:
        raise ProtocolError("header frame is not a [version, tag, ...] array")
    version, tag, *body = values
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {version!r} is not {PROTOCOL_VERSION}; upgrade the older side",
            version=version,
        )
    cls = _BY_TAG.get(tag) if isinstance(tag, int) else None
    if cls is None:
        raise ProtocolError(f"unknown message tag {tag!r}")
    if not cls.REQUIRED <= len(body) <= len(cls.FIELDS):  # an older peer omits newer fields
        raise ProtocolError(f"{cls.__name__} has {len(cls.FIELDS)} fields, got {len(body)}")
    for name, value, expected in zip(cls.FIELDS, body, cls.TYPES, strict=False):
        if expected is not object and not isinstance(value, expected):
            raise ProtocolError(f"{cls.__name__}.{name} has type {type(value).__name__}")
    return cls(*body)
