"""A batch sent ahead (HubConfig.prefetch): to a busy worker, only full, never to a pooled
worker or with chunked inputs; a worker lost with one ahead retries what ran and requeues
what never started; a draining worker runs both before it is let go."""

from __future__ import annotations

from typing import Any

from dlhub_hpc.broker.batching import AHEAD_MAX_SECONDS
from dlhub_hpc.broker.state import ServableInfo
from dlhub_hpc.errors import LocalPathRefused, WorkerLost
from dlhub_hpc.metrics.recorder import BrokerMetrics
from dlhub_hpc.protocol import BatchResult, Bye, Drain, Recall, StreamRef
from dlhub_hpc.servable.types import ArgType
from tests.unit.test_broker_state import (
    Catalog,
    Hub,
    batches,
    error_of,
    only_batch,
    replies,
    shutdowns,
)

PAIRS = ServableInfo("demo/pairs", 1, "digest-pairs", {"run": ArgType(type="any")},
                     max_batch_size=2)
ANY = ServableInfo("demo/any", 1, "digest-any", {"run": ArgType(type="any")}, max_batch_size=2)


def big(x: float) -> bytes:
    """An input of 40 KB: two make a batch worth sending ahead (AHEAD_MIN_BYTES)."""
    return bytes([int(x) % 256]) * 40_000


def warm(hub: Hub, wid: str, servable: str, elapsed: float = 0.01) -> None:
    """One batch run: the hub knows how long the servable's batches take."""
    _, batch = only_batch(hub.request(f"warm-{wid}", [0.0], servable=servable))
    hub.send(wid, BatchResult(batch.batch_id, [[True, 0.0]], elapsed))


def busy_with_one_ahead(**config: Any) -> tuple[Hub, int, int]:
    """w1 runs [r0] (it was idle) and holds [r1, r2] ahead; (hub, running id, ahead id)."""
    hub = Hub(Catalog(PAIRS), heartbeat_interval=50.0, heartbeat_timeout=100.0, **config)
    hub.tick(0.0)
    hub.start("w1", "demo/pairs")
    warm(hub, "w1", "demo/pairs")
    _, running = only_batch(hub.request("r0", big(0), servable="demo/pairs"))
    assert batches(hub.request("r1", big(1), servable="demo/pairs")) == []  # part-full
    identity, ahead = only_batch(hub.request("r2", big(2), servable="demo/pairs"))
    assert identity == b"w1" and ahead.request_ids == ["r1", "r2"]
    return hub, running.batch_id, ahead.batch_id


def test_without_prefetch_nothing_goes_ahead() -> None:
    hub = Hub(Catalog(PAIRS), heartbeat_interval=50.0, heartbeat_timeout=100.0,
              prefetch=False)
    hub.tick(0.0)
    hub.start("w1", "demo/pairs")
    hub.request("r0", big(0), servable="demo/pairs")
    for i in range(1, 6):
        assert batches(hub.request(f"r{i}", big(i), servable="demo/pairs")) == []
    assert hub.state.stats["batches_ahead"] == 0


def test_nothing_goes_ahead_before_a_batch_ran_nor_for_long_batches() -> None:
    hub = Hub(Catalog(PAIRS), heartbeat_interval=50.0, heartbeat_timeout=100.0)
    hub.tick(0.0)
    hub.start("w1", "demo/pairs")
    _, first = only_batch(hub.request("r0", big(0), servable="demo/pairs"))
    for i in range(1, 5):  # its first batch may take minutes (a model warming up)
        assert batches(hub.request(f"r{i}", big(i), servable="demo/pairs")) == []
    out = hub.send("w1", BatchResult(first.batch_id, [[True, 0.0]], 30.0))
    assert [b.request_ids for _, b in batches(out)] == [["r1", "r2"]]  # and none ahead
    assert hub.state.stats["batches_ahead"] == 0


