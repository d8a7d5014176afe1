"""What flows through the broker's state machine: events in, actions out, and its records.

Plain data, no behaviour: ``state.py`` decides, ``server.py`` carries out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from dlhub_hpc.broker.fairshare import FairQueue
from dlhub_hpc.errors import DlhubHpcError
from dlhub_hpc.protocol import Message, Reply
from dlhub_hpc.registry.store import ServableRecord
from dlhub_hpc.servable.shims.calling import KEYWORD_TYPES
from dlhub_hpc.servable.spec import PipelineStage
from dlhub_hpc.servable.types import ArgType

ServableKey = tuple[str, int]  # (name, version)


def deprecation_notice(record: ServableRecord) -> str | None:
    """What a caller of a deprecated version is told with each answer."""
    if record.status != "deprecated":
        return None
    instead = f"; use {record.replacement} instead" if record.replacement else ""
    return f"{record.ref} is deprecated: {record.reason}{instead}"


@dataclass(frozen=True)
class ServableInfo:
    """What the broker needs to know of one servable version."""

    name: str
    version: int
    digest: str
    inputs: dict[str, ArgType]
    max_batch_size: int = 1
    # seconds a part-full batch may wait for more; 0: never; None: as its batches take
    max_batch_delay: float | None = 0.0
    deterministic: bool = False  # same input, same output: answers may be memoized
    pipeline: tuple[PipelineStage, ...] = ()  # a pipeline's stages; it runs in the hub
    notice: str | None = None  # sent with every answer: e.g. the version is deprecated
    # each method's default parameters, by name: what a request may override
    params: dict[str, tuple[str, ...]] = field(default_factory=dict)
    any_keywords: bool = False  # a request may pass names it does not declare (as on DLHub)
    # what a pool asks of it (broker/pools.py): whose, its tags, public, pinned packages
    owner: str = ""
    tags: tuple[str, ...] = ()
    public: bool = False
    pins: tuple[tuple[str, str], ...] = ()
    ranks: int = 1
    # the images 'dlhub-hpc build' made for it (the newest of each format): a pool takes it
    # only on workers that run one of them, the rest lack what was built into it
    images: tuple[str, ...] = ()

    @classmethod
    def from_record(cls, record: ServableRecord, images: Iterable[str] = ()) -> ServableInfo:
        block = record.spec.servable
        return cls(
            name=record.name,
            version=record.version,
            digest=record.digest,
            inputs={name: m.input for name, m in block.methods.items()},
            max_batch_size=block.max_batch_size,
            max_batch_delay=block.max_batch_delay,
            deterministic=block.deterministic,
            pipeline=tuple(block.steps or ()),
            notice=deprecation_notice(record),
            params={name: tuple(m.parameters) for name, m in block.methods.items()},
            any_keywords=block.type in KEYWORD_TYPES,
            owner=record.owner or record.name.partition("/")[0],
            tags=tuple(record.spec.datacite.subjects) + tuple(record.spec.dlhub.domains),
            public="public" in record.visible_to,
            pins=tuple(sorted(record.spec.dlhub.dependencies.items())),
            ranks=block.ranks,
            images=tuple(sorted(images)),
        )

    @cached_property
    def key(self) -> ServableKey:  # asked several times a request: made once
        return (self.name, self.version)

    @property
    def default_method(self) -> str:
        """The method a request naming none gets: ``run`` if there is one, else the first."""
        return "run" if "run" in self.inputs else next(iter(self.inputs))


Resolver = Callable[[str, "int | None"], ServableInfo]


# ---- events ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class InputPlan:
    """What a request's input is checked against when the check runs off the loop."""

    info: ServableInfo
    method: str
    declared: ArgType
    memoize: bool  # the checked input's memo key is wanted too


