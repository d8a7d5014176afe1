"""The wire format between clients, the hub and workers.

A message is one msgpack header frame ``[PROTOCOL_VERSION, tag, *fields]`` followed by
zero or more raw buffer frames. A numpy array larger than ``INLINE_ARRAY_BYTES`` travels
as a raw frame: the header holds only an ext record ``(dtype, shape, frame index)``, so a
large array is never copied through Python objects on either side (it is sent from, and
decoded as a view of, the frame's memory). A smaller one travels inside the header, so a
batch of single rows stays one message part per hop. A value the hub passes on as it
received it (``Encoded``) travels as a frame of msgpack bytes, expanded by the receiver's
decode with the same checks as any other value. Messages are small dataclasses dispatched
by tag.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, fields
from enum import IntEnum
from itertools import chain
from typing import Any, ClassVar, TypeVar

import msgpack
import numpy as np

from dlhub_hpc import references
from dlhub_hpc.errors import DlhubHpcError, InvalidInput, ProtocolError

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
NDARRAY_EXT = 1  # an array in a frame of its own: "dtype;shape;frame index"
NDARRAY_INLINE_EXT = 2  # a small array inside the header: "dtype;shape;" then its bytes
ENCODED_EXT = 3  # a value already msgpack-encoded, in a frame of its own: "frame index"
STREAM_EXT = 4  # an array that follows in chunks (dlhub_hpc.transfer): "id;dtype;shape"
REF_EXT = 5  # a FileRef or URLRef: msgpack [kind, target] (dlhub_hpc.references)
LOCAL_EXT = 6  # an array in a sealed memfd on this node (dlhub_hpc.localpath): "dtype;shape;ticket"
# Arrays up to this size travel inside the header: every extra frame costs a message part
# (and a CurveZMQ box) on each hop, and ZeroMQ copies parts this small anyway.
INLINE_ARRAY_BYTES = 16384
# How deeply an input or an output may nest (lists and dicts in one another). Senders
# refuse deeper values (InvalidInput); decoders refuse them too, as ProtocolError.
MAX_DEPTH = 64
# A whole header may nest a little deeper: the protocol's own wrappers (a batch's list, a
# result's pair, the outputs of parallel pipeline stages) come on top of a value.
_WIRE_DEPTH = MAX_DEPTH + 16
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # integer fields of a message (SQLite's range)
_PEEK_BYTES = 4096  # peek() reads a tag and a request or batch id: they are short
# A sliced decode (``pause`` given) parses this much msgpack, or walks this many list items,
# between pauses: about a millisecond of work holding the GIL.
_SLICE_BYTES = 1 << 17
_WALK_SLICE = 16384
_FLOAT64 = 0xCB  # msgpack's marker of a float 64
Pause = Callable[[], None]  # what a sliced decode calls between slices
# The same-node fast path's hooks (dlhub_hpc.localpath): ``share`` turns a large array into
# a ticket (None: send it as a frame); ``fetch`` turns a ticket back into the array.
Share = Callable[[np.ndarray], "str | None"]
Fetch = Callable[[str, np.dtype, tuple[int, ...]], Any]
# The largest message a client or worker may send unless the hub's config says otherwise.
DEFAULT_MAX_MESSAGE_BYTES = 256 * 2**20

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
    CHUNK = 30  # chunked transfers of large arrays (dlhub_hpc.transfer) start at 30
    CREDIT = 31
    ABORT = 32
    LOCAL_OFFER = 40  # the same-node fast path (dlhub_hpc.localpath)


_NONE = type(None)
_NUM = (int, float)


class Message:
    """Base of all messages: ``TAG`` picks the class, ``TYPES`` checks each field."""

    TAG: ClassVar[Tag]
    TYPES: ClassVar[tuple[Any, ...]]
    FIELDS: ClassVar[tuple[str, ...]]
    REQUIRED: ClassVar[int]  # fields without a default; later ones may be left off the wire
    DEPTHS: ClassVar[dict[str, int]] = {}  # how deeply a field may nest; else _WIRE_DEPTH
    # The last field is left off the wire when it is None, so a peer that predates it
    # still decodes the message whenever the field is not used.
    OMIT_LAST_NONE: ClassVar[bool] = False
    CHECKS: ClassVar[tuple[_Check, ...]]  # what decode checks of each field, in order


@dataclass(frozen=True, slots=True)
class _Check:
    name: str
    types: Any  # a type or a tuple of types; object: anything
    exact_bool: bool  # a bool is only accepted where bool is named (it is an int too)
    ints: bool  # an int must fit in int64
    floats: bool  # a float must not be NaN (a NaN deadline never comes due)
    depth: int  # how deeply a list or dict may nest; 0: the field is never one
    plain: bool  # a type check is all it takes (a string, bytes, a bool)


_BY_TAG: dict[int, type[Message]] = {}
M = TypeVar("M", bound=type[Message])


def _check_of(name: str, expected: Any, depth: int) -> _Check:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    nests = object in kinds or list in kinds or dict in kinds
    plain = not nests and int not in kinds and float not in kinds
    return _Check(name, expected, bool not in kinds and object not in kinds, int in kinds,
                  float in kinds, depth if nests else 0, plain)


def _message(cls: M) -> M:
    cls.FIELDS = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
    if len(cls.FIELDS) != len(cls.TYPES):
        raise TypeError(f"{cls.__name__}: TYPES does not match its fields")
    cls.REQUIRED = len([
        f for f in fields(cls)  # type: ignore[arg-type]
        if f.default is MISSING and f.default_factory is MISSING
    ])
    cls.CHECKS = tuple(
        _check_of(name, expected, cls.DEPTHS.get(name, _WIRE_DEPTH))
        for name, expected in zip(cls.FIELDS, cls.TYPES, strict=True)
    )
    _BY_TAG[cls.TAG] = cls
    return cls


@_message
@dataclass(slots=True)
class Request(Message):
    """Client -> hub: run ``method`` of ``servable`` (at ``version``; None is the latest).

    ``cache=False`` bypasses the memo cache (and single flight) for this request.
    ``parameters`` override the method's default keyword parameters (DLHub's
    ``run(..., parameters=)``); None keeps the defaults. ``result_to`` names a file the
    hub writes the result to (as the caller may), replying with its ``FileRef``.
    ``token``: a bearer token (``dlhub_hpc.security.tokens``); the hub acts as the identity
    it maps to, not as the connection's.
    """

    TAG = Tag.REQUEST
    TYPES = (str, str, (int, _NONE), str, object, (*_NUM, _NONE), bool, (dict, _NONE),
             (str, _NONE), (str, _NONE))
    # what a client may send, so a worker can take it
    DEPTHS = {"payload": MAX_DEPTH, "parameters": MAX_DEPTH}
    OMIT_LAST_NONE = True
    request_id: str
    servable: str
    version: int | None
    method: str
    payload: Any
    timeout: float | None = None
    cache: bool = True
    parameters: dict[str, Any] | None = None
    result_to: str | None = None
    token: str | None = None


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
    TYPES = (str, str, (int, _NONE), str, int, (str, _NONE), int, (dict, _NONE), (dict, _NONE))
    OMIT_LAST_NONE = True
    worker_id: str
    servable: str
    version: int | None
    host: str
    pid: int
    block: str | None = None
    ranks: int = 1  # MPI ranks behind this worker (rank 0 speaks for them)
    binding: dict[str, Any] | None = None  # GPU binding: {"env", "devices", "local_rank"}
    # a pooled worker (servable ""): {"spec": "owner:alice", "budget": bytes}
    pool: dict[str, Any] | None = None


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
    """Worker -> hub: the servable is loaded; send batches.

    A pooled worker adds ``pool``: {"loaded": ref, "nbytes": n, "holds": [[ref, nbytes],
    ...] least recently used first, "evicted": [ref, ...]} (``worker/models.py``).
    """

    TAG = Tag.READY
    TYPES = (str, (dict, _NONE))
    OMIT_LAST_NONE = True
    worker_id: str
    pool: dict[str, Any] | None = None


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
    """Hub -> worker: run ``method`` on each payload. ``parameters``, one per payload
    (a dict, or None for the defaults), override the method's default parameters; None
    when no request of the batch gave any (the common case costs nothing)."""

    TAG = Tag.BATCH
    TYPES = (int, str, list, (list, _NONE), (str, _NONE), (list, _NONE))
    DEPTHS = {"parameters": MAX_DEPTH + 2}  # a request's parameters, in a dict in a list
    OMIT_LAST_NONE = True
    batch_id: int
    method: str
    payloads: list[Any]
    parameters: list[dict[str, Any] | None] | None = None
    servable: str | None = None  # to a pooled worker: which of its servables (name@version)
    request_ids: list[str] | None = None  # one per payload, for the worker's log records


@_message
@dataclass(slots=True)
class BatchResult(Message):
    """Worker -> hub: one ``[ok, value or error record]`` per payload, in order.

    ``elapsed`` is the seconds the servable took to run the whole batch.
    """

    TAG = Tag.BATCH_RESULT
    TYPES = (int, list, _NUM)
    DEPTHS = {"results": MAX_DEPTH + 2}  # each output, inside its [ok, value] in a list
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


@_message
@dataclass(slots=True)
class Chunk(Message):
    """Either way: ``data`` (a 1-d uint8 array, sent as a raw frame) is the bytes of
    transfer ``transfer_id`` from ``offset`` on (``dlhub_hpc.transfer``)."""

    TAG = Tag.CHUNK
    TYPES = (str, int, np.ndarray)
    transfer_id: str
    offset: int
    data: np.ndarray


@_message
@dataclass(slots=True)
class Credit(Message):
    """From a transfer's receiver: it has ``offset`` bytes in place; from the hub to its
    sender: it may send up to ``offset``, in chunks of at most ``chunk_bytes``."""

    TAG = Tag.CREDIT
    TYPES = (str, int, int)
    transfer_id: str
    offset: int
    chunk_bytes: int = 0


@_message
@dataclass(slots=True)
class Abort(Message):
    """Either way: transfer ``transfer_id`` is dropped; ``error`` says why (a wire error)."""

    TAG = Tag.ABORT
    TYPES = (str, dict)
    transfer_id: str
    error: dict[str, Any]


@_message
@dataclass(slots=True)
class LocalOffer(Message):
    """Hub -> a worker on its node: how to reach the same-node fast path
    (``dlhub_hpc.localpath``: socket, one-time token, proof, boot id, min_bytes)."""

    TAG = Tag.LOCAL_OFFER
    TYPES = (dict,)
    offer: dict[str, Any]


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


def _stream_ref(data: bytes) -> StreamRef:
    tid, dtype, shape = data.decode().split(";")
    if not 0 < len(tid) <= 64 or not tid.replace("-", "").isalnum():
        raise ProtocolError("a stream's transfer id must be 1-64 letters, digits or '-'")
    dt = np.dtype(dtype)
    if dt.hasobject or dt.names is not None or dt.kind == "V" or dt.itemsize == 0:
        raise ProtocolError(f"numpy arrays of dtype {dt} are not accepted on the wire")
    dims = tuple(int(d) for d in shape.split(",")) if shape else ()
    if len(dims) > 32 or any(d < 0 for d in dims) or _product(dims) * dt.itemsize > INT64_MAX:
        raise ProtocolError(f"a stream's shape {dims} is not an array's"[:120])
    return StreamRef(tid, dt.str, dims)


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


def _pack_default(buffers: list[Any], share: Share | None = None) -> Any:
    def default(obj: Any) -> Any:
        if isinstance(obj, Encoded):  # sent as it came: a frame, never copied here
            buffers.append(obj.data)
            return msgpack.ExtType(ENCODED_EXT, str(len(buffers)).encode())
        if isinstance(obj, StreamRef):
            shape = ",".join(map(str, obj.shape))
            return msgpack.ExtType(STREAM_EXT, f"{obj.transfer_id};{obj.dtype};{shape}".encode())
        if not isinstance(obj, np.ndarray):
            if isinstance(obj, references.FileRef | references.URLRef):
                return msgpack.ExtType(REF_EXT, references.to_wire(obj))
            return plain_value(obj)
        check_sendable_array(obj)
        shape = ",".join(map(str, obj.shape))
        # "dtype;d0,d1,...;...": cheaper than a nested packb inside this hook
        if obj.nbytes <= INLINE_ARRAY_BYTES:
            head = f"{obj.dtype.str};{shape};".encode()
            return msgpack.ExtType(NDARRAY_INLINE_EXT, head + obj.tobytes())
        ticket = None if share is None else share(obj)
        if ticket is not None:  # in a sealed memfd, handed over beside the message
            return msgpack.ExtType(LOCAL_EXT, f"{obj.dtype.str};{shape};{ticket}".encode())
        arr = np.ascontiguousarray(obj)  # a no-op (no copy) for C-ordered arrays
        buffers.append(arr.reshape(-1).view(np.uint8).data)  # any dtype, still no copy
        return msgpack.ExtType(NDARRAY_EXT, f"{obj.dtype.str};{shape};{len(buffers)}".encode())

    return default


def encode(msg: Message, share: Share | None = None) -> list[Any]:
    """Encode ``msg`` as frames: a msgpack header, then one raw frame per numpy array larger
    than ``INLINE_ARRAY_BYTES`` (smaller ones travel in the header), unless ``share`` gives
    a same-node fast-path ticket for it."""
    buffers: list[Any] = []
    values = [PROTOCOL_VERSION, int(msg.TAG)]
    values.extend(getattr(msg, name) for name in msg.FIELDS)
    while msg.OMIT_LAST_NONE and len(values) > 2 + msg.REQUIRED and values[-1] is None:
        values.pop()  # trailing optional fields left unset
    try:
        header = msgpack.packb(values, default=_pack_default(buffers, share),
                               use_bin_type=True)
    except DlhubHpcError:
        raise
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"a string cannot be sent: {exc.reason} ({exc.object[exc.start:exc.end]!r}); "
            "strings must be valid Unicode (a lone surrogate usually comes from decoding "
            "bytes with errors='surrogateescape'); send bytes instead"
        ) from None
    except OverflowError:
        raise InvalidInput("an integer does not fit in 64 bits; send it as a string or a "
                           "float") from None
    except Exception as exc:  # msgpack's own refusals, e.g. its recursion limit
        raise InvalidInput(f"{type(msg).__name__} cannot be sent: {exc}; values may nest at "
                           f"most {MAX_DEPTH} deep") from None
    return [header, *buffers]


def encode_value(value: Any, pause: Pause) -> Encoded | None:
    """``value`` encoded as it would be inside a message, a slice of a list at a time with
    ``pause()`` between slices; None when it holds arrays that need frames of their own
    (those travel without a copy anyway) or that encode() would refuse."""
    buffers: list[Any] = []
    packer = msgpack.Packer(default=_pack_default(buffers), use_bin_type=True)
    try:
        if not isinstance(value, list) or len(value) <= _WALK_SLICE:
            out: Any = packer.pack(value)
        else:
            out = bytearray(packer.pack_array_header(len(value)))
            for start in range(0, len(value), _WALK_SLICE):
                part = value[start:start + _WALK_SLICE]
                out += memoryview(packer.pack(part))[_array_header_size(len(part)):]
                pause()
    except Exception:  # encode() says why, where the message is sent
        return None
    return None if buffers else Encoded(out)


def _array_header_size(count: int) -> int:
    return 1 if count <= 0x0F else 3 if count <= 0xFFFF else 5


def _as_buffer(frame: Any) -> Any:
    # zmq.Frame exposes its memory as .buffer; bytes and memoryview are used as they are.
    return getattr(frame, "buffer", frame)


def _ext_hook(frames: Sequence[Any], pause: Pause | None = None,
              fetch: Fetch | None = None) -> Any:
    expanded: set[int] = set()

    def hook(code: int, data: bytes) -> Any:
        if code == ENCODED_EXT:
            index = _frame_index(frames, data, "an encoded value")
            if index in expanded:  # each frame once: no way to multiply one frame's objects
                raise ProtocolError(f"encoded value frame {index} is referred to twice")
            expanded.add(index)
            # Expanded with no frames: an encoded value holds no frame references of its own.
            return _unpack(_as_buffer(frames[index]), _ext_hook((), pause), pause)
        if code == REF_EXT:
            return references.from_wire(data)
        if code == STREAM_EXT:
            return _stream_ref(data)
        if code == NDARRAY_INLINE_EXT:
            dtype, shape, raw = data.split(b";", 2)
            memory: Any = bytearray(raw)  # writable, like an array read from its own frame
        elif code == NDARRAY_EXT:
            dtype, shape, where = data.split(b";")
            memory = _as_buffer(frames[_frame_index(frames, where, "an array")])
        elif code == LOCAL_EXT:
            dtype, shape, ticket = data.split(b";")
        else:
            raise ProtocolError(f"unknown msgpack extension code {code}")
        dt = np.dtype(dtype.decode())
        if dt.hasobject or dt.names is not None or dt.kind == "V":
            # What encode() refuses must not get in either: it could not be sent on.
            raise ProtocolError(f"numpy arrays of dtype {dt} are not accepted on the wire")
        dims = [int(d) for d in shape.split(b",")] if shape else []
        if code == LOCAL_EXT:
            if fetch is None:
                raise ProtocolError("a same-node array came where the local path is not open")
            return fetch(ticket.decode(), dt, tuple(dims))
        return np.frombuffer(memory, dtype=dt).reshape(dims)

    return hook


def _frame_index(frames: Sequence[Any], data: bytes, what: str) -> int:
    index = int(data)
    if not 1 <= index < len(frames):  # 0 is the header itself
        raise ProtocolError(f"{what} refers to frame {index}, which this message does not "
                            f"have ({len(frames) - 1} besides the header)")
    return index


def _unpack(buffer: Any, hook: Any, pause: Pause | None) -> Any:
    """One msgpack value, exactly; with ``pause``, parsed a slice at a time and ``pause()``
    called between slices (so a thread decoding a big value lets others run)."""
    if pause is None:  # the loop's small messages: nothing in their way
        return msgpack.unpackb(buffer, ext_hook=hook, raw=False, strict_map_key=False)
    view = memoryview(buffer).cast("B")
    size = view.nbytes
    if size <= _SLICE_BYTES:
        return msgpack.unpackb(view, ext_hook=hook, raw=False, strict_map_key=False)
    # The same length limits as unpackb's (each the buffer's size); the parse resumes where
    # the previous slice ran out.
    unpacker = msgpack.Unpacker(ext_hook=hook, raw=False, strict_map_key=False,
                                max_buffer_size=size)
    for start in range(0, size, _SLICE_BYTES):
        unpacker.feed(view[start:start + _SLICE_BYTES])
        try:
            value = unpacker.unpack()
        except msgpack.OutOfData:
            pause()
            continue
        if unpacker.tell() != size:
            raise ProtocolError(f"{size - unpacker.tell()} bytes of extra data after the value")
        return value
    raise ProtocolError("truncated msgpack: a value runs past the end of its frame")


def decode(frames: Sequence[Any], pause: Pause | None = None,
           fetch: Fetch | None = None) -> Message:
    """Decode frames made by :func:`encode`; anything malformed raises ``ProtocolError``,
    and nothing a peer sends raises anything else. With ``pause`` (a thread beside the
    hub's loop decoding a large message), the work is cut in slices of about a
    millisecond and ``pause()`` is called between them. ``fetch`` takes the arrays that
    came by the same-node fast path; without it such an array is a ``ProtocolError``."""
    try:
        return _decode(frames, pause, fetch)
    except ProtocolError:
        raise
    except Exception as exc:  # a hostile peer may find a path we did not think of
        raise ProtocolError(f"undecodable message: {type(exc).__name__}: {exc}") from None


def _decode(frames: Sequence[Any], pause: Pause | None, fetch: Fetch | None = None) -> Message:
    if not frames:
        raise ProtocolError("empty message")
    try:
        values = _unpack(_as_buffer(frames[0]), _ext_hook(frames, pause, fetch), pause)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"undecodable header frame: {exc}") from exc
    return _message_of(values, pause)


def _message_of(values: Any, pause: Pause | None) -> Message:
    if type(values) is not list or len(values) < 2:
        raise ProtocolError("header frame is not a [version, tag, ...] array")
    version, tag, *body = values
    if type(version) is not int or version != PROTOCOL_VERSION:
        shown = version if type(version) is int else type(version).__name__
        raise ProtocolError(
            f"protocol version {shown!r} is not {PROTOCOL_VERSION}; upgrade the older side",
            version=shown,
        )
    cls = _BY_TAG.get(tag) if type(tag) is int else None
    if cls is None:
        raise ProtocolError(f"unknown message tag {tag!r}"[:120])
    if not cls.REQUIRED <= len(body) <= len(cls.FIELDS):  # an older peer omits newer fields
        raise ProtocolError(f"{cls.__name__} has {len(cls.FIELDS)} fields, got {len(body)}")
    for check, value in zip(cls.CHECKS, body, strict=False):
        if not (check.plain and isinstance(value, check.types)):
            _check_field(cls, check, value, pause)
    return cls(*body)


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


# -- a large request's payload, kept encoded (the hub's large-message lane) --

def split_request(frames: Sequence[Any], pause: Pause) -> Request | None:
    """A one-frame REQUEST decoded but for its payload, which stays ``Encoded`` (a view of
    the frame, not yet checked: :func:`expand_payload` checks it); None for any other
    message, or one too odd to split: :func:`decode` it."""
    if len(frames) != 1:  # arrays in frames of their own: the header is small, decode it
        return None
    view = memoryview(_as_buffer(frames[0])).cast("B")
    size = view.nbytes
    try:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=size)
        unpacker.feed(view[:_PEEK_BYTES])
        count = unpacker.read_array_header() - 2
        head = [unpacker.unpack() for _ in range(6)]  # version, tag, and four fields
        if head[:2] != [PROTOCOL_VERSION, Tag.REQUEST] or type(head[1]) is not int or not (
                Request.REQUIRED <= count <= len(Request.FIELDS)):
            return None
        start, fed = unpacker.tell(), _PEEK_BYTES
        while True:  # find the payload's end, a slice at a time
            try:
                unpacker.skip()
                break
            except msgpack.OutOfData:
                if fed >= size:
                    return None
                unpacker.feed(view[fed:fed + _SLICE_BYTES])
                fed += _SLICE_BYTES
                pause()
        end = unpacker.tell()
        if size - end > _PEEK_BYTES:  # the fields after the payload are small
            return None
        unpacker.feed(view[fed:])
        rest = [unpacker.unpack() for _ in range(count - 5)]
        if unpacker.tell() != size:
            return None
    except Exception:  # not what encode() makes: decode() says what is wrong
        return None
    message = _message_of([*head, Encoded(view[start:end]), *rest], pause)
    return message if isinstance(message, Request) else None


def expand_payload(value: Encoded, pause: Pause | None = None) -> Any:
    """The value a split request's payload holds, checked as :func:`decode` checks a
    request's payload (``ProtocolError`` if it is not one)."""
    try:
        payload = _unpack(value.data, _ext_hook((), pause), pause)
        _check_field(Request, Request.CHECKS[Request.FIELDS.index("payload")], payload, pause)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"undecodable request payload: {type(exc).__name__}: {exc}") from None
    return payload


