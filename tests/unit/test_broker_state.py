"""BrokerState driven directly: events in, actions out, no sockets and no clocks."""

from __future__ import annotations

from typing import Any

import pytest

from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.broker.state import (
    BrokerState,
    FromClient,
    FromWorker,
    LoadServable,
    ServableInfo,
    Tick,
    ToClient,
    ToWorker,
    ToWorkers,
)
from dlhub_hpc.errors import (
    DlhubHpcError,
    ExecutionError,
    InvalidInput,
    MethodNotFound,
    Overloaded,
    ProtocolError,
    ServableLoadError,
    ServableNotFound,
    Timeout,
    WorkerLost,
    error_from_wire,
)
from dlhub_hpc.protocol import (
    Batch,
    BatchResult,
    Bye,
    Control,
    Heartbeat,
    Hello,
    LoadFailed,
    Ready,
    Reply,
    Request,
    Shutdown,
)
from dlhub_hpc.servable.types import ArgType

FLOATS = ArgType(type="list", item_type=ArgType(type="float"))
ADD = ServableInfo("demo/add", 1, "digest-add-1", {"run": FLOATS}, max_batch_size=3)
ADD_V2 = ServableInfo("demo/add", 2, "digest-add-2", {"run": FLOATS}, max_batch_size=3)
MULTI = ServableInfo(
    "demo/multi", 1, "digest-multi",
    {"predict": ArgType(type="ndarray", dtype="float"), "score": ArgType(type="any")},
)


class Catalog:
    """A dict-backed resolver: name -> {version: ServableInfo}."""

    def __init__(self, *infos: ServableInfo) -> None:
        self.infos: dict[str, dict[int, ServableInfo]] = {}
        for info in infos:
            self.add(info)

    def add(self, info: ServableInfo) -> None:
        self.infos.setdefault(info.name, {})[info.version] = info

    def __call__(self, name: str, version: int | None) -> ServableInfo:
        versions = self.infos.get(name)
        if not versions:
            raise ServableNotFound(f"no servable named {name!r} is published", servable=name)
        if version is None:
            return versions[max(versions)]
        if version not in versions:
            raise ServableNotFound(f"{name} has no version {version}", servable=name)
        return versions[version]


class Hub:
    """The state under test plus a clock and shorthands for the usual events."""

    def __init__(self, catalog: Catalog, **config: Any) -> None:
        settings = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.5, **config}
        self.state = BrokerState(catalog, HubConfig(**settings))
        self.now = 0.0

    def request(
        self, rid: str, payload: Any = None, *, client: bytes = b"c1",
        servable: str = "demo/add", method: str = "", version: int | None = None,
        timeout: float | None = None, cache: bool = True,
    ) -> list[Any]:
        payload = [1, 2] if payload is None else payload
        msg = Request(rid, servable, version, method, payload, timeout, cache)
        return self.state.handle(FromClient(client, msg), self.now)

    def send(self, wid: str, msg: Any, identity: bytes | None = None) -> list[Any]:
        return self.state.handle(FromWorker(identity or wid.encode(), msg), self.now)

    def hello(self, wid: str, servable: str = "demo/add") -> list[Any]:
        return self.send(wid, Hello(wid, servable, None, "node-1", 1234, "block-0"))

    def start(self, wid: str, servable: str = "demo/add") -> list[Any]:
        self.hello(wid, servable)
        return self.send(wid, Ready(wid))

    def result(self, wid: str, batch_id: int, *values: Any) -> list[Any]:
        return self.send(wid, BatchResult(batch_id, [[True, v] for v in values]))

    def tick(self, at: float) -> list[Any]:
        self.now = at
        return self.state.handle(Tick(), at)


def batches(actions: list[Any]) -> list[tuple[bytes, Batch]]:
    return [(a.identity, a.message) for a in actions
            if isinstance(a, ToWorker) and isinstance(a.message, Batch)]


def only_batch(actions: list[Any]) -> tuple[bytes, Batch]:
    found = batches(actions)
    assert len(found) == 1, actions
    return found[0]


