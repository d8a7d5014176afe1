"""The books a ``BrokerState`` must keep after every event (``BrokerState.validate``).

Each check returns what is wrong, in words; an empty list means the books balance. The
tests run these after every ``handle()`` (tests/unit/conftest.py), as dask's worker
state machine runs its ``validate``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from dlhub_hpc.broker.events import Pending

if TYPE_CHECKING:
    from dlhub_hpc.broker.state import BrokerState

logger = logging.getLogger(__name__)

_STATES = {"loading", "idle", "busy", "sending", "draining"}


def problems(state: BrokerState) -> list[str]:
    """Everything wrong with ``state``'s books."""
    return [*_workers(state), *_batches(state), *_idle(state), *_room(state), *_queues(state),
            *_deadlines(state), *_flights(state), *_pools(state)]


def _workers(s: BrokerState) -> Iterator[str]:
    for identity, w in s._workers.items():
        if w.identity != identity:
            yield f"worker {identity!r} is filed as {w.identity!r}"
        if w.state not in _STATES:
            yield f"worker {w.worker_id} is in no known state ({w.state!r})"
        if w.draining != (w.state == "draining"):
            yield f"worker {w.worker_id} is {w.state} with draining={w.draining}"
        if (w.state == "busy") != (w.batch_id is not None) and w.state != "draining":
            yield f"worker {w.worker_id} is {w.state} with batch {w.batch_id}"
        if w.batch_id is not None and w.batch_id not in s._batches:
            yield f"worker {w.worker_id} holds batch {w.batch_id}, which is not in flight"
        if w.next_batch is not None and (w.batch_id is None or w.next_batch not in s._batches
                                         or w.pooled):
            yield (f"worker {w.worker_id} holds batch {w.next_batch} ahead of "
                   f"{w.batch_id} (pooled: {w.pooled})")
    counts = Counter(w.servable for w in s._workers.values() if not w.pooled)
    for key in set(counts) | set(s._worker_count):
        if s._worker_count[key] != counts[key]:
            yield f"{key} counts {s._worker_count[key]} workers; {counts[key]} are known"


def _batches(s: BrokerState) -> Iterator[str]:
    in_flight: Counter[tuple[str, int]] = Counter()
    for batch_id, flight in s._batches.items():
        worker = s._workers.get(flight.worker)
        if worker is None:
            yield f"batch {batch_id} is at worker {flight.worker!r}, which is not known"
        elif batch_id not in (worker.batch_id, worker.next_batch):
            yield f"batch {batch_id} is at {worker.worker_id}, which holds {worker.batch_id}"
        elif flight.ahead != (batch_id == worker.next_batch):
            yield f"batch {batch_id} at {worker.worker_id} is marked ahead={flight.ahead}"
        elif worker.servable != flight.servable:
            yield f"batch {batch_id} of {flight.servable} is at a worker of {worker.servable}"
        if not flight.items:
            yield f"batch {batch_id} holds no requests"
        for p in flight.items:
            if p.queued:
                yield f"request {p.request_id} is in batch {batch_id} and marked queued"
        in_flight[flight.servable] += len(flight.items)
    for key in set(in_flight) | set(s._in_flight):
        if s._in_flight[key] != in_flight[key]:
            yield f"{key} counts {s._in_flight[key]} items in flight; batches hold {in_flight[key]}"


def _idle(s: BrokerState) -> Iterator[str]:
    listed: set[bytes] = set()
    for key, idle in s._idle.items():
        for identity in idle:
            listed.add(identity)
            w = s._workers.get(identity)
            if w is None:
                yield f"{key} lists {identity!r} as idle, which is not known"
            elif w.servable != key or w.state != "idle":
                yield f"{key} lists {w.worker_id} as idle; it is {w.state} for {w.servable}"
    for identity, w in s._workers.items():
        if w.state == "idle" and identity not in listed and not w.pooled:
            yield f"worker {w.worker_id} is idle but not listed for work"


def _room(s: BrokerState) -> Iterator[str]:
    for key, room in s._room.items():
        for identity in room:
            w = s._workers.get(identity)
            if w is None:
                yield f"{key} lists {identity!r} as having room, which is not known"
            elif (w.servable != key or w.state != "busy" or w.pooled
                  or w.next_batch is not None):
                yield (f"{key} lists {w.worker_id} as having room; it is {w.state} for "
                       f"{w.servable}, pooled {w.pooled}, ahead {w.next_batch}")


def _queues(s: BrokerState) -> Iterator[str]:
    for key, methods in s._queues.items():
        for method, queue in methods.items():
            live = [p for p in queue.items if not p.done]
            if queue.live != len(live):
                yield f"{key}.{method} counts {queue.live} queued; {len(live)} are unanswered"
            for p in live:
                if not p.queued or p.servable != key or p.method != method:
                    yield f"request {p.request_id} is in {key}.{method}'s queue by mistake"


def _live(s: BrokerState) -> Iterator[Pending]:
    """Every request the state still owes an answer (queued, at a worker, or following)."""
    for methods in s._queues.values():
        for queue in methods.values():
            yield from (p for p in queue.items if not p.done)
    for flight in s._batches.values():
        yield from (p for p in flight.items if not p.done)
    for followers in s._flights.values():
        yield from (p for p in followers if not p.done)


def _deadlines(s: BrokerState) -> Iterator[str]:
    heap = s._deadlines
    for i in range(1, len(heap)):
        if heap[(i - 1) // 2][:2] > heap[i][:2]:
            yield f"the deadline heap is out of order at {i}"
            break
    held = {id(p) for _, _, p in heap}
    for p in _live(s):
        if p.deadline is not None and id(p) not in held:
            yield f"request {p.request_id} has a deadline the heap does not hold"


def _flights(s: BrokerState) -> Iterator[str]:
    leaders: Counter[bytes] = Counter()
    for p in _live(s):
        if p.memo_key is not None:
            leaders[p.memo_key] += 1
            if p.memo_key not in s._flights:
                yield f"request {p.request_id} leads a single flight the state forgot"
    for key, followers in s._flights.items():
        if leaders[key] != 1:
            yield f"single flight {key.hex()[:12]} has {leaders[key]} leaders"
        for f in followers:
            if f.queued or f.memo_key is not None:
                yield f"request {f.request_id} follows a flight but is queued or leads one"


def _pools(s: BrokerState) -> Iterator[str]:
    """Pooled workers: the book's members are the pooled workers; the free ones are idle;
    one loading says what; a busy one holds what its batch runs."""
    book = s.pools
    pooled = {i for i, w in s._workers.items() if w.pooled}
    for identity in pooled ^ set(book.members):
        yield f"worker {identity!r} is pooled in one book and not the other"
    for identity in book.free:
        if identity not in book.members:
            yield f"pool lists {identity!r} as free, which is no member"
    for identity, m in book.members.items():
        w = s._workers.get(identity)
        if w is None:
            continue
        if (w.state == "idle") != (identity in book.free):
            yield f"pooled worker {w.worker_id} is {w.state}; free: {identity in book.free}"
        if (w.state == "loading") != (m.loading is not None):
            yield f"pooled worker {w.worker_id} is {w.state} while loading {m.loading}"
        if m.loading is not None and m.loading != w.servable:
            yield f"pooled worker {w.worker_id} loads {m.loading} but is filed for {w.servable}"
        if w.state == "busy" and w.servable not in m.holds:
            yield f"pooled worker {w.worker_id} runs {w.servable}, which it does not hold"