def packed_floats(value: Encoded) -> bool:
    """Whether ``value`` is a list of float64s exactly as msgpack writes one (the shortest
    array header): its bytes are then the canonical form of the list they hold."""
    view = memoryview(value.data).cast("B")
    size = view.nbytes
    if size == 0:
        return False
    first = view[0]
    if 0x90 <= first <= 0x9F:
        count, head = first & 0x0F, 1
    elif first == 0xDC and size >= 3:
        count, head = int.from_bytes(view[1:3], "big"), 3
        count = count if count > 0x0F else -1
    elif first == 0xDD and size >= 5:
        count, head = int.from_bytes(view[1:5], "big"), 5
        count = count if count > 0xFFFF else -1
    else:
        return False
    if count < 0 or size != head + 9 * count:
        return False
    markers = np.frombuffer(view, dtype=np.uint8, offset=head)[::9]
    return bool((markers == _FLOAT64).all())


def peek(frames: Sequence[Any]) -> tuple[int, Any] | None:
    """The tag and first field of a message that may not decode as a whole, read element by
    element (so the hub can still answer its sender); None when not even those can be read."""
    try:
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(bytes(memoryview(_as_buffer(frames[0]))[:_PEEK_BYTES]))
        if unpacker.read_array_header() < 3:
            return None
        version, tag, first = unpacker.unpack(), unpacker.unpack(), unpacker.unpack()
    except Exception:  # truncated, not msgpack, not an array: nothing to go by
        return None
    if type(version) is not int or version != PROTOCOL_VERSION or type(tag) is not int:
        return None
    return tag, first

