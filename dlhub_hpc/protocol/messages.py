"""The messages: one small dataclass per tag, each with the types its fields may carry and
the checks decode makes of them (``Message.CHECKS``), registered by tag for dispatch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from enum import IntEnum
from operator import attrgetter
from typing import Any, ClassVar, TypeVar

import numpy as np

from dlhub_hpc.protocol.constants import _WIRE_DEPTH, MAX_DEPTH, PROTOCOL_VERSION


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
    RECALL = 21
    CHUNK = 30  # chunked transfers of large arrays (dlhub_hpc.transfer) start at 30
    CREDIT = 31
    ABORT = 32
    LOCAL_OFFER = 40  # the same-node fast path (dlhub_hpc.localpath)
    # 50 is a bundle's (dlhub_hpc.protocol.bundle): an envelope, not a message of its own


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
    # [PROTOCOL_VERSION, tag, *fields] of a message, as encode() packs it (made once a class)
    HEADER: ClassVar[Callable[[Message], list[Any]]]


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
    cls.HEADER = _header_of(int(cls.TAG), cls.FIELDS)
    _BY_TAG[cls.TAG] = cls
    return cls


def _header_of(tag: int, names: tuple[str, ...]) -> Callable[[Message], list[Any]]:
    get = attrgetter(*names)
    if len(names) == 1:
        return lambda msg: [PROTOCOL_VERSION, tag, get(msg)]
    return lambda msg: [PROTOCOL_VERSION, tag, *get(msg)]


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
    # a pooled worker (servable ""): {"spec": "owner:alice", "budget": bytes}, and "image":
    # the container image it runs in, if any (``PoolSpec.to_wire``)
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
    ...] least recently used first, "evicted": [ref, ...]} (``worker/models.py``), and
    "installed": {package: version} for the packages the servable pins that it has.
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
    """Either way: the sender is alive. From the hub, ``interval`` is how many seconds a
    worker's heartbeats should now be apart (the hub spaces them out as its fleet grows)."""

    TAG = Tag.HEARTBEAT
    TYPES = (str, (*_NUM, _NONE))
    OMIT_LAST_NONE = True
    sender: str
    interval: float | None = None


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
class Recall(Message):
    """Hub -> worker: batch ``batch_id``, sent ahead while the worker ran another, is taken
    back (that other one ran too long): skip it if it has not started. The hub has queued
    its requests again; a result for it still sent is dropped as stale."""

    TAG = Tag.RECALL
    TYPES = (int,)
    batch_id: int


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

