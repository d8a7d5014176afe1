"""A pool pilot at zero blocks, and the stages of a pool's start, in the broker's state.

The hub hands the state its running pool pilots (``pool_pilots``: spec, owner, stage); with
no member connected their servables' requests still queue, count as the pool's demand in
the snapshot (what the pilot scales on), start no pilot on demand, show the pilot's stage,
and time out with ``ServableStarting``. Events in, actions out, as test_pools.py drives it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.broker.events import StartServable
from dlhub_hpc.broker.pool_state import PoolPilot
from dlhub_hpc.broker.state import BrokerState, FromClient, FromWorker, Tick
from dlhub_hpc.errors import ServableStarting, Timeout, WorkerLost
from dlhub_hpc.pilot.pilots import Pilot, PilotBlock
from dlhub_hpc.pilot.profiles import load_profile
from dlhub_hpc.pilot.service import pool_pilot
from dlhub_hpc.protocol import Bye, Hello, Ready, Request
from dlhub_hpc.servable.pools import PoolSpec
from tests.unit.test_broker_state import Catalog, batches
from tests.unit.test_ondemand import errors
from tests.unit.test_pools import info, loads

ALICE = PoolSpec.parse("owner:alice", 100)


class ZeroHub:
    """A state whose hub runs pool pilots, given as ``pilots`` (changed by the test)."""

    def __init__(self, *pilots: PoolPilot, **config: Any) -> None:
        self.pilots: tuple[PoolPilot, ...] = pilots
        catalog = Catalog(info("alice/a", public=True), info("alice/b"),
                          info("bob/c", public=True), info("alice/mpi", ranks=2),
                          info("alice/built", images=("/img/a.sif",)))
        settings = {"heartbeat_interval": 0.1, "heartbeat_timeout": 5.0, **config}
        self.state = BrokerState(catalog, HubConfig(**settings),
                                 pool_pilots=lambda: self.pilots)
        self.now = 0.0

    def request(self, rid: str, name: str, timeout: float | None = 60.0,
                user: str = "alice") -> list[Any]:
        msg = Request(rid, name, None, "", 1, timeout, False)
        return self.state.handle(FromClient(b"c", msg, user), self.now)

    def join(self, wid: str, spec: PoolSpec = ALICE) -> list[Any]:
        hello = Hello(wid, "", None, "n", 1, None, 1, None, spec.to_wire())
        return self.state.handle(FromWorker(wid.encode(), hello, ""), self.now)

    def ready(self, wid: str, ref: str) -> list[Any]:
        report = {"loaded": ref, "nbytes": 10, "holds": [[ref, 10]], "evicted": []}
        return self.state.handle(FromWorker(wid.encode(), Ready(wid, report)), self.now)

    def tick(self, at: float) -> list[Any]:
        self.now = at
        return self.state.handle(Tick(), at)

    def stage(self, rid: str) -> str | None:
        found = self.state.request_status("alice", rid)
        assert found is not None, rid
        return found["stage"]


def test_a_pool_pilot_at_zero_counts_its_pools_queue_as_demand() -> None:
    hub = ZeroHub((ALICE, None, "requested"))
    assert hub.state.snapshot()["pools"]["queued"] == {ALICE.ref(): 0}
    assert hub.request("r1", "alice/a") == []  # queued: nothing serves it yet
    hub.request("r2", "alice/b")
    hub.request("r3", "bob/c")  # not alice's: the pool does not serve it
    hub.request("r4", "alice/mpi")  # MPI ranks: a pool never serves it
    assert hub.state.snapshot()["pools"]["queued"] == {ALICE.ref(): 2}
    assert hub.state.snapshot()["servables"]["alice/a@1"]["queued"] == 1


def test_the_pool_counts_only_what_its_owner_may_have_served() -> None:
    tagged = PoolSpec.parse("public", 100)
    hub = ZeroHub((tagged, "bob", "requested"))  # bob's credential: bob's servables only
    hub.request("r1", "alice/a")
    hub.request("r2", "bob/c")
    assert hub.state.snapshot()["pools"]["queued"] == {tagged.ref(): 1}


def test_a_servable_with_its_own_image_counts_only_for_a_pool_in_that_image() -> None:
    hub = ZeroHub((ALICE, None, "requested"), (ALICE.in_image("/img/a.sif"), None, "requested"))
    hub.request("r1", "alice/built")
    assert hub.state.snapshot()["pools"]["queued"] == {ALICE.ref(): 1}  # one ref: the image's
    hub.pilots = ((ALICE, None, "requested"),)  # only the pilot that runs no container
    assert hub.state.snapshot()["pools"]["queued"] == {ALICE.ref(): 0}
    assert hub.stage("r1") is None  # no pool pilot will serve it


def test_without_a_pool_pilot_the_snapshot_has_no_pools() -> None:
    hub = ZeroHub()
    hub.request("r1", "alice/a")
    assert not hub.state.snapshot().get("pools")


def test_a_request_for_a_pool_at_zero_is_served_once_its_block_connects() -> None:
    hub = ZeroHub((ALICE, None, "queued at scheduler"))
    hub.request("r1", "alice/a", timeout=30.0)
    assert hub.stage("r1") == "queued at scheduler"
    hub.pilots = ((ALICE, None, "job running"),)  # the scaling tick saw the job run
    assert hub.stage("r1") == "job running"
    assert loads(hub.join("w1")) == [(b"w1", "alice/a")]  # the block's worker loads it
    assert hub.stage("r1") == "model loading"
    ((who, batch),) = batches(hub.ready("w1", "alice/a@1"))
    assert who == b"w1" and batch.request_ids == ["r1"]
    assert hub.state.request_status("alice", "r1") == {
        "request_id": "r1", "servable": "alice/a@1", "state": "running", "stage": None,
        "reason": None}


def test_a_deadline_passed_while_the_pool_pilot_starts_names_the_stage() -> None:
    hub = ZeroHub((ALICE, None, "queued at scheduler"))
    hub.request("r1", "alice/a", timeout=1.0)
    error = errors(hub.tick(1.0))["r1"]
    assert isinstance(error, ServableStarting) and isinstance(error, Timeout)
    assert error.details["stage"] == "queued at scheduler"
    assert "starting in its pool (queued at scheduler)" in error.message
    assert hub.state.snapshot()["pools"]["queued"] == {ALICE.ref(): 0}


def test_a_deadline_passed_while_a_pooled_worker_loads_names_model_loading() -> None:
    hub = ZeroHub()
    hub.join("w1")
    assert loads(hub.request("r1", "alice/a", timeout=1.0)) == [(b"w1", "alice/a")]
    assert hub.stage("r1") == "model loading"
    error = errors(hub.tick(1.0))["r1"]
    assert isinstance(error, ServableStarting) and error.details["stage"] == "model loading"


def test_a_pooled_servable_that_serves_shows_no_stage_while_a_second_copy_loads() -> None:
    hub = ZeroHub()
    hub.join("w1")
    hub.request("r1", "alice/a")
    hub.ready("w1", "alice/a@1")  # w1 holds it and runs r1
    hub.join("w2")
    hub.request("r2", "alice/a")  # w1 is busy: w2 loads a second copy
    assert hub.stage("r2") is None  # it serves: r2 waits for a worker, not for a start


def test_a_pool_pilot_at_zero_is_no_reason_to_start_a_pilot_on_demand() -> None:
    hub = ZeroHub((ALICE, None, "requested"), start_on_demand={"*": "local"})
    assert [a for a in hub.request("r1", "alice/a") if isinstance(a, StartServable)] == []
    assert hub.stage("r1") == "requested"
    started = [a for a in hub.request("r2", "bob/c") if isinstance(a, StartServable)]
    assert started == [StartServable(("bob/c", 1), "local")]  # no pool serves bob's


def test_a_stopped_pool_pilot_no_longer_counts() -> None:
    hub = ZeroHub((ALICE, None, "requested"))
    hub.request("r1", "alice/a", timeout=1.0)
    hub.pilots = ()
    assert not hub.state.snapshot().get("pools")
    error = errors(hub.tick(1.0))["r1"]
    assert type(error) is Timeout and "no worker serves alice/a@1" in error.message


def test_the_pool_pilot_of_a_pilot_says_its_stage_from_its_blocks(tmp_path: Path) -> None:
    pilot = Pilot(load_profile("local"), ALICE.ref(), "tcp://127.0.0.1:1", tmp_path)
    assert pool_pilot(pilot) == (ALICE, None, "requested")  # no block yet
    pilot.blocks["b1"] = PilotBlock("b1", "1", pilot.servable, 1, 0.0)
    assert pool_pilot(pilot) == (ALICE, None, "queued at scheduler")
    pilot.blocks["b1"].state = "RUNNING"
    assert pool_pilot(pilot) == (ALICE, None, "job running")
    found = pool_pilot(pilot)
    assert found is not None and found.spec.image == ""  # its profile runs no container
    pilot.halted = True
    assert pool_pilot(pilot) is None  # it starts nothing more
    single = Pilot(load_profile("local"), "alice/a@1", "tcp://127.0.0.1:1", tmp_path)
    assert pool_pilot(single) is None


def test_a_pooled_worker_lost_mid_batch_leaves_its_requests_to_the_pool_pilot() -> None:
    """Its pilot brings another pooled worker, as a servable's pilot brings one of its own:
    the batch waits for it instead of failing with WorkerLost."""
    hub = ZeroHub((ALICE, None, "job running"))
    hub.request("r1", "alice/a", timeout=30.0)
    hub.join("w1")
    ((_, batch),) = batches(hub.ready("w1", "alice/a@1"))
    assert batch.request_ids == ["r1"]
    lost = hub.state.handle(FromWorker(b"w1", Bye("w1", "killed")), hub.now)
    assert errors(lost) == {}  # retried, not failed
    assert hub.state.request_status("alice", "r1")["state"] == "queued"
    assert loads(hub.join("w2")) == [(b"w2", "alice/a")]  # the next pooled worker takes it
    ((who, again),) = batches(hub.ready("w2", "alice/a@1"))
    assert who == b"w2" and again.request_ids == ["r1"]


def test_without_a_pool_pilot_a_lost_pooled_workers_batch_fails_at_once() -> None:
    hub = ZeroHub()
    hub.join("w1")
    hub.request("r1", "alice/a", timeout=30.0)
    assert len(batches(hub.ready("w1", "alice/a@1"))) == 1
    lost = hub.state.handle(FromWorker(b"w1", Bye("w1", "killed")), hub.now)
    assert list(errors(lost)) == ["r1"] and isinstance(errors(lost)["r1"], WorkerLost)


def test_a_pool_at_zero_counts_what_other_owners_allowed_its_owner_to_pool() -> None:
    bobs = PoolSpec.parse("owner:bob", 100)
    hub = ZeroHub((bobs, "bob", "requested"))
    hub.request("r1", "alice/a")
    assert hub.state.snapshot()["pools"]["queued"] == {bobs.ref(): 0}  # not allowed
    assert hub.stage("r1") is None
    hub.state.pools.granted = lambda owner, info: (owner, info.name) == ("bob", "alice/a")
    hub.pilots = ((bobs, "bob", "queued at scheduler"),)  # a new list: stages looked up anew
    hub.request("r2", "alice/a")
    assert hub.state.snapshot()["pools"]["queued"] == {bobs.ref(): 2}
    assert hub.stage("r2") == "queued at scheduler"


def test_a_grant_given_while_the_pool_pilots_stay_is_seen_once_the_servable_changes() -> None:
    bobs = PoolSpec.parse("owner:bob", 100)
    hub = ZeroHub((bobs, "bob", "job running"))
    hub.request("r1", "alice/a")
    assert hub.stage("r1") is None  # bob may not pool alice's
    hub.state.pools.granted = lambda owner, info: (owner, info.name) == ("bob", "alice/a")
    hub.state.invalidate("alice/a")  # what the hub does once the grant is written
    assert hub.stage("r1") == "job running"  # the same list of pilots, asked anew


def test_one_look_at_the_pool_pilots_serves_their_stage_and_whether_they_serve() -> None:
    hub = ZeroHub((ALICE, None, "requested"), (ALICE, None, "job running"),
                  (PoolSpec.parse("owner:bob", 100), "bob", "queued at scheduler"))
    asked: list[str] = []
    refusal = hub.state.pools.spec_refusal

    def counted(spec: PoolSpec, owner: str | None, info: Any) -> str | None:
        asked.append(spec.text())
        return refusal(spec, owner, info)

    hub.state.pools.spec_refusal = counted  # type: ignore[method-assign]
    assert hub.state._pool_pilot_stage(("alice/a", 1)) == "job running"  # the furthest
    assert hub.state._pool_pilot_serves(("alice/a", 1))
    hub.request("r1", "alice/a")
    assert hub.stage("r1") == "job running"
    assert len(asked) == 3  # each pilot once, for all of these
    assert hub.state._pool_pilot_stage(("bob/c", 1)) == "queued at scheduler"  # bob's only
