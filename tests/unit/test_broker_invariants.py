"""The broker state's books (``BrokerState.validate``), its frozen snapshot and its gate.

tests/unit/conftest.py runs ``validate()`` after every event of every unit test; these tests
check that it finds each kind of broken book, and what the state publishes to other threads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.broker.events import ServableInfo
from dlhub_hpc.broker.gate import OpenGate
from dlhub_hpc.broker.state import BrokerState, FromClient, FromWorker
from dlhub_hpc.errors import BrokerInvariantError, PermissionDenied, ServableNotFound
from dlhub_hpc.protocol import Hello, Reply, Request
from tests.unit.test_broker_state import ADD, Catalog, Hub, only_batch, replies


@pytest.fixture
def busy(catalog: Catalog) -> Hub:
    """w1 runs r1 (with a deadline), r2 waits in the queue, w2 is idle for another servable."""
    hub = Hub(catalog)
    hub.start("w1")
    only_batch(hub.request("r1", timeout=5.0))
    hub.request("r2", timeout=5.0)
    return hub


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(ADD, dataclasses.replace(ADD, name="demo/det", deterministic=True))


def _drop_worker(s: BrokerState) -> None:
    del s._workers[b"w1"]  # as a reader saw it mid-_lose_worker: its batch still there
    s._worker_count[ADD.key] -= 1


def _idle_busy(s: BrokerState) -> None:
    s._idle.setdefault(ADD.key, {})[b"w1"] = None


def _miscount_workers(s: BrokerState) -> None:
    s._worker_count[ADD.key] += 1


def _miscount_queue(s: BrokerState) -> None:
    s._queues[ADD.key]["run"].live += 1


def _miscount_in_flight(s: BrokerState) -> None:
    s._in_flight[ADD.key] -= 1


def _lose_deadline(s: BrokerState) -> None:
    s._deadlines = [d for d in s._deadlines if d[2].request_id != "r2"]


def _orphan_flight(s: BrokerState) -> None:
    s._flights[b"no-such-key"] = []


@pytest.mark.parametrize(("corrupt", "words"), [
    (_drop_worker, "which is not known"),
    (_idle_busy, "lists w1 as idle; it is busy"),
    (_miscount_workers, "counts 2 workers; 1 are known"),
    (_miscount_queue, "counts 2 queued; 1 are unanswered"),
    (_miscount_in_flight, "counts 0 items in flight; batches hold 1"),
    (_lose_deadline, "request r2 has a deadline the heap does not hold"),
    (_orphan_flight, "has 0 leaders"),
])
def test_validate_names_each_broken_book(busy: Hub, corrupt: Callable[[BrokerState], None],
                                         words: str) -> None:
    busy.state.validate()  # balanced before
    corrupt(busy.state)
    with pytest.raises(BrokerInvariantError, match=words) as caught:
        busy.state.validate()
    assert caught.value.details["problems"]


def test_a_single_flight_keeps_one_leader_through_a_timeout(catalog: Catalog) -> None:
    hub = Hub(catalog)
    hub.request("a", servable="demo/det", timeout=1.0)  # no worker: it waits, and leads
    hub.request("b", servable="demo/det", timeout=5.0)  # the same input: it follows a
    hub.tick(1.5)  # a times out; b takes its place in the queue
    hub.state.validate()
    hub.start("w1")  # b goes to the worker as the flight's one leader
    hub.state.validate()


def test_shutdown_leaves_no_request_counted_as_queued(busy: Hub) -> None:
    actions = busy.state.shutdown("maintenance")
    assert {rid for rid, r in replies(actions).items() if not r.ok} == {"r1", "r2"}
    assert busy.state.snapshot()["servables"]["demo/add@1"] == {"queued": 0, "in_flight": 0}


def test_the_snapshot_is_frozen_and_names_a_flight_s_servable_on_its_own(busy: Hub) -> None:
    view = busy.state.view()
    assert view.as_dict() == busy.state.snapshot()
    assert view.servables["demo/add@1"].in_flight == 1
    with pytest.raises(TypeError):
        view.servables["demo/add@1"] = view.servables["demo/add@1"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.workers[0].state = "idle"  # type: ignore[misc]
    busy.hello("w3")
    assert len(view.workers) == 1  # what was published does not move with the state
    assert busy.state.view().changes > view.changes


# ---- the gate -----------------------------------------------------------------------------

class Refusing(OpenGate):
    """Lets nobody run anything, and hides every servable."""

    def authorize(self, user: str, info: ServableInfo) -> None:
        raise PermissionDenied(f"{user!r} may not use {info.name}")

    def may_see(self, user: str, name: str) -> bool:
        return False

    def may_serve(self, user: str, info: ServableInfo, pooled: bool = False) -> bool:
        return False


def _reply(actions: list[Any], rid: str) -> Reply:
    return replies(actions)[rid]


def test_a_state_checks_its_gate_from_its_first_event(catalog: Catalog) -> None:
    state = BrokerState(catalog, HubConfig(), Refusing())
    refused = _reply(state.handle(FromClient(b"c", Request("r1", "demo/add", None, "", [1, 2]),
                                             "bob"), 0.0), "r1")
    assert not refused.ok and "may not use demo/add" in (refused.error or {})["message"]
    hidden = _reply(state.handle(FromClient(b"c", Request("r2", "demo/gone", None, "", 1),
                                            "bob"), 0.0), "r2")
    assert (hidden.error or {})["type"] == ServableNotFound.__name__
    assert "that 'bob' may use" in (hidden.error or {})["message"]
    state.handle(FromWorker(b"w", Hello("w", "demo/add", None, "h", 1)), 0.0)
    assert state.snapshot()["workers"] == [] and state.stats["workers_refused"] == 1


def test_a_state_made_without_a_gate_is_open_and_says_so(catalog: Catalog) -> None:
    state = BrokerState(catalog)
    assert isinstance(state.gate, OpenGate) and repr(state.gate) == "OpenGate()"


def test_a_hub_s_state_has_its_security_as_gate_before_start(keys_dir: Path,
                                                             tmp_path: Path) -> None:
    from dlhub_hpc.hub import Hub as RealHub

    hub = RealHub(HubConfig(home=tmp_path / "hub"))
    try:
        assert hub.state.gate is hub.security
        assert hub.security.may_see("anyone", "demo/unpublished")  # public until published
        assert not hub.security.credential_live("worker:alice:" + "k" * 40)  # none loaded
    finally:
        hub.stop()