def replies(actions: list[Any]) -> dict[str, Reply]:
    return {a.message.request_id: a.message for a in actions if isinstance(a, ToClient)}


def error_of(reply: Reply) -> DlhubHpcError:
    assert not reply.ok and reply.error is not None
    return error_from_wire(reply.error)


def shutdowns(actions: list[Any]) -> list[bytes]:
    return [a.identity for a in actions
            if isinstance(a, ToWorker) and isinstance(a.message, Shutdown)]


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(ADD, MULTI)


@pytest.fixture
def hub(catalog: Catalog) -> Hub:
    return Hub(catalog)


# ---- registration and dispatch -------------------------------------------------------------

def test_hello_asks_the_shell_to_load_the_servable(hub: Hub) -> None:
    actions = hub.hello("w1")
    assert actions == [LoadServable(b"w1", ADD)]
    [worker] = hub.state.snapshot()["workers"]
    assert worker["state"] == "loading"
    assert (worker["worker_id"], worker["servable"], worker["block"]) == (
        "w1", "demo/add@1", "block-0")


def test_ready_worker_gets_the_request_and_the_client_gets_the_result(hub: Hub) -> None:
    assert hub.start("w1") == []  # nothing queued yet
    identity, batch = only_batch(hub.request("r1", [1, 2]))
    assert identity == b"w1"
    assert (batch.method, batch.payloads) == ("run", [[1.0, 2.0]])
    actions = hub.result("w1", batch.batch_id, 3.0)
    assert actions == [ToClient(b"c1", Reply("r1", True, 3.0, None, [0.0, 0.0]))]


def test_request_before_any_worker_is_queued_and_sent_on_ready(hub: Hub) -> None:
    assert hub.request("r1") == []
    assert hub.state.snapshot()["servables"]["demo/add@1"]["queued"] == 1
    assert batches(hub.hello("w1")) == []  # loading: not yet
    identity, batch = only_batch(hub.send("w1", Ready("w1")))
    assert identity == b"w1" and batch.payloads == [[1.0, 2.0]]


def test_queued_requests_are_batched_up_to_max_batch_size_in_order(hub: Hub) -> None:
    for i in range(5):
        hub.request(f"r{i}", [i])
    _, first = only_batch(hub.start("w1"))
    assert first.payloads == [[0.0], [1.0], [2.0]]  # ADD.max_batch_size == 3
    actions = hub.result("w1", first.batch_id, 0.0, 1.0, 2.0)
    assert sorted(replies(actions)) == ["r0", "r1", "r2"]
    identity, second = only_batch(actions)  # the rest follows at once
    assert identity == b"w1" and second.payloads == [[3.0], [4.0]]


def test_idle_workers_are_used_oldest_first_one_batch_each(hub: Hub) -> None:
    hub.start("w1")
    hub.start("w2")
    assert only_batch(hub.request("r1"))[0] == b"w1"
    assert only_batch(hub.request("r2"))[0] == b"w2"
    assert hub.request("r3") == []  # both busy: queued
    assert hub.state.snapshot()["servables"]["demo/add@1"] == {"queued": 1, "in_flight": 2}


def test_per_item_errors_reach_only_their_own_clients(hub: Hub) -> None:
    for i, client in enumerate([b"a", b"b", b"c"]):
        hub.request(f"r{i}", [i], client=client)
    _, batch = only_batch(hub.start("w1"))
    failure = ExecutionError("demo/add.run raised ValueError: bad", exception="ValueError")
    actions = hub.send("w1", BatchResult(batch.batch_id, [
        [True, 0.0], [False, failure.to_wire()], [True, 2.0],
    ]))
    by_client = {a.identity: a.message for a in actions if isinstance(a, ToClient)}
    assert by_client[b"a"] == Reply("r0", True, 0.0, None, [0.0, 0.0])
    assert by_client[b"c"] == Reply("r2", True, 2.0, None, [0.0, 0.0])
    error = error_of(by_client[b"b"])
    assert isinstance(error, ExecutionError) and "ValueError: bad" in error.message
    assert hub.state.stats["replies_ok"] == 2 and hub.state.stats["replies_error"] == 1


