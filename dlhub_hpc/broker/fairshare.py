"""Fair shares under contention: deficit round robin, first across users, then within a user.

Pure data structures, no clock and no sockets. ``DeficitRoundRobin`` picks which of several
backlogged flows goes next, each flow getting ``quantum`` units of work per round (the
classic Shreedhar-Varghese scheme; an item costs one unit unless told otherwise).
``FairQueue`` is the queue of one servable's method: requests wait in a deque per user and
leave in deficit round robin across users, so one caller's flood of a thousand requests
delays another's single request by at most one request per user ahead of it, not by the
whole flood. It keeps the parts of a ``deque`` the broker uses (``append``, ``appendleft``,
``popleft``, ``[0]``, ``clear``, iteration, ``len``), so a queue is swapped for it whole.

``pick_flow`` is the second level: when a worker that may serve several servables frees
(a pool), which servable's queue it takes next.

``QueueShares`` is admission: how many requests a servable may queue, and how many of them
one user may hold while others wait.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

__all__ = ["DeficitRoundRobin", "FairQueue", "QueueShares", "peek_flow", "pick_flow"]


class DeficitRoundRobin(Generic[K]):
    """The order in which backlogged flows are served, by deficit round robin.

    ``activate(k)`` when flow ``k`` gets work; ``next(cost)`` names the flow that sends
    next (and charges it); ``deactivate(k)`` when it has none left. A flow's deficit is
    reset when it leaves the round, so an idle flow saves no credit for later.
    """

    def __init__(self, quantum: float = 1.0, weights: dict[K, float] | None = None) -> None:
        if quantum <= 0:
            raise ValueError(f"quantum must be positive, not {quantum}")
        self.quantum = quantum
        self.weights = weights or {}
        self._ring: deque[K] = deque()
        self._deficit: dict[K, float] = {}

    def __repr__(self) -> str:
        return f"DeficitRoundRobin(quantum={self.quantum!r}, active={list(self._ring)!r})"

    def __len__(self) -> int:
        return len(self._ring)

    def __contains__(self, flow: object) -> bool:
        return flow in self._deficit

    def activate(self, flow: K, *, first: bool = False) -> None:
        """``flow`` has work; ``first`` puts it at the head of the round (a retried item)."""
        if flow in self._deficit:
            if first and self._ring[0] != flow:
                self._ring.remove(flow)
                self._ring.appendleft(flow)
            return
        self._deficit[flow] = 0.0
        if first:
            self._ring.appendleft(flow)
        else:
            self._ring.append(flow)

    def deactivate(self, flow: K) -> None:
        if self._deficit.pop(flow, None) is not None:
            self._ring.remove(flow)

    def peek(self, cost: float = 1.0) -> K:
        """The flow ``next(cost)`` would name, without charging it."""
        if not self._ring:
            raise IndexError("no flow has work")
        head = self._ring[0]
        if self._deficit[head] >= cost or len(self._ring) == 1:  # no round to play out
            return head
        deficit = dict(self._deficit)
        ring = deque(self._ring)
        return self._serve(ring, deficit, cost)

    def next(self, cost: float = 1.0) -> K:
        """The flow that sends an item of ``cost`` now; it is charged for it."""
        if not self._ring:
            raise IndexError("no flow has work")
        return self._serve(self._ring, self._deficit, cost)

    def _serve(self, ring: deque[K], deficit: dict[K, float], cost: float) -> K:
        while True:
            flow = ring[0]
            if deficit[flow] >= cost:
                deficit[flow] -= cost
                if deficit[flow] < min(cost, self._quantum(flow)):
                    ring.rotate(-1)  # its turn is used up: the next flow's turn
                return flow
            deficit[flow] += self._quantum(flow)
            if deficit[flow] < cost:
                ring.rotate(-1)

    def _quantum(self, flow: K) -> float:
        return self.quantum * self.weights.get(flow, 1.0)


class FairQueue(Generic[T]):
    """Items in a deque per flow (a user), leaving in deficit round robin across flows.

    ``[0]`` is the item ``popleft`` returns next. ``appendleft`` puts an item back at the
    very front (its flow goes first), as a retried request is.
    """

    def __init__(self, flow_of: Callable[[T], Hashable], items: Iterable[T] = ()) -> None:
        self._flow_of = flow_of
        self._flows: dict[Hashable, deque[T]] = {}
        self._order: DeficitRoundRobin[Hashable] = DeficitRoundRobin()
        self._len = 0
        for item in items:
            self.append(item)

    def __repr__(self) -> str:
        return f"FairQueue({len(self)} items, {len(self._flows)} flows)"

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[T]:
        for items in list(self._flows.values()):
            yield from items

    def __getitem__(self, index: int) -> T:
        if index != 0:
            raise IndexError("a FairQueue shows only its next item, [0]")
        if not self._len:
            raise IndexError("the queue is empty")
        return self._flows[self._order.peek()][0]

    def flows(self) -> dict[Hashable, int]:
        """Items waiting per flow."""
        return {flow: len(items) for flow, items in self._flows.items()}

    def append(self, item: T) -> None:
        flow = self._flow_of(item)
        self._flows.setdefault(flow, deque()).append(item)
        self._order.activate(flow)
        self._len += 1

    def appendleft(self, item: T) -> None:
        flow = self._flow_of(item)
        self._flows.setdefault(flow, deque()).appendleft(item)
        self._order.activate(flow, first=True)
        self._len += 1

    def popleft(self) -> T:
        if not self._len:
            raise IndexError("pop from an empty FairQueue")
        flow = self._order.next()
        items = self._flows[flow]
        item = items.popleft()
        self._len -= 1
        if not items:
            del self._flows[flow]
            self._order.deactivate(flow)
        return item

    def clear(self) -> None:
        for flow in list(self._flows):
            self._order.deactivate(flow)
        self._flows.clear()
        self._len = 0


def peek_flow(order: DeficitRoundRobin[K], backlogged: Callable[[K], bool]) -> K | None:
    """The flow ``pick_flow`` would name, not charged; flows found empty leave the round."""
    while len(order):
        flow = order.peek()
        if backlogged(flow):
            return flow
        order.deactivate(flow)
    return None


def pick_flow(order: DeficitRoundRobin[K], backlogged: Callable[[K], bool]) -> K | None:
    """The next flow of ``order`` that still has work (``backlogged``), charged one unit;
    flows found empty leave the round. None when no flow has work."""
    return None if peek_flow(order, backlogged) is None else order.next()


class QueueShares(Generic[K]):
    """Requests queued per servable and per user of it, counted as they come and go (no
    recount per request), and who may queue one more.

    The rule: a servable queues at most ``limit`` requests over all its methods. Each of
    the N users with requests queued for it (the caller included) is owed ``limit // N``
    of them (at least one): a user below that share is admitted even when the others
    filled the queue, so one caller's flood never locks the rest out, up to a ceiling of
    twice the limit. A user alone may use the whole limit.
    """

    def __init__(self) -> None:
        self._total: dict[K, int] = {}
        self._users: dict[K, dict[str, int]] = {}

    def __repr__(self) -> str:
        return f"QueueShares({sum(self._total.values())} queued, {len(self._total)} servables)"

    def refusal(self, key: K, user: str, limit: int) -> tuple[str, int, int, int] | None:
        """Why ``user`` may not queue one more request for ``key``: ``(bound, queued,
        theirs, share)``, bound ``servable``, ``share`` or ``ceiling``; None when they may."""
        total = self._total.get(key, 0)
        if total < limit:
            return None
        users = self._users.get(key, {})
        theirs = users.get(user, 0)
        share = max(1, limit // (len(users) + (theirs == 0)))
        if total >= 2 * limit:
            return "ceiling", total, theirs, share
        if theirs < share:
            return None
        return ("share" if len(users) > 1 else "servable"), total, theirs, share

    def add(self, key: K, user: str) -> None:
        self._total[key] = self._total.get(key, 0) + 1
        users = self._users.setdefault(key, {})
        users[user] = users.get(user, 0) + 1

    def remove(self, key: K, user: str) -> None:
        total = self._total[key] - 1
        users = self._users[key]
        left = users[user] - 1
        if left:
            users[user] = left
        else:
            del users[user]
        if total:
            self._total[key] = total
        else:
            del self._total[key], self._users[key]

    def clear(self, key: K) -> None:
        """``key``'s queue was emptied at once (its requests failed)."""
        self._total.pop(key, None)
        self._users.pop(key, None)

    def queued(self, key: K) -> int:
        return self._total.get(key, 0)

    def of_users(self, key: K) -> dict[str, int]:
        """Requests queued for ``key`` per user (a copy)."""
        return dict(self._users.get(key, {}))
