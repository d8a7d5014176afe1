"""Single flight and streamed outputs: a stream has one receiver, so requests joined to one
whose output streamed run again alone instead of failing with TransferFailed."""

from __future__ import annotations

from typing import Any

from dlhub_hpc.broker.state import ToClient
from dlhub_hpc.protocol import BatchResult, Reply, StreamRef
from tests.unit.test_broker_state import Hub, batches, only_batch, replies
from tests.unit.test_memo import ask, make_hub, stats
from tests.unit.test_memo import catalog as catalog


def ref(tid: str) -> StreamRef:
    return StreamRef(tid, "<f8", (2**24,))


def streamed(hub: Hub, wid: str, batch_id: int, *tids: str) -> list[Any]:
    return hub.send(wid, BatchResult(batch_id, [[True, ref(t)] for t in tids]))


def client_replies(actions: list[Any]) -> dict[bytes, Reply]:
    return {a.identity: a.message for a in actions if isinstance(a, ToClient)}


def test_requests_joined_to_a_streamed_result_run_again_alone(catalog: Any) -> None:
    hub = make_hub(catalog)
    hub.start("w1", "demo/det")
    _, first = only_batch(ask(hub, "r1", [5], client=b"a"))
    assert ask(hub, "r2", [5], client=b"b") == []  # joined to r1
    assert ask(hub, "r3", [5], client=b"c") == []
    actions = streamed(hub, "w1", first.batch_id, "t1")
    got = client_replies(actions)
    assert list(got) == [b"a"] and got[b"a"].value.transfer_id == "t1"  # only the leader's caller
    # The followers are not answered with the leader's stream: they run again, together,
    # once w1 has sent that stream (until then it reads nothing else).
    assert batches(actions) == []
    (identity, again), = batches(hub.state.outputs_sent(b"w1", hub.now))
    assert identity == b"w1" and again.payloads == [[5], [5]]
    assert stats(hub)["single_flight_reruns"] == 2
    got = client_replies(streamed(hub, "w1", again.batch_id, "t2", "t3"))
    assert {k: r.value.transfer_id for k, r in got.items()} == {b"b": "t2", b"c": "t3"}
    assert all(r.ok for r in got.values())
    hub.state.outputs_sent(b"w1", hub.now)
    # A streamed output is never cached: the next identical request runs too.
    assert len(batches(ask(hub, "r4", [5], client=b"d"))) == 1


def test_a_rerun_goes_to_the_longest_idle_worker(
        catalog: Any) -> None:
    hub = make_hub(catalog)
    hub.start("w1", "demo/det")
    _, first = only_batch(ask(hub, "r1", [6], client=b"a"))
    ask(hub, "r2", [6], client=b"b")
    hub.start("w2", "demo/det")  # idle: nothing is queued for it
    actions = streamed(hub, "w1", first.batch_id, "t1")
    (identity, again), = batches(actions)
    assert identity == b"w2" and again.payloads == [[6]]
    assert replies(hub.result("w2", again.batch_id, 1.0))["r2"].ok


def test_a_worker_sending_its_streamed_output_gets_no_work_until_it_is_sent(
        catalog: Any) -> None:
    # The worker sends its output's chunks before it reads anything else: a request given to
    # it meanwhile would wait for the whole transfer, while another worker is free.
    hub = make_hub(catalog)
    hub.start("w1", "demo/det")
    _, first = only_batch(ask(hub, "r1", [7], client=b"a"))
    assert batches(streamed(hub, "w1", first.batch_id, "t1")) == []
    assert hub.state.snapshot()["workers"][0]["state"] == "sending"
    assert ask(hub, "r2", [8], client=b"b") == []  # queued: w1 is sending
    (identity, batch), = batches(hub.start("w2", "demo/det"))  # a free worker takes it
    assert identity == b"w2" and batch.payloads == [[8]]
    assert ask(hub, "r3", [9], client=b"c") == []  # w2 busy, w1 sending
    (identity, batch), = batches(hub.state.outputs_sent(b"w1", hub.now))
    assert identity == b"w1" and batch.payloads == [[9]]
    assert hub.state.outputs_sent(b"w1", hub.now) == []  # not sending: nothing changes