def test_a_result_list_of_the_wrong_length_fails_every_item(hub: Hub) -> None:
    hub.request("r1")
    hub.request("r2")
    _, batch = only_batch(hub.start("w1"))
    got = replies(hub.result("w1", batch.batch_id, 1.0))  # one result for two items
    assert sorted(got) == ["r1", "r2"]
    assert all(isinstance(error_of(r), ProtocolError) for r in got.values())
    assert "1 results for 2 inputs" in error_of(got["r1"]).message


# ---- rejected requests ---------------------------------------------------------------------

@pytest.mark.parametrize(
    ("servable", "method", "payload", "error_type", "words"),
    [
        ("nobody/nothing", "", [1], ServableNotFound, "no servable named 'nobody/nothing'"),
        ("demo/add", "train", [1], MethodNotFound, "has no method 'train'; it has ['run']"),
        ("demo/add", "run", "12", InvalidInput, "input should be list of float, got str"),
        ("demo/add", "run", [1, "x"], InvalidInput, "input[1] should be float"),
    ],
)
def test_bad_requests_get_a_typed_error_and_others_are_still_served(
    hub: Hub, servable: str, method: str, payload: Any, error_type: type, words: str,
) -> None:
    hub.start("w1")
    got = replies(hub.request("bad", payload, servable=servable, method=method))
    error = error_of(got["bad"])
    assert type(error) is error_type
    assert words in error.message
    assert hub.state.stats["rejected"] == 1
    identity, batch = only_batch(hub.request("good", [5]))
    assert identity == b"w1" and batch.payloads == [[5.0]]


def test_method_not_found_lists_the_methods_in_its_details(hub: Hub) -> None:
    error = error_of(replies(hub.request("r", servable="demo/multi", method="fit"))["r"])
    assert error.details == {"servable": "demo/multi", "method": "fit",
                             "methods": ["predict", "score"]}


@pytest.mark.parametrize(("servable", "expected"), [("demo/add", "run"),
                                                    ("demo/multi", "predict")])
def test_a_request_naming_no_method_gets_run_or_else_the_first(
    hub: Hub, servable: str, expected: str,
) -> None:
    hub.start("w1", servable)
    _, batch = only_batch(hub.request("r1", [1.0], servable=servable, method=""))
    assert batch.method == expected


def test_a_full_queue_answers_overloaded_at_once(catalog: Catalog) -> None:
    hub = Hub(catalog, max_queue_length=2)
    assert hub.request("r1") == [] and hub.request("r2") == []
    error = error_of(replies(hub.request("r3"))["r3"])
    assert isinstance(error, Overloaded)
    assert "2 requests queued (the bound is 2)" in error.message
    assert error.details == {"servable": "demo/add", "queued": 2, "limit": 2}
    assert hub.request("other", servable="demo/multi", method="score") == []  # own queue


# ---- deadlines -----------------------------------------------------------------------------

def test_a_request_still_queued_at_its_deadline_times_out_on_tick(hub: Hub) -> None:
    hub.request("r1", timeout=1.0)
    assert replies(hub.tick(0.5)) == {}
    error = error_of(replies(hub.tick(1.0))["r1"])
    assert isinstance(error, Timeout)
    assert "no worker serves demo/add@1" in error.message
    assert hub.state.snapshot()["servables"]["demo/add@1"]["queued"] == 0
    assert batches(hub.start("w1")) == []  # the expired request is not sent


def test_default_timeout_applies_when_the_request_sets_none(catalog: Catalog) -> None:
    hub = Hub(catalog, default_timeout=2.0)
    hub.request("r1")
    assert replies(hub.tick(1.9)) == {}
    assert isinstance(error_of(replies(hub.tick(2.0))["r1"]), Timeout)