def test_a_batch_of_small_inputs_never_goes_ahead() -> None:
    # its trip is short, so it gains little, and a caller arriving now would wait a batch more
    hub = Hub(Catalog(PAIRS), heartbeat_interval=50.0, heartbeat_timeout=100.0)
    hub.tick(0.0)
    hub.start("w1", "demo/pairs")
    warm(hub, "w1", "demo/pairs")
    hub.request("r0", [0.0], servable="demo/pairs")
    for i in range(1, 7):
        assert batches(hub.request(f"r{i}", [float(i)], servable="demo/pairs")) == []
    assert hub.state.stats["batches_ahead"] == 0


def test_a_batch_ahead_counts_as_queued_until_it_runs() -> None:
    hub, running, _ = busy_with_one_ahead()
    assert hub.state.snapshot()["servables"]["demo/pairs@1"] == {"queued": 2, "in_flight": 1}
    hub.result("w1", running, 0.0)
    assert hub.state.snapshot()["servables"]["demo/pairs@1"] == {"queued": 0, "in_flight": 2}


def test_nothing_more_goes_ahead_while_a_worker_sends_outputs_in_chunks() -> None:
    hub, running, ahead = busy_with_one_ahead()
    hub.request("r3", big(3), servable="demo/pairs")
    hub.request("r4", big(4), servable="demo/pairs")  # a full batch waits
    out = hub.send("w1", BatchResult(running, [[True, StreamRef("out-1", "<f8", (4,))]]))
    # w1 sends r0's output in chunks, as long as r0's caller takes them, then runs [r1, r2]
    assert batches(out) == []
    _, freed = only_batch(hub.result("w1", ahead, 1.0, 2.0))
    assert freed.request_ids == ["r3", "r4"]


def test_a_batch_whose_tickets_expired_goes_again_once() -> None:
    hub, running, ahead = busy_with_one_ahead()
    hub.result("w1", running, 0.0)
    refused = [[False, LocalPathRefused("a local-path ticket in this message is unknown, "
                                        "used already, expired or another caller's").to_wire()]]
    out = hub.send("w1", BatchResult(ahead, refused))
    assert replies(out) == {}  # not answered: sent again, with new tickets to come
    _, again = only_batch(out)
    assert again.request_ids == ["r1", "r2"] and hub.state.stats["retries"] == 0
    out = hub.send("w1", BatchResult(again.batch_id, refused))
    assert sorted(replies(out)) == ["r1", "r2"]
    assert all(isinstance(error_of(r), LocalPathRefused) for r in replies(out).values())


def test_a_batch_aheads_queue_wait_runs_until_its_worker_takes_it_up() -> None:
    hub, running, ahead = busy_with_one_ahead()  # r1, r2 arrived at 0
    hub.state.metrics = metrics = BrokerMetrics()
    hub.now = 1.0
    hub.request("r3", big(3), servable="demo/pairs")
    hub.request("r4", big(4), servable="demo/pairs")  # full, but w1 holds one ahead already
    hub.now = 2.0
    hub.result("w1", running, 0.0)  # [r1, r2] start now; [r3, r4] go ahead, not started
    (series,) = metrics.series.values()
    assert sum(series.queue_wait.counts) == 2 and series.queue_wait.sum == 4.0  # 2 s each
    hub.now = 5.0
    hub.result("w1", ahead, 1.0, 2.0)  # [r3, r4] start: they waited 4 s each
    assert sum(series.queue_wait.counts) == 4 and series.queue_wait.sum == 4.0 + 8.0


def test_a_batch_ahead_counts_once_when_it_runs_even_if_it_answers_first() -> None:
    hub, running, ahead = busy_with_one_ahead()  # r1, r2 ahead, sent at 0
    hub.state.metrics = metrics = BrokerMetrics()
    counted = (hub.state.stats["batches"], hub.state.stats["batched_items"])
    hub.now = 5.0
    # it answers before the batch it waited behind, having run 2 s: it started at 3 s
    hub.send("w1", BatchResult(ahead, [[True, 1.0], [True, 2.0]], 2.0))
    (series,) = metrics.series.values()
    assert (hub.state.stats["batches"], hub.state.stats["batched_items"]) == (
        counted[0] + 1, counted[1] + 2)
    assert sum(series.batch_size.counts) == 1 and series.batch_size.sum == 2
    assert sum(series.queue_wait.counts) == 2 and series.queue_wait.sum == 6.0  # 3 s each
    hub.result("w1", running, 0.0)  # the one it ran first: counted when it was sent
    assert hub.state.stats["batches"] == counted[0] + 1
    assert sum(series.batch_size.counts) == 1


