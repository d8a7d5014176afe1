"""Batching in BrokerState: when a part-full batch waits, and what each batch holds."""

from __future__ import annotations

from typing import Any

import pytest

from dlhub_hpc.broker.state import ServableInfo
from dlhub_hpc.protocol import BatchResult
from tests.unit.test_broker_state import FLOATS, Catalog, Hub, batches, only_batch, replies

DELAY = 0.01
BATCHY = ServableInfo("demo/batchy", 1, "digest-batchy", {"run": FLOATS, "other": FLOATS},
                      max_batch_size=3, max_batch_delay=DELAY)
EAGER = ServableInfo("demo/eager", 1, "digest-eager", {"run": FLOATS}, max_batch_size=3)


@pytest.fixture
def hub() -> Hub:
    # Heartbeats far apart: no worker is lost and next_wakeup shows only batching.
    hub = Hub(Catalog(BATCHY, EAGER), heartbeat_interval=50.0, heartbeat_timeout=100.0)
    hub.tick(0.0)
    return hub


def at(hub: Hub, now: float, rid: str, x: float = 1.0, **kw: Any) -> list[Any]:
    hub.now = now
    kw.setdefault("servable", "demo/batchy")
    return hub.request(rid, [x], **kw)


def start_all(hub: Hub, *wids: str, servable: str = "demo/batchy") -> None:
    for wid in wids:
        assert hub.start(wid, servable) == []


def test_a_lone_request_after_a_quiet_spell_goes_at_once(hub: Hub) -> None:
    start_all(hub, "w1")
    identity, batch = only_batch(at(hub, 1.0, "r1", 1.0))
    assert identity == b"w1" and batch.payloads == [[1.0]]
    hub.result("w1", batch.batch_id, 1.0)
    identity, batch = only_batch(at(hub, 5.0, "r2", 2.0))  # gap >> delay: no waiting
    assert identity == b"w1" and batch.payloads == [[2.0]]


def test_with_no_batch_delay_close_requests_never_wait(hub: Hub) -> None:
    start_all(hub, "w1", "w2", servable="demo/eager")
    assert only_batch(at(hub, 1.0, "r1", servable="demo/eager"))[0] == b"w1"
    assert only_batch(at(hub, 1.0, "r2", servable="demo/eager"))[0] == b"w2"
    assert hub.state.next_wakeup(1.0) == pytest.approx(49.0)  # nothing held


def test_close_arrivals_are_held_until_the_oldest_waited_the_delay(hub: Hub) -> None:
    start_all(hub, "w1", "w2")
    assert only_batch(at(hub, 1.0, "r1", 1.0))[0] == b"w1"
    assert at(hub, 1.002, "r2", 2.0) == []  # w2 idle, but more may be coming
    release = 1.002 + DELAY
    assert hub.state.next_wakeup(1.002) == pytest.approx(DELAY)
    assert at(hub, 1.005, "r3", 3.0) == []
    assert hub.state.next_wakeup(1.005) == pytest.approx(release - 1.005)
    assert batches(hub.tick(1.011)) == []
    identity, batch = only_batch(hub.tick(release))
    assert identity == b"w2" and batch.payloads == [[2.0], [3.0]]


def test_a_held_batch_goes_at_once_when_it_is_full(hub: Hub) -> None:
    start_all(hub, "w1", "w2")
    at(hub, 1.0, "r1")
    assert at(hub, 1.001, "r2", 2.0) == [] and at(hub, 1.002, "r3", 3.0) == []
    identity, batch = only_batch(at(hub, 1.003, "r4", 4.0))  # max_batch_size == 3
    assert identity == b"w2" and batch.payloads == [[2.0], [3.0], [4.0]]
    assert hub.state.next_wakeup(1.003) > 1.0  # nothing is held any more


def test_under_load_a_freed_worker_takes_a_full_batch_in_arrival_order() -> None:
    hub = Hub(Catalog(BATCHY, EAGER), heartbeat_interval=50.0, heartbeat_timeout=100.0,
              prefetch=False)
    hub.tick(0.0)
    start_all(hub, "w1")
    _, first = only_batch(at(hub, 0.0, "r0", 0.0))
    for i in range(1, 6):
        assert at(hub, i / 1000, f"r{i}", float(i)) == []  # w1 is busy: queued
    hub.now = 0.1
    actions = hub.result("w1", first.batch_id, 0.0)
    assert list(replies(actions)) == ["r0"]
    _, second = only_batch(actions)
    assert second.payloads == [[1.0], [2.0], [3.0]]
    hub.now = 0.2
    _, third = only_batch(hub.result("w1", second.batch_id, 1.0, 2.0, 3.0))
    assert third.payloads == [[4.0], [5.0]]