def test_a_request_in_flight_at_its_deadline_times_out_and_its_late_result_is_dropped(
    hub: Hub,
) -> None:
    hub.start("w1")
    _, batch = only_batch(hub.request("r1", timeout=1.0))
    hub.now = 1.0
    hub.send("w1", Heartbeat("w1"), identity=b"w1/hb")  # alive, just slow
    error = error_of(replies(hub.tick(1.2))["r1"])
    assert isinstance(error, Timeout) and "workers are busy" in error.message
    assert replies(hub.result("w1", batch.batch_id, 3.0)) == {}  # no second reply
    assert hub.state.stats["timeouts"] == 1
    assert only_batch(hub.request("r2"))[0] == b"w1"  # the worker is idle again


# ---- lost workers and retries --------------------------------------------------------------

def test_a_silent_worker_is_dropped_and_its_request_retried_elsewhere(hub: Hub) -> None:
    hub.start("w1")
    hub.start("w2")
    _, batch = only_batch(hub.request("r1", [7]))
    hub.now = 0.3
    hub.send("w2", Heartbeat("w2"), identity=b"w2/hb")  # from the heartbeat socket
    actions = hub.tick(0.6)  # w1 last heard at 0.0, heartbeat_timeout is 0.5
    identity, retry = only_batch(actions)
    assert identity == b"w2" and retry.payloads == [[7.0]]
    assert replies(actions) == {}
    assert [w["worker_id"] for w in hub.state.snapshot()["workers"]] == ["w2"]
    assert hub.state.stats["retries"] == 1
    # w1 was only slow: its late answer is refused and the client is answered once.
    late = hub.result("w1", batch.batch_id, 99.0)
    assert shutdowns(late) == [b"w1"] and replies(late) == {}
    assert replies(hub.result("w2", retry.batch_id, 7.0)) == {
        "r1": Reply("r1", True, 7.0, None, [0.6, 0.0])}


def test_a_lost_worker_with_no_other_worker_fails_its_request(hub: Hub) -> None:
    hub.start("w1")
    hub.request("r1")
    error = error_of(replies(hub.tick(0.6))["r1"])
    assert isinstance(error, WorkerLost)
    assert "demo/add@1.run" in error.message and "no other worker serves it" in error.message
    assert error.details == {"servable": "demo/add", "version": 1, "worker": "w1"}


def test_a_lost_last_worker_s_request_waits_when_a_pilot_will_replace_it(hub: Hub) -> None:
    asked: list[tuple[str, int]] = []
    hub.state.replacement_expected = lambda key: asked.append(key) or True
    hub.start("w1")
    assert only_batch(hub.request("r1"))[0] == b"w1"
    actions = hub.send("w1", Bye("w1", "node failure"))
    assert replies(actions) == {} and asked == [("demo/add", 1)]  # queued, not failed
    assert hub.state.snapshot()["stats"]["retries"] == 1
    assert only_batch(hub.start("w2"))[0] == b"w2"  # the replacement takes it

def test_a_request_already_retried_max_retries_times_fails(hub: Hub) -> None:
    for wid in ("w1", "w2", "w3"):
        hub.start(wid)
    assert only_batch(hub.request("r1"))[0] == b"w1"
    assert only_batch(hub.send("w1", Bye("w1", "killed")))[0] == b"w2"  # retry 1 of 1
    actions = hub.send("w2", Bye("w2", "killed"))
    error = error_of(replies(actions)["r1"])
    assert isinstance(error, WorkerLost) and "already been tried 2 times" in error.message
    assert batches(actions) == []  # w3 is idle, but the retry budget is spent


def test_max_retries_zero_fails_at_the_first_loss(catalog: Catalog) -> None:
    hub = Hub(catalog, max_retries=0)
    hub.start("w1")
    hub.start("w2")
    hub.request("r1")
    actions = hub.send("w1", Bye("w1", "oom"))
    assert isinstance(error_of(replies(actions)["r1"]), WorkerLost)
    assert batches(actions) == []


def test_bye_while_busy_retries_the_whole_batch_on_another_worker(hub: Hub) -> None:
    for i in range(3):
        hub.request(f"r{i}", [i])
    _, batch = only_batch(hub.start("w1"))
    hub.start("w2")
    identity, retry = only_batch(hub.send("w1", Bye("w1", "walltime")))
    assert identity == b"w2" and retry.payloads == batch.payloads
    assert replies(hub.result("w2", retry.batch_id, 0.0, 1.0, 2.0)).keys() == {
        "r0", "r1", "r2"}