@dataclass(frozen=True, slots=True)
class Checked:
    """A request's input, checked off the loop (server.py's large-message lane) against
    ``declared``: the checked value or the error, and its memo key when one was wanted."""

    declared: ArgType
    payload: Any = None
    error: DlhubHpcError | None = None
    memo_key: bytes | None = None

    def value(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.payload


@dataclass(slots=True)
class FromClient:
    identity: bytes
    message: Message
    user: str = ""  # the identity CurveZMQ authenticated ('' on a hub without auth)
    checked: Checked | None = None  # the input was checked already, off the loop


@dataclass(slots=True)
class FromWorker:
    identity: bytes
    message: Message
    user: str = ""  # the worker credential's identity, worker:OWNER:KEY ('' without auth)


@dataclass(slots=True)
class Tick:
    """Time passed: expire deadlines, send heartbeats, find silent workers."""


Event = FromClient | FromWorker | Tick


# ---- actions --------------------------------------------------------------------------

@dataclass(slots=True)
class ToClient:
    identity: bytes
    message: Reply


@dataclass(slots=True)
class ToWorker:
    identity: bytes
    message: Message


@dataclass(slots=True)
class LoadServable:
    """Send the worker its servable (the shell reads the bundle from the registry)."""

    identity: bytes
    servable: ServableInfo


@dataclass(slots=True)
class ToWorkers:
    """The same message to many workers (heartbeats): the shell encodes it once."""

    identities: list[bytes]
    message: Message


@dataclass(frozen=True, slots=True)
class StartServable:
    """Start a pilot for a servable a request found with no worker (``broker/ondemand.py``)."""

    servable: ServableKey
    profile: str  # the site profile its pilot starts from


@dataclass(frozen=True, slots=True)
class ReleaseServable:
    """Stop the pilot started on demand for an idle servable: back to zero workers."""

    servable: ServableKey
    pilot: str  # '' when its start had not named a pilot yet


Action = ToClient | ToWorker | ToWorkers | LoadServable | StartServable | ReleaseServable


# ---- state ----------------------------------------------------------------------------

@dataclass(slots=True, eq=False)
class Pending:
    client: bytes
    request_id: str
    servable: ServableKey
    method: str
    payload: Any
    deadline: float | None
    seq: int
    arrived: float = 0.0
    memo_key: bytes | None = None  # set on the one request of a single flight that runs
    attempts: int = 0
    queued: bool = True
    done: bool = False
    notice: str | None = None  # ServableInfo.notice, for the reply
    parameters: dict[str, Any] | None = None  # overrides of the method's defaults
    user: str = ""  # who asked: queues share their workers fairly between users
    refused: bool = False  # a worker could not take its arrays once (expired tickets)


def _by_user(p: Pending) -> str:
    return p.user


@dataclass(slots=True, eq=False)
class RequestQueue:
    # a deque per user, served in round robin: one caller's flood does not starve others
    items: FairQueue[Pending] = field(default_factory=lambda: FairQueue(_by_user))
    live: int = 0  # items not yet answered; done ones are dropped lazily


@dataclass(slots=True, eq=False)
class WorkerInfo:
    identity: bytes
    worker_id: str
    servable: ServableKey
    host: str
    pid: int
    block: str | None
    last_seen: float
    last_sent: float = 0.0  # when the hub last sent it anything that proves the hub alive
    state: str = "loading"  # loading -> idle <-> busy; -> draining (takes no new work)
    batch_id: int | None = None  # the batch it runs
    next_batch: int | None = None  # sent ahead (HubConfig.prefetch): it runs that one next
    batches: int = 0
    items: int = 0
    ranks: int = 1
    binding: dict[str, Any] | None = None  # GPU binding the worker reported in its Hello
    draining: bool = False
    user: str = ""  # the credential it registered with; its every message must match
    pooled: bool = False  # serves a pool (broker/pools.py): servable is what it runs now


@dataclass(slots=True, eq=False)
class InFlight:
    worker: bytes
    servable: ServableKey  # the worker's, kept here so a flight names it on its own
    items: list[Pending]
    sent: float = 0.0  # when its worker took it up: sent to it free, or (ahead) its turn came
    ahead: bool = False  # sent ahead (prefetch): it waits at its worker, counted as queued
    held: float = 0.0  # how long it was held part-full before it left the queue