def test_the_queue_whose_head_is_oldest_goes_first(hub: Hub) -> None:
    start_all(hub, "w1")
    _, busy = only_batch(at(hub, 0.0, "r0"))
    at(hub, 0.001, "run1", 1.0, method="run")
    at(hub, 0.002, "other1", 2.0, method="other")
    at(hub, 0.003, "other2", 3.0, method="other")  # the longer queue, but younger head
    hub.now = 0.1
    _, batch = only_batch(hub.result("w1", busy.batch_id, 0.0))
    assert (batch.method, batch.payloads) == ("run", [[1.0]])
    hub.now = 0.2
    _, batch = only_batch(hub.result("w1", batch.batch_id, 1.0))
    assert (batch.method, batch.payloads) == ("other", [[2.0], [3.0]])


def test_reply_timing_is_time_since_arrival_and_the_batch_elapsed(hub: Hub) -> None:
    start_all(hub, "w1")
    _, batch = only_batch(at(hub, 1.0, "r1"))
    at(hub, 1.25, "r2")  # queued behind r1
    hub.now = 1.5
    actions = hub.send("w1", BatchResult(batch.batch_id, [[True, 7.0]], 0.2))
    assert replies(actions)["r1"].timing == pytest.approx([0.5, 0.2])
    _, batch = only_batch(actions)
    hub.now = 2.0
    got = replies(hub.send("w1", BatchResult(batch.batch_id, [[True, 8.0]], 0.3)))
    assert got["r2"].timing == pytest.approx([0.75, 0.3])


AUTO = ServableInfo("demo/auto", 1, "digest-auto", {"run": FLOATS}, max_batch_size=8,
                    max_batch_delay=None)


def test_an_unset_delay_grows_with_the_servables_batch_time() -> None:
    # A tenth of what its batches take (a moving average of the workers' elapsed), at least
    # 1 ms and at most 50 ms: a slow model's part-full batch waits longer to fill.
    hub = Hub(Catalog(AUTO), heartbeat_interval=50.0, heartbeat_timeout=100.0)
    hub.tick(0.0)
    start_all(hub, "w1", "w2", servable="demo/auto")
    _, first = only_batch(at(hub, 1.0, "r1", servable="demo/auto"))
    assert at(hub, 1.0, "r2", servable="demo/auto") == []  # under load: held
    assert hub.state.next_wakeup(1.0) == pytest.approx(0.001)  # nothing measured yet
    hub.now = 1.0005
    hub.send("w1", BatchResult(first.batch_id, [[True, 1.0]], elapsed=0.2))
    # w1 is free, but r2's batch may now wait 20 ms from r2's arrival to fill
    assert at(hub, 1.001, "r3", servable="demo/auto") == []
    assert hub.state.next_wakeup(1.001) == pytest.approx(0.019)
    assert at(hub, 1.015, "r4", servable="demo/auto") == []  # still within the wait
    (_, batch), = batches(hub.tick(1.021))
    assert len(batch.payloads) == 3


def test_the_auto_delay_is_bounded() -> None:
    from dlhub_hpc.broker.batching import batch_delay

    assert batch_delay(AUTO, None) == 0.001
    assert batch_delay(AUTO, 0.0001) == 0.001  # a fast model waits the floor
    assert batch_delay(AUTO, 0.25) == pytest.approx(0.025)
    assert batch_delay(AUTO, 30.0) == 0.05  # a slow one at most 50 ms
    assert batch_delay(BATCHY, 30.0) == DELAY  # a servable's own setting is kept


def test_a_streamed_input_goes_in_a_batch_of_its_own() -> None:
    # A small request batched with a streamed one would wait for its whole transfer.
    from dlhub_hpc.broker.batching import take
    from dlhub_hpc.broker.events import Pending, RequestQueue
    from dlhub_hpc.protocol import StreamRef

    def pending(seq: int, payload: Any) -> Pending:
        return Pending(b"c", f"r{seq}", ("demo/any", 1), "run", payload, None, seq, 0.0)

    ref = StreamRef("t1", "<f8", (1 << 26,))
    queue = RequestQueue()
    for seq, payload in enumerate([1.0, 2.0, ref, 3.0, 4.0]):
        queue.items.append(pending(seq, payload))
        queue.live += 1
    assert [p.payload for p in take(queue, 8)] == [1.0, 2.0]
    assert [p.payload for p in take(queue, 8)] == [ref]
    assert [p.payload for p in take(queue, 8)] == [3.0, 4.0]
    assert queue.live == 0
