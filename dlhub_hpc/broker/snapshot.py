"""What the broker's state looks like from outside: a frozen copy, taken on its loop thread.

Only the loop thread reads or writes a ``BrokerState``. The loop publishes a ``Snapshot``
(``BrokerServer.published``) that other threads (the pilots' scaling thread, status
replies finished off the loop) read without a lock: nothing in it can change.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from dlhub_hpc.broker.events import InFlight, RequestQueue, ServableKey, WorkerInfo

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class QueueView:
    """One servable version's requests: waiting in its queues, and at its workers."""

    queued: int = 0
    in_flight: int = 0


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One worker, as ``dlhub-hpc status`` shows it."""

    worker_id: str
    servable: str  # name@version
    state: str
    host: str
    pid: int
    block: str | None
    batches: int
    items: int
    ranks: int
    gpus: str | None  # CUDA_VISIBLE_DEVICES=0,1 for a worker bound to GPUs


_WORKER_FIELDS = tuple(WorkerView.__dataclass_fields__)


def _frozen(data: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(data))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Queues, workers and counters of one broker at one moment; immutable."""

    servables: Mapping[str, QueueView] = field(default_factory=lambda: _frozen({}))
    workers: tuple[WorkerView, ...] = ()
    stats: Mapping[str, int] = field(default_factory=lambda: _frozen({}))
    changes: int = -1  # the state's change count when taken (-1: before the first)
    # name@version -> the load error of a version whose workers all failed to load it
    load_failures: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: _frozen({}))
    # pooled workers (broker/pools.py PoolBook.view): what each holds, and the counters
    pools: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))

    def as_dict(self) -> dict[str, Any]:
        """As plain data (fresh dicts and lists), the shape status replies carry."""
        return {
            "servables": {ref: {"queued": q.queued, "in_flight": q.in_flight}
                          for ref, q in self.servables.items()},
            "workers": [{f: getattr(w, f) for f in _WORKER_FIELDS} for w in self.workers],
            "stats": dict(self.stats),
            "load_failures": {ref: dict(e) for ref, e in self.load_failures.items()},
            "pools": copy.deepcopy(dict(self.pools)),
        }


def take_snapshot(queues: Mapping[ServableKey, Mapping[str, RequestQueue]],
                  batches: Iterable[InFlight], workers: Iterable[WorkerInfo],
                  stats: Mapping[str, int], changes: int,
                  load_failures: Mapping[str, Mapping[str, Any]] | None = None, *,
                  pools: Mapping[str, Any] | None = None) -> Snapshot:
    """A ``Snapshot`` of the state's own tables (called on the loop thread only)."""
    counts: dict[str, list[int]] = {}
    for (name, version), methods in queues.items():
        entry = counts.setdefault(f"{name}@{version}", [0, 0])
        entry[0] += sum(q.live for q in methods.values())
    for flight in batches:  # the flight names its servable: no lookup of its worker
        name, version = flight.servable
        entry = counts.setdefault(f"{name}@{version}", [0, 0])
        # a batch sent ahead waits at its worker: still queued, for status and scaling
        entry[0 if flight.ahead else 1] += sum(1 for p in flight.items if not p.done)
    views = tuple(
        WorkerView(w.worker_id, _serving(w), w.state, w.host, w.pid,
                   w.block, w.batches, w.items, w.ranks, _binding_text(w.binding))
        for w in workers
    )
    servables = {ref: QueueView(q, f) for ref, (q, f) in counts.items()}
    return Snapshot(_frozen(servables), views, _frozen(stats), changes,
                    _frozen(load_failures or {}), _frozen(pools or {}))


def _serving(w: WorkerInfo) -> str:
    """name@version; a pooled worker's says it is pooled (and what it runs or loads now)."""
    ref = f"{w.servable[0]}@{w.servable[1]}" if w.servable[0] else ""
    return f"pool: {ref}" if w.pooled else ref


def _binding_text(binding: dict[str, Any] | None) -> str | None:
    """``CUDA_VISIBLE_DEVICES=0,1`` for a worker bound to GPUs; None for one that is not."""
    if not binding:
        return None
    return f"{binding.get('env')}={binding.get('devices')}"
