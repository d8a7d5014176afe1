"""Counters and histograms the broker's loop writes as it goes: plain ints and lists.

The loop is hot (about 10 us a request), so recording takes no lock and calls nothing of
prometheus-client: a bisect and two additions per observation. The scrape thread reads
these tables through ``collector.HubCollector`` and copies them first; a read that races a
write may see one observation in the count and not yet in the sum, never a broken table.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dlhub_hpc import errors

logger = logging.getLogger(__name__)

# Seconds: from a memo hit (microseconds) to a request that started a pilot's block on
# demand and waited minutes in the batch queue (past the last bucket, a quantile reads as
# that bucket).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# Items: powers of two up to the largest max_batch_size a hub allows.
BATCH_BUCKETS = tuple(float(2**i) for i in range(13))

SeriesKey = tuple[str, int, str]  # (servable, version, method)


def _known_errors() -> frozenset[str]:
    found, todo = set(), [errors.DlhubHpcError]
    while todo:
        cls = todo.pop()
        if cls.__module__ == errors.__name__:
            found.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return frozenset(found)


# Error labels are the classes of errors.py (its tree) and "Other": a worker reports its
# error's type by name, and a servable could name a new one for every request.
KNOWN_ERRORS = _known_errors()
OTHER = "Other"


def error_label(kind: object) -> str:
    """``kind`` if it names an error of errors.py, else ``OTHER``: a bounded label set."""
    return kind if isinstance(kind, str) and kind in KNOWN_ERRORS else OTHER


class Histogram:
    """Cumulative-bucket histogram data, without locks (one writer: the loop)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # first bound >= value: le
        self.sum += value

    def cumulative(self) -> tuple[list[tuple[str, int]], float]:
        """``[(le, count), ...]`` ending with ``+Inf``, and the sum: what a scrape shows."""
        counts, total = list(self.counts), self.sum
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out, total


@dataclass(eq=False)
class Series:
    """Everything recorded for one (servable, version, method)."""

    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    queue_wait: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    batch_wait: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    inference: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    batch_size: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))
    ok: int = 0
    memo_hits: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # error type -> replies


class Answered(Protocol):
    """What the recorder reads of a request (``broker.events.Pending``)."""

    servable: tuple[str, int]
    method: str
    arrived: float


class BrokerMetrics:
    """Per servable and method: replies, errors by type, latencies and batch sizes."""

    def __init__(self) -> None:
        self.series: dict[SeriesKey, Series] = {}
        self.rejected: dict[str, int] = {}  # error type -> requests refused before queueing
        self._held_since: dict[tuple[str, int], float] = {}

    def __repr__(self) -> str:
        return f"BrokerMetrics(series={len(self.series)})"

    def _series(self, servable: tuple[str, int], method: str) -> Series:
        key = (servable[0], servable[1], method)
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = Series()
        return s

    def answered(self, p: Answered, ok: bool, error: dict[str, Any] | None,
                 now: float | None) -> None:
        """``p`` was answered (by a worker, or failed); ``now`` None: at shutdown."""
        s = self._series(p.servable, p.method)
        if ok:
            s.ok += 1
        else:
            kind = error_label(error.get("type") if isinstance(error, dict) else None)
            s.errors[kind] = s.errors.get(kind, 0) + 1
        if now is not None:
            s.latency.observe(now - p.arrived)

    def memo_hit(self, p: Answered) -> None:
        s = self._series(p.servable, p.method)
        s.ok += 1
        s.memo_hits += 1
        s.latency.observe(0.0)  # answered in the turn it arrived

    def refused(self, error_type: str) -> None:
        """A request refused before it was queued: no servable label (names are untrusted)."""
        kind = error_label(error_type)
        self.rejected[kind] = self.rejected.get(kind, 0) + 1

    def held(self, servable: tuple[str, int], now: float) -> None:
        """A part-full batch of ``servable`` waits for more items (since the first hold)."""
        self._held_since.setdefault(servable, now)

    def left_queue(self, servable: tuple[str, int], now: float) -> float:
        """A batch of ``servable`` leaves the queue now: how long it was held part-full
        (0 when it went at once). The hold ends here, whether or not the batch runs."""
        return now - self._held_since.pop(servable, now)

    def batch_ran(self, servable: tuple[str, int], method: str, size: int,
                  held: float) -> None:
        """A batch of ``size`` runs (once: a batch sent ahead and taken back before its turn
        is not one), after ``held`` seconds held part-full."""
        s = self._series(servable, method)
        s.batch_size.observe(size)
        s.batch_wait.observe(held)

    def started(self, servable: tuple[str, int], method: str, items: Iterable[Answered],
                now: float) -> None:
        """``items`` start to run: each waited since it arrived."""
        observe = self._series(servable, method).queue_wait.observe
        for p in items:
            observe(now - p.arrived)

    def batch_done(self, servable: tuple[str, int], method: str, elapsed: float) -> None:
        """A worker ran a batch in ``elapsed`` seconds (its own measure of the model)."""
        self._series(servable, method).inference.observe(elapsed)

    def copy_series(self) -> list[tuple[SeriesKey, Series]]:
        """The series table as it is now, for a reader on another thread."""
        for _ in range(5):  # a new series added mid-copy: try again
            try:
                return list(self.series.items())
            except RuntimeError:
                continue
        return []


# Seconds dlhub_loop_lag_max_seconds looks back: longer than a scrape interval, so that
# every scraper (Prometheus, a second one, ``top``) sees each spike; a scrape resets nothing.
LAG_WINDOW = 60


class LoopMetrics:
    """The hub loop itself: bytes through its sockets, how late and how busy it runs."""

    __slots__ = ("_lag_seconds_of", "_lag_slots", "busy_seconds", "lag_seconds",
                 "received_bytes", "sent_bytes", "turns")

    def __init__(self) -> None:
        self.received_bytes = 0
        self.sent_bytes = 0
        self.busy_seconds = 0.0  # time spent handling, not waiting in poll
        self.turns = 0
        self.lag_seconds = 0.0  # how late the last timed wake-up came
        # the latest wake-up of each of the last LAG_WINDOW seconds, and which second it was
        self._lag_slots = [0.0] * LAG_WINDOW
        self._lag_seconds_of = [-LAG_WINDOW] * LAG_WINDOW

    def __repr__(self) -> str:
        return f"LoopMetrics(turns={self.turns})"

    def woke(self, asked: float, slept: float, now: float | None = None) -> None:
        """The loop asked poll for ``asked`` seconds and came back after ``slept``, at
        ``now`` (monotonic seconds)."""
        late = slept - asked
        if late > 0:
            self.lag_seconds = late
            second = int(time.monotonic() if now is None else now)
            slot = second % LAG_WINDOW
            if self._lag_seconds_of[slot] != second:
                self._lag_seconds_of[slot] = second
                self._lag_slots[slot] = late
            elif late > self._lag_slots[slot]:
                self._lag_slots[slot] = late

    def turn(self, seconds: float) -> None:
        self.turns += 1
        self.busy_seconds += seconds

    def max_lag(self, now: float | None = None) -> float:
        """The latest wake-up in the last ``LAG_WINDOW`` seconds."""
        second = int(time.monotonic() if now is None else now)
        return max((late for late, at in zip(self._lag_slots, self._lag_seconds_of,
                                              strict=True)
                    if second - at < LAG_WINDOW), default=0.0)


def frames_bytes(frames: Iterable[Any]) -> int:
    """Bytes in a message's frames (bytes, zmq frames or memoryviews of arrays)."""
    return sum(f.nbytes if isinstance(f, memoryview) else len(f) for f in frames)
