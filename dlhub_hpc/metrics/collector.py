"""The hub's Prometheus series, read at scrape time from what the loop already keeps.

``HubCollector`` is a prometheus-client ``Collector``: nothing is recorded through
prometheus-client on the loop. A scrape reads the frozen ``Snapshot`` the loop publishes
(queues, workers, the state's counters), the ``BrokerMetrics`` and ``LoopMetrics`` tables,
and the pilot blocks, and turns them into metric families. Every metric name is listed in
``METRIC_NAMES`` (the Grafana dashboard's test checks its queries against it).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from dlhub_hpc.metrics.recorder import BrokerMetrics, LoopMetrics

logger = logging.getLogger(__name__)

PREFIX = "dlhub"
LABELS = ["servable", "version", "method"]
HISTOGRAMS = {  # Series attribute -> (metric, help)
    "latency": ("request_latency_seconds",
                "Arrival at the hub to reply, per request (memo hits count as 0)"),
    "queue_wait": ("queue_wait_seconds", "Arrival to dispatch to a worker, per request"),
    "batch_wait": ("batch_wait_seconds",
                   "How long a part-full batch was held for more items, per batch"),
    "inference": ("inference_seconds", "The worker's time running a batch, per batch"),
    "batch_size": ("batch_size", "Items per batch a worker ran"),
}
# Counters of the state (Snapshot.stats) with series of their own; the rest are
# dlhub_broker_events_total{event=...}.
STAT_COUNTERS = {
    "requests": ("requests_total", "Requests that reached the broker"),
    "memo_hits": ("memo_hits_total", "Requests answered from the memo cache"),
    "memo_misses": ("memo_misses_total", "Memo cache look-ups that missed"),
    "memo_evictions": ("memo_evictions_total", "Memo cache entries evicted for space"),
}
STAT_GAUGES = {
    "memo_entries": ("memo_entries", "Answers in the memo cache"),
    "memo_bytes": ("memo_bytes", "Bytes of answers in the memo cache"),
}


class SnapshotLike(Protocol):
    """What the collector reads of ``broker.snapshot.Snapshot``."""

    @property
    def servables(self) -> Mapping[str, Any]: ...
    @property
    def workers(self) -> tuple[Any, ...]: ...
    @property
    def stats(self) -> Mapping[str, int]: ...


def _name(metric: str) -> str:
    return f"{PREFIX}_{metric}"


def _ref(ref: str) -> tuple[str, str]:
    name, _, version = ref.rpartition("@")
    return (name, version) if name else (ref, "")


class HubCollector(Collector):
    """The series of one hub; register it in a ``CollectorRegistry`` and serve that."""

    def __init__(self, snapshot: Callable[[], SnapshotLike], broker: BrokerMetrics,
                 loop: LoopMetrics | None = None,
                 blocks: Callable[[], Iterable[tuple[str, str]]] | None = None) -> None:
        self._snapshot = snapshot
        self._broker = broker
        self._loop = loop
        self._blocks = blocks

    def __repr__(self) -> str:
        return f"HubCollector({self._broker!r}, {self._loop!r})"

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        yield from self._per_series()
        yield from self._stats(snap.stats)
        yield from self._queues(snap)
        yield from self._workers(snap)
        if self._blocks is not None:
            yield self._block_states()
        if self._loop is not None:
            yield from self._loop_metrics(self._loop)

    def _per_series(self) -> Iterator[Metric]:
        series = self._broker.copy_series()
        replies = CounterMetricFamily(_name("replies"), "Replies by outcome (ok, error)",
                                      labels=[*LABELS, "outcome"])
        errors = CounterMetricFamily(_name("errors"), "Error replies by error type",
                                     labels=[*LABELS, "type"])
        hists = {attr: HistogramMetricFamily(_name(metric), text, labels=LABELS)
                 for attr, (metric, text) in HISTOGRAMS.items()}
        for (name, version, method), s in series:
            labels = [name, str(version), method]
            by_type = dict(s.errors)
            replies.add_metric([*labels, "ok"], s.ok)
            replies.add_metric([*labels, "error"], sum(by_type.values()))
            for kind, n in sorted(by_type.items()):
                errors.add_metric([*labels, kind], n)
            for attr, family in hists.items():
                buckets, total = getattr(s, attr).cumulative()
                family.add_metric(labels, buckets, total)
        refused = CounterMetricFamily(_name("refused"),
                                      "Requests refused before queueing, by error type",
                                      labels=["type"])
        for kind, n in sorted(dict(self._broker.rejected).items()):
            refused.add_metric([kind], n)
        yield from (replies, errors, *hists.values(), refused)

    def _stats(self, stats: Mapping[str, int]) -> Iterator[Metric]:
        for key, (metric, text) in STAT_COUNTERS.items():
            yield CounterMetricFamily(_name(metric), text, value=stats.get(key, 0))
        for key, (metric, text) in STAT_GAUGES.items():
            yield GaugeMetricFamily(_name(metric), text, value=stats.get(key, 0))
        events = CounterMetricFamily(_name("broker_events"),
                                     "Everything else the broker counts, by name",
                                     labels=["event"])
        for key, n in sorted(stats.items()):
            if key not in STAT_COUNTERS and key not in STAT_GAUGES:
                events.add_metric([key], n)
        yield events

    def _queues(self, snap: SnapshotLike) -> Iterator[Metric]:
        queued = GaugeMetricFamily(_name("queue_depth"), "Requests waiting in the hub's queues",
                                   labels=["servable", "version"])
        flying = GaugeMetricFamily(_name("in_flight"), "Requests at workers",
                                   labels=["servable", "version"])
        for ref, view in sorted(snap.servables.items()):
            queued.add_metric(list(_ref(ref)), view.queued)
            flying.add_metric(list(_ref(ref)), view.in_flight)
        yield from (queued, flying)

    def _workers(self, snap: SnapshotLike) -> Iterator[Metric]:
        family = GaugeMetricFamily(_name("workers"), "Workers by servable and state",
                                   labels=["servable", "version", "state"])
        counts = Counter((*_ref(w.servable), w.state) for w in snap.workers)
        for labels, n in sorted(counts.items()):
            family.add_metric(list(labels), n)
        yield family

    def _block_states(self) -> Metric:
        family = GaugeMetricFamily(_name("pilot_blocks"), "Pilot blocks by servable and state",
                                   labels=["servable", "state"])
        assert self._blocks is not None
        try:
            counts = Counter(self._blocks())
        except Exception:  # a scrape reports what it can; the pilots say why in their log
            logger.exception("could not read the pilot blocks")
            counts = Counter()
        for (servable, state), n in sorted(counts.items()):
            family.add_metric([servable, state], n)
        return family

    def _loop_metrics(self, loop: LoopMetrics) -> Iterator[Metric]:
        yield CounterMetricFamily(_name("received_bytes"), "Bytes the hub's sockets received",
                                  value=loop.received_bytes)
        yield CounterMetricFamily(_name("sent_bytes"), "Bytes the hub's sockets sent",
                                  value=loop.sent_bytes)
        yield CounterMetricFamily(_name("loop_busy_seconds"),
                                  "Time the hub's loop spent handling, not waiting",
                                  value=loop.busy_seconds)
        yield GaugeMetricFamily(_name("loop_lag_seconds"),
                                "How late the loop's last timed wake-up came",
                                value=loop.lag_seconds)
        yield GaugeMetricFamily(_name("loop_lag_max_seconds"),
                                "The latest wake-up in the last minute",
                                value=loop.max_lag())


def _all_names() -> frozenset[str]:
    names = {"replies_total", "errors_total", "refused_total", "broker_events_total",
             "queue_depth", "in_flight", "workers", "pilot_blocks", "received_bytes_total",
             "sent_bytes_total", "loop_busy_seconds_total", "loop_lag_seconds",
             "loop_lag_max_seconds"}
    names |= {m for m, _ in STAT_COUNTERS.values()} | {m for m, _ in STAT_GAUGES.values()}
    for metric, _ in HISTOGRAMS.values():
        names |= {f"{metric}_bucket", f"{metric}_sum", f"{metric}_count"}
    return frozenset(_name(n) for n in names)


METRIC_NAMES = _all_names()  # every sample name a hub's /metrics may show
