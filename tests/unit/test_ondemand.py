"""Start on first request, decided by the broker's state (broker/ondemand.py): events in,
StartServable / ReleaseServable out, stages, typed deadline errors. No sockets, no clock."""

from __future__ import annotations

from typing import Any

import pytest

from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.broker.events import ReleaseServable, StartServable
from dlhub_hpc.broker.state import BrokerState, FromClient, FromWorker, ServableInfo, Tick, ToClient
from dlhub_hpc.errors import PilotError, ServableStarting, Timeout, error_from_wire
from dlhub_hpc.protocol import Hello, Ready, Request
from dlhub_hpc.servable.types import ArgType

FLOATS = ArgType(type="list", item_type=ArgType(type="float"))
INFOS = {name: ServableInfo(name, 1, f"digest-{name}", {"run": FLOATS})
         for name in ("alice/a", "alice/b", "bob/c")}


class Hub:
    def __init__(self, **config: Any) -> None:
        settings = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.5, **config}
        self.state = BrokerState(lambda name, version: INFOS[name], HubConfig(**settings))
        self.now = 0.0

    def request(self, rid: str, servable: str = "alice/a", timeout: float | None = None,
                user: str = "alice") -> list[Any]:
        msg = Request(rid, servable, None, "run", [1.0], timeout, False)
        return self.state.handle(FromClient(b"c-" + user.encode(), msg, user), self.now)

    def tick(self, at: float) -> list[Any]:
        self.now = at
        return self.state.handle(Tick(), at)


def starts(actions: list[Any]) -> list[StartServable]:
    return [a for a in actions if isinstance(a, StartServable)]


def errors(actions: list[Any]) -> dict[str, Any]:
    return {a.message.request_id: error_from_wire(a.message.error) for a in actions
            if isinstance(a, ToClient) and not a.message.ok}


def test_a_request_with_no_worker_starts_its_default_profile_once() -> None:
    hub = Hub(start_on_demand={"alice/a": "slurm-local"})
    assert starts(hub.request("r1")) == [StartServable(("alice/a", 1), "slurm-local")]
    assert starts(hub.request("r2")) == []  # under way: one start per servable
    assert hub.state.request_status("alice", "r1") == {
        "request_id": "r1", "servable": "alice/a@1", "state": "queued", "stage": "requested",
        "reason": None}
    assert hub.state.request_status("bob", "r1") is None  # only the caller's own


def test_a_servable_without_a_default_profile_starts_nothing() -> None:
    hub = Hub(start_on_demand={"alice/a": "local"})
    assert starts(hub.request("r1", servable="bob/c", timeout=1.0)) == []
    error = errors(hub.tick(2.0))["r1"]
    assert type(error) is Timeout and "workers start" in error.message


def test_star_names_a_profile_for_every_servable() -> None:
    hub = Hub(start_on_demand={"*": "local"})
    assert starts(hub.request("r1", servable="bob/c")) == [StartServable(("bob/c", 1), "local")]


def test_the_deadline_error_names_each_stage_it_reached() -> None:
    hub = Hub(start_on_demand={"alice/a": "local"})
    board = hub.state.ondemand
    hub.request("r1", timeout=1.0)
    board.set_stage(("alice/a", 1), "queued at scheduler", 0.5, "pilot-7")
    hub.request("r2", timeout=2.0)
    error = errors(hub.tick(1.0))["r1"]
    assert isinstance(error, ServableStarting) and isinstance(error, Timeout)
    assert error.details["stage"] == "queued at scheduler"
    board.set_stage(("alice/a", 1), "job running", 1.5)
    hub.state.handle(FromWorker(b"w1", Hello("w1", "alice/a", None, "h", 1, None)), 1.5)
    hub.request("r3", timeout=1.0)
    assert errors(hub.tick(2.0))["r2"].details["stage"] == "model loading"
    hub.state.handle(FromWorker(b"w1", Ready("w1")), 2.0)  # serves now: no stage
    assert hub.state.start_stage(("alice/a", 1)) is None


def test_a_failed_start_answers_the_waiting_callers_with_its_error() -> None:
    hub = Hub(start_on_demand={"alice/a": "nowhere"})
    hub.request("r1")
    hub.request("r2")
    hub.state.ondemand.fail(("alice/a", 1), PilotError("no profile 'nowhere'").to_wire())
    found = errors(hub.tick(0.5))
    assert set(found) == {"r1", "r2"} and all(isinstance(e, PilotError) for e in found.values())
    assert starts(hub.request("r3")) != []  # a later request tries again


def test_starts_are_rate_limited_and_deferred_ones_start_later() -> None:
    hub = Hub(start_on_demand={"*": "local"}, max_starts_per_minute=1)
    assert len(starts(hub.request("r1", servable="alice/a"))) == 1
    assert starts(hub.request("r2", servable="alice/b")) == []
    assert starts(hub.tick(30.0)) == []
    assert starts(hub.tick(60.5)) == [StartServable(("alice/b", 1), "local")]


def test_a_deferred_start_is_dropped_when_its_requests_are_gone() -> None:
    hub = Hub(start_on_demand={"*": "local"}, max_starts_per_minute=1)
    hub.request("r1", servable="alice/a")
    hub.request("r2", servable="alice/b", timeout=5.0)
    hub.tick(6.0)  # r2 expired
    assert starts(hub.tick(61.0)) == []


def test_an_idle_servable_is_released_after_the_configured_time() -> None:
    hub = Hub(start_on_demand={"alice/a": "local"}, idle_release_after=10.0)
    hub.request("r1", timeout=1.0)
    hub.state.ondemand.set_stage(("alice/a", 1), "queued at scheduler", 0.1, "pilot-3")
    assert [a for a in hub.tick(5.0) if isinstance(a, ReleaseServable)] == []
    released = [a for a in hub.tick(11.5) if isinstance(a, ReleaseServable)]
    assert released == [ReleaseServable(("alice/a", 1), "pilot-3")]
    assert starts(hub.request("r2")) != []  # the next request starts it again


def test_nothing_is_released_while_requests_wait() -> None:
    hub = Hub(start_on_demand={"alice/a": "local"}, idle_release_after=1.0)
    hub.request("r1")  # no deadline: it waits as long as the start takes
    assert [a for a in hub.tick(50.0) if isinstance(a, ReleaseServable)] == []


def test_the_state_wakes_to_poll_the_board_only_while_something_starts() -> None:
    hub = Hub(start_on_demand={"alice/a": "local"}, heartbeat_interval=100,
              heartbeat_timeout=200)
    hub.tick(0.0)
    assert hub.state.next_wakeup(0.0) == pytest.approx(100)
    hub.request("r1")
    assert hub.state.next_wakeup(0.0) < 1.0
