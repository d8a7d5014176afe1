"""Hub metrics: what the broker records, and the series a scrape shows for it."""

from __future__ import annotations

import urllib.request
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dlhub_hpc.broker.state import BrokerState
from dlhub_hpc.metrics import BrokerMetrics, LoopMetrics
from dlhub_hpc.metrics.collector import METRIC_NAMES
from dlhub_hpc.metrics.exporter import MetricsServer
from dlhub_hpc.metrics.hub import hub_registry
from dlhub_hpc.metrics.recorder import Histogram, frames_bytes
from dlhub_hpc.protocol import BatchResult
from tests.unit.test_broker_state import ADD, Catalog, Hub, batches, only_batch

MEMO = replace(ADD, deterministic=True)
DELAYED = replace(ADD, max_batch_size=4, max_batch_delay=0.5)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def metered(*infos: object) -> tuple[Hub, CollectorRegistry, LoopMetrics]:
    hub = Hub(Catalog(*infos))  # type: ignore[arg-type]
    hub.state.metrics = BrokerMetrics()
    loop = LoopMetrics()
    registry = hub_registry(hub.state.view, hub.state.metrics, loop,
                            lambda: [("demo/add", "RUNNING"), ("demo/add", "RUNNING")])
    return hub, registry, loop


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.1, 0.5, 2.0):
        h.observe(v)
    assert h.cumulative() == ([("0.1", 1), ("1.0", 2), ("+Inf", 3)], 2.6)


def test_a_request_flowing_through_changes_its_series() -> None:
    hub, registry, _ = metered(MEMO)
    hub.start("w1")
    assert hub.request("r1", [1, 2]) != []  # idle worker, quiet servable: sent at once
    before = samples(registry)
    labels = {"servable": "demo/add", "version": "1", "method": "run"}
    assert value(before, "dlhub_queue_wait_seconds_count", **labels) == 1
    assert value(before, "dlhub_batch_size_count", **labels) == 1
    assert value(before, "dlhub_in_flight", servable="demo/add", version="1") == 1
    assert value(before, "dlhub_workers", servable="demo/add", version="1", state="busy") == 1
    assert value(before, "dlhub_pilot_blocks", servable="demo/add", state="RUNNING") == 2
    hub.now = 0.25
    [batch] = [b for _, b in batches(hub.request("r2", [3, 4]))] or [None]
    assert batch is None  # the worker is busy: r2 waits in the queue
    assert value(samples(registry), "dlhub_queue_depth", servable="demo/add", version="1") == 1
    hub.now = 0.5
    _, second = only_batch(hub.result("w1", 1, 3.0))  # r1 answered; r2 goes out
    after = samples(registry)
    assert value(after, "dlhub_replies_total", outcome="ok", **labels) == 1
    assert value(after, "dlhub_request_latency_seconds_sum", **labels) == 0.5
    assert value(after, "dlhub_queue_wait_seconds_sum", **labels) == 0.25  # r2 waited 0.25
    assert value(after, "dlhub_inference_seconds_count", **labels) == 1
    assert value(after, "dlhub_requests_total") == 2
    assert len(hub.request("r3", [1, 2])) == 1  # same input as r1: answered from memo
    found = samples(registry)
    assert value(found, "dlhub_memo_hits_total") == 1
    assert value(found, "dlhub_replies_total", outcome="ok", **labels) == 2
    assert second.payloads == [[3.0, 4.0]]


def test_errors_are_counted_by_type_and_refusals_carry_no_servable_name() -> None:
    hub, registry, _ = metered(ADD)
    hub.request("r1", servable="nobody/such-thing-0123")
    hub.request("r2", method="missing")
    found = samples(registry)
    assert value(found, "dlhub_refused_total", type="ServableNotFound") == 1
    assert value(found, "dlhub_refused_total", type="MethodNotFound") == 1
    assert not any("nobody/such-thing-0123" in str(key) for key in found)
    hub.start("w1")
    _, batch = only_batch(hub.request("r3", [1, 2]))
    error = {"type": "ExecutionError", "message": "boom", "details": {}}
    hub.send("w1", BatchResult(batch.batch_id, [[False, error]]))
    found = samples(registry)
    labels = {"servable": "demo/add", "version": "1", "method": "run"}
    assert value(found, "dlhub_errors_total", type="ExecutionError", **labels) == 1
    assert value(found, "dlhub_replies_total", outcome="error", **labels) == 1