def test_bye_while_idle_just_forgets_the_worker(hub: Hub) -> None:
    hub.start("w1")
    assert hub.send("w1", Bye("w1", "done")) == []
    assert hub.state.snapshot()["workers"] == []
    assert hub.request("r1") == []  # queued: no worker to send it to


def test_load_failure_of_the_only_worker_fails_queued_requests(hub: Hub) -> None:
    hub.request("r1")
    hub.request("r2", client=b"c2")
    hub.hello("w1")
    failure = ServableLoadError("cannot import arith:add from the bundle: boom")
    actions = hub.send("w1", LoadFailed("w1", failure.to_wire()))
    got = replies(actions)
    assert sorted(got) == ["r1", "r2"]
    error = error_of(got["r2"])
    assert isinstance(error, ServableLoadError)
    assert "demo/add@1 could not be loaded" in error.message and "boom" in error.message
    assert hub.state.snapshot()["workers"] == []


def test_load_failure_keeps_requests_queued_while_another_worker_loads(hub: Hub) -> None:
    hub.request("r1")
    hub.hello("w1")
    hub.hello("w2")
    assert hub.send("w1", LoadFailed("w1", {"message": "boom"})) == []
    assert only_batch(hub.send("w2", Ready("w2")))[0] == b"w2"


@pytest.mark.parametrize("message", [Ready("ghost"), BatchResult(1, [[True, 1]])])
def test_messages_from_unknown_workers_are_answered_with_shutdown(
    hub: Hub, message: Any,
) -> None:
    actions = hub.send("ghost", message)
    assert shutdowns(actions) == [b"ghost"]
    assert "does not know you" in actions[0].message.reason
    assert hub.state.stats["unknown_worker_messages"] == 1


def test_a_worker_asking_for_an_unknown_servable_is_told_to_stop(hub: Hub) -> None:
    actions = hub.hello("w1", servable="nobody/nothing")
    assert shutdowns(actions) == [b"w1"]
    assert "cannot serve nobody/nothing" in actions[0].message.reason
    assert hub.state.snapshot()["workers"] == []


def test_unexpected_message_kinds_are_counted_and_ignored(hub: Hub) -> None:
    assert hub.state.handle(FromClient(b"c1", Control("x", "status", {})), 0.0) == []
    assert hub.send("w1", Reply("x", True)) == []
    assert hub.state.stats["unexpected_messages"] == 2


# ---- time ----------------------------------------------------------------------------------

def test_heartbeats_go_once_per_interval_to_workers_the_hub_did_not_otherwise_reach(
    hub: Hub,
) -> None:
    hub.start("w1")
    hub.hello("w2")  # both were just sent their servable: proof enough that the hub lives
    assert hub.tick(0.0) == []
    assert hub.tick(0.05) == []  # heartbeat_interval is 0.1
    assert hub.tick(0.1) == [ToWorkers([b"w1", b"w2"], Heartbeat("hub", 0.1))]
    hub.now = 0.15
    only_batch(hub.request("r1"))  # w1 gets a batch at 0.15
    assert hub.tick(0.2) == [ToWorkers([b"w2"], Heartbeat("hub", 0.1))]
    assert hub.tick(0.31) == [ToWorkers([b"w1", b"w2"], Heartbeat("hub", 0.1))]


def test_past_heartbeats_per_second_beats_go_further_apart_and_silence_waits_longer(
    catalog: Catalog,
) -> None:
    hub = Hub(catalog, heartbeats_per_second=10)  # interval 0.1 s, timeout 0.5 s
    for wid in ("w1", "w2", "w3"):
        hub.start(wid)
    assert hub.tick(0.0) == []
    beat = hub.tick(0.31)  # three workers at 10 a second: a beat each 0.3 s
    assert beat == [ToWorkers([b"w1", b"w2", b"w3"], Heartbeat("hub", pytest.approx(0.3)))]
    assert hub.state.next_wakeup(0.31) == pytest.approx(0.3)
    hub.now = 0.9
    hub.send("w2", Heartbeat("w2"), identity=b"w2/hb")
    hub.send("w3", Heartbeat("w3"), identity=b"w3/hb")
    hub.tick(1.2)  # w1 silent 1.2 s: past the configured 0.5 s, within the 1.5 s now
    assert len(hub.state.snapshot()["workers"]) == 3
    hub.tick(1.6)
    assert [w["worker_id"] for w in hub.state.snapshot()["workers"]] == ["w2", "w3"]


