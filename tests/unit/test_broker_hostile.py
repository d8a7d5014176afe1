"""The broker under hostile messages: BrokerState.handle never raises and keeps its books;
an undecodable or unsendable result still answers every item of its batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.broker.state import BrokerState, FromClient, FromWorker, Tick, ToClient, ToWorker
from dlhub_hpc.errors import DlhubHpcError, ExecutionError, ProtocolError, error_from_wire
from dlhub_hpc.protocol import (
    MAX_DEPTH,
    Batch,
    BatchResult,
    Bye,
    Control,
    Drain,
    Heartbeat,
    Hello,
    LoadFailed,
    Message,
    Ready,
    Reply,
    Request,
    decode,
    encode,
)
from dlhub_hpc.worker.loop import Worker, WorkerOptions
from dlhub_hpc.worker.runner import Runner, WireResult
from tests.unit.test_broker_state import ADD, MULTI, Catalog

CLIENTS = [b"c1", b"c2"]
WORKERS = [b"w1", b"w2", b"w3"]


def ready_worker(state: BrokerState, identity: bytes, now: float = 0.0) -> None:
    state.handle(FromWorker(identity, Hello(identity.decode(), "demo/add", 1, "h", 1)), now)
    state.handle(FromWorker(identity, Ready(identity.decode())), now)


def batch_of(actions: list[Any]) -> Batch:
    return next(a.message for a in actions
                if isinstance(a, ToWorker) and isinstance(a.message, Batch))


# ---- one error record answers a whole batch ----------------------------------------------

def test_one_error_result_answers_every_item_and_frees_the_worker() -> None:
    # What the hub feeds in when a worker's BATCH_RESULT cannot be decoded beyond its id.
    state = BrokerState(Catalog(ADD))
    for i in range(3):
        state.handle(FromClient(b"c1", Request(f"r{i}", "demo/add", 1, "run", [float(i)])), 0.0)
    state.handle(FromWorker(b"w1", Hello("w1", "demo/add", 1, "h", 1)), 0.0)
    batch = batch_of(state.handle(FromWorker(b"w1", Ready("w1")), 0.0))
    assert len(batch.payloads) == 3
    error = ExecutionError("the worker's result could not be read").to_wire()
    out = state.handle(FromWorker(b"w1", BatchResult(batch.batch_id, [[False, error]])), 1.0)
    replies = [a.message for a in out if isinstance(a, ToClient)]
    assert len(replies) == len(batch.payloads)
    assert all(isinstance(error_from_wire(r.error or {}), ExecutionError) for r in replies)
    assert state.snapshot()["workers"][0]["state"] == "idle"  # free for more work


def test_a_workers_error_record_reaches_callers_in_the_form_they_rebuild() -> None:
    state = BrokerState(Catalog(ADD))
    ready_worker(state, b"w1")
    batch = batch_of(state.handle(FromClient(b"c1", Request("r", "demo/add", 1, "run", [1.0])),
                                  0.0))
    out = state.handle(FromWorker(b"w1", BatchResult(batch.batch_id, [
        [False, {"type": 3, "details": [1, 2]}]])), 1.0)
    reply = next(a.message for a in out if isinstance(a, ToClient))
    assert isinstance(error_from_wire(reply.error or {}), DlhubHpcError)
    assert reply.error == {"type": "3", "message": "the worker gave no message", "details": {}}


# ---- the worker: an unsendable output fails its own item only ------------------------------

class Outputs(Runner):
    """A runner whose servable returns the given outputs, one per payload."""

    def __init__(self, outputs: list[Any]) -> None:
        self.outputs = outputs

    def load(self, assign: Any) -> Any:
        raise NotImplementedError

    def run(self, method: str, payloads: list[Any],
            parameters: list[Any] | None = None) -> list[WireResult]:
        return [[True, out] for out in self.outputs]


def test_an_output_the_hub_cannot_carry_is_an_execution_error_beside_good_ones(
    tmp_path: Path,
) -> None:
    deep: Any = 1
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    outputs = [3.0, {(1, 2): 3}, {1: "a"}, "\ud800", deep, 2**70, {"ok": [1]}]
    worker = Worker(WorkerOptions(hub="tcp://127.0.0.1:1", servable="demo/add",
                                  cache_dir=tmp_path), Outputs(outputs))
    frames = worker._run_batch(Batch(5, "run", [None] * len(outputs)))
    result = decode(frames)  # the hub can read it as a whole
    assert isinstance(result, BatchResult)
    assert [r[0] for r in result.results] == [True, False, False, False, False, False, True]
    assert result.results[0][1] == 3.0 and result.results[6][1] == {"ok": [1]}
    errors = [error_from_wire(r[1]) for r in result.results[1:6]]
    assert all(isinstance(e, ExecutionError) for e in errors)
    assert "dict key (1, 2) is a tuple, not a string; use string keys" in errors[0].message
    assert "valid Unicode" in errors[2].message
    assert f"deeper than {MAX_DEPTH}" in errors[3].message
    assert "64 bits" in errors[4].message


# ---- property: any decoded message, from any identity, keeps the books -----------------------

TEXT = st.text(max_size=6)
NAMES = st.sampled_from(["demo/add", "demo/add", "demo/add", "demo/multi", "demo/none", ""])
VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
              st.floats(allow_nan=False), TEXT, st.binary(max_size=4)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
VERSIONS = st.sampled_from([None, 1, 1, None, 2, 0, -1, 2**63 - 1])
NUMBERS = st.lists(st.floats(-10, 10), max_size=3)  # what demo/add takes
IDS = st.sampled_from([w.decode() for w in WORKERS] + ["x"])
BATCH_IDS = st.integers(-1, 8)
ERRORS = st.fixed_dictionaries({"type": TEXT, "message": TEXT}) | st.dictionaries(TEXT, VALUES)
RESULTS = st.lists(st.one_of(
    st.tuples(st.just(True), VALUES).map(list), st.tuples(st.just(False), ERRORS).map(list),
    VALUES), max_size=4)

CLIENT_MESSAGES = st.one_of(
    st.builds(Request, st.sampled_from(["r1", "r2", "r3"]), NAMES, VERSIONS,
              st.sampled_from(["", "run", "predict", "nope"]), NUMBERS | VALUES,
              st.one_of(st.none(), st.floats(-1, 5)), st.booleans()),
    st.builds(Request, st.sampled_from(["r4", "r5"]), st.just("demo/add"), st.none(),
              st.just(""), NUMBERS),
    st.builds(Control, TEXT, TEXT, st.dictionaries(TEXT, VALUES, max_size=2)),
)
WORKER_MESSAGES = st.one_of(
    st.builds(Hello, IDS, NAMES, VERSIONS, TEXT, st.integers(0, 2**31),
              st.one_of(st.none(), TEXT), st.integers(-1, 4),
              st.one_of(st.none(), st.dictionaries(TEXT, VALUES, max_size=2))),
    st.builds(Ready, IDS),
    st.builds(LoadFailed, IDS, ERRORS),
    st.builds(BatchResult, BATCH_IDS, RESULTS, st.floats(0, 10)),
    st.builds(Heartbeat, IDS | st.sampled_from(["w1/hb"])),
    st.builds(Bye, IDS, TEXT),
    st.builds(Drain, IDS, TEXT),
    st.builds(Reply, TEXT, st.booleans(), VALUES),
)
EVENTS = st.one_of(
    st.tuples(st.just("client"), st.sampled_from(CLIENTS), CLIENT_MESSAGES),
    st.tuples(st.just("worker"), st.sampled_from(WORKERS), WORKER_MESSAGES),
    st.tuples(st.just("worker"), st.sampled_from(WORKERS),
              st.sampled_from([Hello("w", "demo/add", None, "h", 1), Ready("w")])),
    st.tuples(st.just("tick"), st.just(b""), st.none()),
)


def as_decoded(msg: Message) -> Message | None:
    """``msg`` as the shell would hand it over: through the wire, or None if refused."""
    try:
        return decode(encode(msg))
    except (ProtocolError, DlhubHpcError):
        return None


def check_books(state: BrokerState) -> None:
    workers = state._workers
    for key, idle in state._idle.items():
        for identity in idle:
            assert identity in workers and workers[identity].servable == key
            assert workers[identity].state == "idle"
    for batch_id, flight in state._batches.items():  # the batch it runs, or the next
        assert batch_id in (workers[flight.worker].batch_id, workers[flight.worker].next_batch)
    for identity, worker in workers.items():
        if worker.batch_id is not None:
            assert state._batches[worker.batch_id].worker == identity
        if worker.next_batch is not None:
            assert worker.batch_id is not None
            assert state._batches[worker.next_batch].worker == identity
    for key in {w.servable for w in workers.values()} | set(state._worker_count):
        assert state._worker_count[key] == sum(1 for w in workers.values() if w.servable == key)
        in_flight = sum(len(f.items) for f in state._batches.values()
                        if workers[f.worker].servable == key)
        assert state._in_flight[key] == in_flight
    state.snapshot()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(EVENTS, max_size=60))
def test_handle_never_raises_and_keeps_its_books(events: list[Any]) -> None:
    state = BrokerState(Catalog(ADD, MULTI),
                        HubConfig(heartbeat_interval=0.5, heartbeat_timeout=2.0))
    now = 0.0
    for source, identity, msg in events:
        now += 0.3
        if source == "tick":
            out = state.handle(Tick(), now)
        else:
            decoded = as_decoded(msg)
            if decoded is None:
                continue
            event = (FromClient(identity, decoded) if source == "client"
                     else FromWorker(identity, decoded))
            out = state.handle(event, now)
        for action in out:  # whatever the state asks the shell to send can be sent
            if isinstance(action, ToClient | ToWorker):
                encode(action.message)
        check_books(state)