def test_a_held_batch_records_how_long_it_was_held() -> None:
    hub, registry, _ = metered(DELAYED)
    hub.start("w1")
    hub.start("w2")
    hub.request("r0", [0, 0])  # keeps w1 busy, so the servable is under load
    hub.now = 1.0
    assert batches(hub.request("r1", [1, 1])) == []  # held for more items
    hub.now = 1.2
    hub.request("r2", [2, 2])
    hub.tick(1.5)  # the oldest waited max_batch_delay: out it goes
    found = samples(registry)
    labels = {"servable": "demo/add", "version": "1", "method": "run"}
    assert value(found, "dlhub_batch_wait_seconds_sum", **labels) == 0.5
    assert value(found, "dlhub_batch_size_bucket", le="2.0", **labels) == 2


def test_every_sample_a_hub_shows_is_a_declared_name() -> None:
    hub, registry, loop = metered(ADD)
    hub.start("w1")
    hub.request("r1", [1, 2])
    loop.woke(0.01, 0.05)
    loop.turn(0.002)
    found = samples(registry)
    names = {name for name, _ in found}
    assert names <= METRIC_NAMES, names - METRIC_NAMES
    assert abs(value(found, "dlhub_loop_lag_seconds") - 0.04) < 1e-9
    assert value(found, "dlhub_loop_busy_seconds_total") == 0.002
    assert abs(samples(registry)[("dlhub_loop_lag_max_seconds", ())] - 0.04) < 1e-9


def test_every_scraper_sees_the_worst_loop_lag_of_the_last_minute() -> None:
    """top scrapes each second beside Prometheus: a scrape must not take the spike away."""
    loop = LoopMetrics()
    loop.woke(0.01, 2.01, now=100.0)  # a 2 s stall
    loop.woke(0.01, 0.02, now=101.5)
    assert loop.max_lag(now=102.0) == pytest.approx(2.0)
    assert loop.max_lag(now=102.0) == pytest.approx(2.0)  # read twice: still there
    assert loop.max_lag(now=159.0) == pytest.approx(2.0)
    assert loop.max_lag(now=160.5) == pytest.approx(0.01)  # out of the window
    assert loop.max_lag(now=300.0) == 0.0


def test_frames_bytes_counts_array_views_in_bytes() -> None:
    import numpy as np

    assert frames_bytes([b"abc", memoryview(np.zeros((2, 3)))]) == 3 + 48


def test_the_metrics_server_serves_the_registry_on_a_free_loopback_port() -> None:
    state = BrokerState(Catalog(ADD))
    state.metrics = BrokerMetrics()
    server = MetricsServer(hub_registry(state.view, state.metrics, LoopMetrics())).start()
    try:
        assert server.port > 0 and server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(server.url, timeout=10) as reply:
            text = reply.read().decode()
        assert "dlhub_requests_total 0.0" in text
    finally:
        server.stop()


def test_quantiles_interpolate_within_the_bucket_as_prometheus_does() -> None:
    from dlhub_hpc.metrics.reading import quantile, since

    buckets = [(0.1, 2.0), (0.2, 4.0), (float("inf"), 4.0)]
    assert quantile(0.5, buckets) == 0.1  # rank 2 ends the first bucket
    assert quantile(0.75, buckets) == pytest.approx(0.15)  # rank 3: half way into (0.1, 0.2]
    assert quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert since(buckets, [(0.1, 1.0), (0.2, 1.0), (float("inf"), 1.0)]) == [
        (0.1, 1.0), (0.2, 3.0), (float("inf"), 3.0)]


def test_metrics_on_a_non_loopback_address_warn_that_the_token_goes_in_clear(
        caplog: pytest.LogCaptureFixture) -> None:
    server = MetricsServer(CollectorRegistry(), "0.0.0.0", 0, token="t")
    with caplog.at_level("WARNING", logger="dlhub_hpc.metrics.exporter"):
        server.start()
    try:
        assert any("in clear" in r.getMessage() for r in caplog.records)
    finally:
        server.stop()
    caplog.clear()
    loop = MetricsServer(CollectorRegistry(), token="t")
    with caplog.at_level("WARNING", logger="dlhub_hpc.metrics.exporter"):
        loop.start()
    loop.stop()
    assert not caplog.records