def test_a_lost_worker_retries_what_ran_and_requeues_what_never_started() -> None:
    hub, _, _ = busy_with_one_ahead(max_retries=0)
    out = hub.send("w1", Bye("w1", "killed"))
    answered = replies(out)
    # no retries allowed: the one it ran fails, the two it never started wait for a worker
    assert list(answered) == ["r0"] and isinstance(error_of(answered["r0"]), WorkerLost)
    _, batch = only_batch(hub.start("w2", "demo/pairs"))
    assert batch.request_ids == ["r1", "r2"]


def test_a_lost_worker_with_retries_puts_what_ran_first() -> None:
    hub, _, _ = busy_with_one_ahead(max_retries=1)
    hub.start("w2", "demo/pairs")  # idle, with nothing queued yet
    out = hub.send("w1", Bye("w1", "killed"))
    assert replies(out) == {}
    identity, retried = only_batch(out)  # r2 alone is no full batch to send ahead
    assert identity == b"w2" and retried.request_ids == ["r0", "r1"]  # arrival order
    assert hub.state.stats["retries"] == 1  # r0 ran; r1 and r2 never started
    assert [b.request_ids for _, b in batches(hub.result("w2", retried.batch_id, 0.0, 1.0))
            ] == [["r2"]]


def test_a_draining_worker_runs_the_batch_it_holds_before_it_goes() -> None:
    hub, running, ahead = busy_with_one_ahead()
    assert shutdowns(hub.send("w1", Drain("w1", "walltime"))) == []
    out = hub.result("w1", running, 0.0)
    assert list(replies(out)) == ["r0"] and shutdowns(out) == []
    hub.request("r3", big(3), servable="demo/pairs")
    assert batches(hub.request("r4", big(4), servable="demo/pairs")) == []  # none to it
    out = hub.result("w1", ahead, 1.0, 2.0)
    assert sorted(replies(out)) == ["r1", "r2"] and shutdowns(out) == [b"w1"]


def test_a_batch_with_a_chunked_input_never_goes_ahead_nor_has_one_behind() -> None:
    hub = Hub(Catalog(ANY), heartbeat_interval=50.0, heartbeat_timeout=100.0)
    hub.tick(0.0)
    hub.start("w1", "demo/any")
    warm(hub, "w1", "demo/any")
    _, first = only_batch(hub.request("big", StreamRef("t-1", "<f8", (4,)),
                                      servable="demo/any"))
    for i in range(4):  # two full batches wait, but w1 is receiving its input in chunks
        assert batches(hub.request(f"r{i}", big(i), servable="demo/any")) == []
    out = hub.result("w1", first.batch_id, 0.0)
    (_, second), (_, ahead) = batches(out)
    assert second.request_ids == ["r0", "r1"] and ahead.request_ids == ["r2", "r3"]
    hub.request("big2", StreamRef("t-2", "<f8", (4,)), servable="demo/any")
    hub.request("r4", big(4), servable="demo/any")
    # w1 runs [r2, r3] now and has room, but the full batch waiting starts with a chunked
    # input: it waits for w1 to be free
    assert batches(hub.result("w1", second.batch_id, 0.0, 1.0)) == []
    assert hub.state.stats["batches_ahead"] == 1
    _, alone = only_batch(hub.result("w1", ahead.batch_id, 2.0, 3.0))
    assert alone.request_ids == ["big2"]