def test_next_wakeup_is_the_next_heartbeat_or_the_nearest_deadline(hub: Hub) -> None:
    assert hub.state.next_wakeup(10.0) == 0.0  # never ticked: tick now
    hub.tick(10.0)
    assert hub.state.next_wakeup(10.0) == pytest.approx(0.1)
    hub.request("r1", timeout=0.04)
    assert hub.state.next_wakeup(10.0) == pytest.approx(0.04)
    assert hub.state.next_wakeup(11.0) == 0.0  # overdue never goes negative


def test_snapshot_reports_queues_workers_and_counters(hub: Hub) -> None:
    hub.start("w1")
    hub.request("r1")
    hub.request("r2")
    snap = hub.state.snapshot()
    assert snap["servables"] == {"demo/add@1": {"queued": 1, "in_flight": 1}}
    assert snap["workers"] == [{
        "worker_id": "w1", "servable": "demo/add@1", "state": "busy", "host": "node-1",
        "pid": 1234, "block": "block-0", "batches": 0, "items": 0, "ranks": 1, "gpus": None,
    }]
    assert snap["stats"]["requests"] == 2 and snap["stats"]["batches"] == 1


def test_shutdown_fails_everything_unanswered_and_stops_workers(hub: Hub) -> None:
    hub.start("w1")
    _, batch = only_batch(hub.request("done"))
    hub.result("w1", batch.batch_id, 3.0)
    hub.request("r1")  # in flight
    hub.request("r2")  # queued
    hub.hello("w2")  # still loading
    actions = hub.state.shutdown("maintenance")
    assert sorted(shutdowns(actions)) == [b"w1", b"w2"]
    got = replies(actions)
    assert sorted(got) == ["r1", "r2"]  # "done" is not answered twice
    error = error_of(got["r2"])
    assert isinstance(error, WorkerLost) and "shutting down: maintenance" in error.message


def test_invalidate_makes_the_next_request_see_a_new_version(
    hub: Hub, catalog: Catalog,
) -> None:
    hub.request("r1")
    catalog.add(ADD_V2)
    hub.request("r2")  # the cached lookup still says version 1
    hub.state.invalidate("demo/add")
    hub.request("r3")
    queued = {k: v["queued"] for k, v in hub.state.snapshot()["servables"].items()}
    assert queued == {"demo/add@1": 2, "demo/add@2": 1}


def test_servable_info_from_a_registry_record() -> None:
    from dlhub_hpc.examples import example_dir
    from dlhub_hpc.registry.store import ServableRecord
    from dlhub_hpc.servable.spec import ServableSpec

    spec = ServableSpec.from_file(example_dir("add") / "servable.yaml")
    info = ServableInfo.from_record(ServableRecord("demo/add", 3, "abc", spec, 0.0))
    assert (info.key, info.digest, info.max_batch_size) == (("demo/add", 3), "abc", 16)
    assert info.inputs == {"run": FLOATS.model_copy(update={"description": "numbers to add"})}
    assert info.default_method == "run"


def test_workers_lost_together_do_not_spend_the_retry_on_each_other(hub: Hub) -> None:
    for wid in ("w1", "w2", "w3"):  # w1 and w2 share a node that dies; w3 lives
        hub.start(wid)
    hub.request("r1", [7])
    hub.now = 0.3
    hub.send("w3", Heartbeat("w3"), identity=b"w3/hb")
    actions = hub.tick(0.6)
    assert replies(actions) == {}
    identity, retry = only_batch(actions)
    assert identity == b"w3" and retry.payloads == [[7.0]]
