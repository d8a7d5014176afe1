"""Walltime drain on the broker's pure state machine: no request fails across a block's end."""

from __future__ import annotations

from typing import Any

import pytest

from dlhub_hpc.protocol import Bye, Drain, Hello, Ready, Shutdown

from .test_broker_state import ADD, Catalog, Hub, batches, only_batch, replies


@pytest.fixture
def hub() -> Hub:
    return Hub(Catalog(ADD), max_retries=0)  # any retry would fail a request: none may happen


def shutdowns(actions: list[Any]) -> list[tuple[bytes, str]]:
    return [(a.identity, a.message.reason) for a in actions
            if isinstance(getattr(a, "message", None), Shutdown)]


def test_a_busy_worker_that_drains_finishes_its_batch_then_is_let_go(hub: Hub) -> None:
    hub.start("w1")
    hub.start("w2")
    _, b1 = only_batch(hub.request("r1"))  # to w1, the longest idle
    _, b2 = only_batch(hub.request("r2"))  # to w2
    assert hub.send("w1", Drain("w1", "walltime in 30s")) == []  # it still holds r1
    assert hub.state.snapshot()["workers"][0]["state"] == "draining"
    assert batches(hub.request("r3")) == []  # both busy: r3 waits

    out = hub.result("w1", b1.batch_id, 3.0)
    assert replies(out)["r1"].ok
    assert shutdowns(out) == [(b"w1", "drained")], "w1 is let go once it holds nothing"
    assert batches(out) == [], "a draining worker never gets new work"

    out = hub.result("w2", b2.batch_id, 3.0)
    identity, b3 = only_batch(out)
    assert identity == b"w2" and len(b3.payloads) == 1  # r3 went to the worker that stays
    hub.send("w1", Bye("w1", "drained"))
    out = hub.result("w2", b3.batch_id, 3.0)
    assert replies(out)["r3"].ok
    stats = hub.state.stats
    assert stats["workers_drained"] == 1 and stats["workers_exited"] == 1
    assert stats.get("retries", 0) == 0 and stats.get("replies_error", 0) == 0


def test_a_drain_told_from_the_heartbeat_socket_marks_the_worker(hub: Hub) -> None:
    hub.start("w1")
    _, b1 = only_batch(hub.request("r1"))
    assert hub.send("w1", Drain("w1", "walltime"), identity=b"w1/hb") == []
    assert hub.state.snapshot()["workers"][0]["state"] == "draining"
    out = hub.result("w1", b1.batch_id, 3.0)
    assert shutdowns(out) == [(b"w1", "drained")] and replies(out)["r1"].ok


def test_an_idle_worker_that_drains_is_shut_down_at_once(hub: Hub) -> None:
    hub.start("w1")
    out = hub.send("w1", Drain("w1", "SIGTERM"))
    assert shutdowns(out) == [(b"w1", "drained")]
    assert hub.state.snapshot()["workers"][0]["state"] == "draining"


def test_queued_requests_wait_for_the_replacement_block(hub: Hub) -> None:
    hub.start("old")
    _, b1 = only_batch(hub.request("r1"))
    hub.send("old", Drain("old", "walltime"))
    assert batches(hub.request("r2")) == []
    out = hub.result("old", b1.batch_id, 3.0)
    assert replies(out)["r1"].ok and batches(out) == []
    out = hub.send("old", Bye("old", "drained"))
    assert replies(out) == {}, "queued requests are not failed when the draining worker leaves"
    assert hub.state.snapshot()["servables"]["demo/add@1"]["queued"] == 1

    hub.hello("new")
    identity, b2 = only_batch(hub.send("new", Ready("new")))
    assert identity == b"new" and b2.payloads == [[1.0, 2.0]]
    assert replies(hub.result("new", b2.batch_id, 3.0))["r2"].ok


def test_a_draining_worker_that_reports_ready_gets_no_work(hub: Hub) -> None:
    hub.hello("w1")
    out = hub.send("w1", Drain("w1", "walltime"))  # drained while still loading
    assert shutdowns(out) == [(b"w1", "drained")]
    assert hub.send("w1", Ready("w1")) == []
    assert batches(hub.request("r1")) == []


def test_drain_twice_and_drain_from_a_stranger(hub: Hub) -> None:
    hub.start("w1")
    assert shutdowns(hub.send("w1", Drain("w1", "walltime"))) == [(b"w1", "drained")]
    assert hub.send("w1", Drain("w1", "walltime")) == []
    reasons = shutdowns(hub.send("ghost", Drain("ghost", "walltime")))
    assert reasons and reasons[0][0] == b"ghost" and "does not know you" in reasons[0][1]
    assert hub.state.stats["workers_drained"] == 1


def test_the_snapshot_shows_ranks_and_gpu_binding(hub: Hub) -> None:
    binding = {"env": "CUDA_VISIBLE_DEVICES", "devices": "1", "local_rank": 3}
    hub.send("w1", Hello("w1", "demo/add", None, "gpu-node", 77, "block-2", 2, binding))
    hub.send("w1", Ready("w1"))
    (worker,) = hub.state.snapshot()["workers"]
    assert worker["ranks"] == 2
    assert worker["gpus"] == "CUDA_VISIBLE_DEVICES=1"