def test_a_batch_ahead_of_one_that_runs_too_long_is_taken_back_for_a_free_worker() -> None:
    # both run a batch from 0 s, one holds [r2, r3] ahead; the other comes free at 1 s
    hub = Hub(Catalog(PAIRS), heartbeat_interval=1.0, heartbeat_timeout=1000.0)
    hub.tick(0.0)
    hub.start("w1", "demo/pairs")
    hub.start("w2", "demo/pairs")
    warm(hub, "w1", "demo/pairs")
    hub.state.metrics = metrics = BrokerMetrics()
    running = dict(only_batch(hub.request(r, big(i), servable="demo/pairs"))
                   for i, r in enumerate(["r0", "r1"]))
    hub.request("r2", big(2), servable="demo/pairs")
    holder, ahead = only_batch(hub.request("r3", big(3), servable="demo/pairs"))
    assert set(running) == {b"w1", b"w2"} and ahead.request_ids == ["r2", "r3"]
    (series,) = metrics.series.values()
    assert sum(series.batch_size.counts) == 2  # the batch ahead has not run yet
    [other] = set(running) - {holder}
    hub.now = 1.0
    assert batches(hub.send(other.decode(), BatchResult(running[other].batch_id,
                                                        [[True, 0.0]]))) == []
    assert not recalls(hub.tick(AHEAD_MAX_SECONDS))  # its running batch: that long, so far
    out = hub.tick(AHEAD_MAX_SECONDS + 1.0)
    assert recalls(out) == [(holder, ahead.batch_id)]
    (to, again), = batches(out)  # the free worker takes it, as a new batch
    assert to == other and again.request_ids == ["r2", "r3"]
    assert hub.state.stats["batches_recalled"] == 1 and hub.state.stats["retries"] == 0
    # counted once, in the batch it runs in: the warm-up, the two running, then this one
    assert (hub.state.stats["batches"], hub.state.stats["batched_items"]) == (4, 5)
    assert sum(series.batch_size.counts) == 3 and series.batch_size.sum == 4
    assert sum(series.queue_wait.counts) == 4  # r2, r3 waited once each, until now
    # the holder ran it anyway (the recall came too late): that result is dropped as stale
    out = hub.send(holder.decode(), BatchResult(running[holder].batch_id, [[True, 0.0]]))
    assert list(replies(out)) == running[holder].request_ids
    assert replies(hub.result(holder.decode(), ahead.batch_id, 9.0, 9.0)) == {}
    assert hub.state.stats["stale_results"] == 1
    assert sorted(replies(hub.result(other.decode(), again.batch_id, 2.0, 3.0))) == ["r2", "r3"]
    assert hub.state.snapshot()["servables"]["demo/pairs@1"] == {"queued": 0, "in_flight": 0}


def recalls(actions: list[Any]) -> list[tuple[bytes, int]]:
    return [(a.identity, a.message.batch_id) for a in actions
            if isinstance(getattr(a, "message", None), Recall)]


def test_a_batch_ahead_stays_where_no_free_worker_could_take_it() -> None:
    hub = Hub(Catalog(PAIRS), heartbeat_interval=1.0, heartbeat_timeout=1000.0)
    hub.tick(0.0)
    hub.start("w1", "demo/pairs")
    warm(hub, "w1", "demo/pairs")
    _, running = only_batch(hub.request("r0", big(0), servable="demo/pairs"))
    hub.request("r1", big(1), servable="demo/pairs")
    _, ahead = only_batch(hub.request("r2", big(2), servable="demo/pairs"))
    assert not recalls(hub.tick(AHEAD_MAX_SECONDS + 1.0))  # nobody else to run it
    hub.request("r3", big(3), servable="demo/pairs")
    hub.request("r4", big(4), servable="demo/pairs")  # w1 overran: nothing more goes to it
    assert hub.state.stats["batches_ahead"] == 1
    _, again = only_batch(hub.start("w2", "demo/pairs"))  # a free worker: the queue first
    assert again.request_ids == ["r3", "r4"]
    hub.result("w2", again.batch_id, 3.0, 4.0)
    out = hub.tick(AHEAD_MAX_SECONDS + 2.0)  # then, at the next beat, the batch ahead
    assert recalls(out) == [(b"w1", ahead.batch_id)]
    assert [b.request_ids for _, b in batches(out)] == [["r1", "r2"]]
    assert list(replies(hub.result("w1", running.batch_id, 0.0))) == ["r0"]
