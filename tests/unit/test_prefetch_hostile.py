"""Batches sent ahead and taken back under any order of events: big inputs (so batches go
ahead), workers that answer late, wrongly or never, drain, leave, and time jumping past
the point where a batch ahead is taken back. The broker never raises, keeps its books
(``check_books``), and answers each request at most once."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.broker.state import (
    BrokerState,
    FromClient,
    FromWorker,
    ServableInfo,
    Tick,
    ToClient,
    ToWorker,
)
from dlhub_hpc.protocol import (
    BatchResult,
    Bye,
    Drain,
    Heartbeat,
    Hello,
    Ready,
    Recall,
    Reply,
    Request,
    decode,
    encode,
)
from dlhub_hpc.servable.types import ArgType
from tests.unit.test_broker_hostile import check_books
from tests.unit.test_broker_state import Catalog

BIG = ServableInfo("demo/big", 1, "digest-big", {"run": ArgType(type="any")}, max_batch_size=2)
WORKERS = [b"w1", b"w2", b"w3"]
PAYLOAD = b"x" * 40_000  # two make a batch worth sending ahead
recalls = [0]  # over all examples: the runs do reach a recall

REQUEST = st.tuples(st.just("request"), st.integers(0, 40))
# a result of the batch the worker runs, of the one it holds ahead, or of any id; with as
# many results as the batch has items, or a wrong count
RESULT = st.tuples(st.just("result"), st.sampled_from(WORKERS),
                   st.sampled_from(["running", "running", "ahead", 0, 1, 7]),
                   st.sampled_from([None, None, None, 0, 3]), st.floats(0, 2))
TICK = st.tuples(st.just("tick"), st.floats(0.1, 4.0))
EVENTS = st.one_of(  # requests, results and time most often: what makes batches go ahead
    REQUEST, REQUEST, REQUEST, RESULT, RESULT, TICK, TICK,
    st.tuples(st.just("hello"), st.sampled_from(WORKERS)),
    st.tuples(st.just("beat"), st.sampled_from(WORKERS)),
    st.tuples(st.just("drain"), st.sampled_from(WORKERS)),
    st.tuples(st.just("bye"), st.sampled_from(WORKERS)),
)


# Where each example starts: batch times known, w1 busy with a batch ahead and w2 free, so
# that time passing next may take that batch back, while anything else may happen first.
SETUP: list[tuple[Any, ...]] = [
    ("hello", b"w1"), ("request", 90), ("result", b"w1", "running", None, 0.1),
    ("hello", b"w2"), ("request", 91), ("request", 92), ("request", 93), ("request", 94),
    ("result", b"w2", "running", None, 0.1),
]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(EVENTS, max_size=80))
def test_batches_ahead_and_taken_back_keep_the_books(events: list[Any]) -> None:
    state = BrokerState(Catalog(BIG), HubConfig(heartbeat_interval=0.5, heartbeat_timeout=30.0))
    now, answered = 0.0, Counter[str]()
    events = SETUP + events
    for event in events:
        kind = event[0]
        if kind == "tick":
            now += event[1]
            out = state.handle(Tick(), now)
        elif kind == "request":
            out = state.handle(FromClient(b"c1", Request(
                f"r{event[1]}", "demo/big", None, "", PAYLOAD, None, False)), now)
        else:
            wid, msg = event[1], _worker_message(state, event)
            out = state.handle(FromWorker(wid, decode(encode(msg))), now)
            if kind == "hello":
                out += state.handle(FromWorker(wid, Ready(wid.decode())), now)
        for action in out:
            if not isinstance(action, ToClient | ToWorker):
                continue
            encode(action.message)  # whatever the state asks the shell to send can be sent
            if isinstance(action.message, Reply):
                answered[action.message.request_id] += 1
            if isinstance(action.message, Recall):
                recalls[0] += 1
                assert action.identity in state._workers
        check_books(state)
    # each request id is answered at most once per time it was sent
    sent = Counter(f"r{e[1]}" for e in events if e[0] == "request")
    assert all(n <= sent[rid] for rid, n in answered.items()), (answered, sent)


def _worker_message(state: BrokerState, event: tuple[Any, ...]) -> Any:
    kind, wid = event[0], event[1].decode()
    if kind == "hello":
        return Hello(wid, "demo/big", None, "h", 1)
    if kind == "result":
        _, identity, which, count, elapsed = event
        worker = state._workers.get(identity)
        batch_id = which if isinstance(which, int) else (
            None if worker is None else worker.batch_id if which == "running"
            else worker.next_batch)
        flight = state._batches.get(batch_id) if batch_id is not None else None
        if count is None:
            count = len(flight.items) if flight is not None else 1
        return BatchResult(batch_id or 0, [[True, 1.0]] * count, elapsed)
    if kind == "beat":
        return Heartbeat(wid)
    if kind == "drain":
        return Drain(wid, "walltime")
    return Bye(wid, "gone")


def test_the_examples_reached_batches_taken_back() -> None:
    if recalls[0] == 0:  # run alone: the property test first
        test_batches_ahead_and_taken_back_keep_the_books()
    assert recalls[0] > 0
