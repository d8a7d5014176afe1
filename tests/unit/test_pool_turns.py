"""Pooled dispatch beyond placement: turns between a pool's servables (deficit round robin),
start on demand beside a pool, and the load times workers report.

Driven like test_pools.py (events in, actions out; ``validate()`` after each event).
"""

from __future__ import annotations

from typing import Any

from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.broker.events import StartServable
from dlhub_hpc.broker.state import BrokerState
from dlhub_hpc.protocol import Batch, Ready
from tests.unit.test_broker_state import Catalog, batches
from tests.unit.test_pools import PoolHub, info, loads


def starts(actions: list[Any]) -> list[StartServable]:
    return [a for a in actions if isinstance(a, StartServable)]


def serve_all(hub: PoolHub, wid: str, out: list[Any], limit: int = 1000) -> list[str]:
    """Run ``wid``'s batches (and loads) until nothing is left; the servable of each batch,
    in the order the worker got them."""
    order: list[str] = []
    for _ in range(limit):
        if loaded := [ref for who, ref in loads(out) if who == wid.encode()]:
            out = hub.ready(wid, f"{loaded[0]}@1", 10)
            continue
        mine = [b for who, b in batches(out) if who == wid.encode()]
        if not mine:
            return order
        batch: Batch = mine[0]
        assert batch.servable is not None
        order.append(batch.servable)
        out = hub.finish(wid, batch)
    raise AssertionError("the worker never ran out of batches")


def test_a_flood_of_one_servable_does_not_starve_another_of_the_same_pool() -> None:
    hub = PoolHub(info("alice/a"), info("alice/b"))
    hub.join("w1")
    first = hub.request("a0", "alice/a")  # w1 loads a, then is busy with a's batches
    for i in range(1, 41):
        hub.request(f"a{i}", "alice/a")  # a flood of a: ten batches of four
    hub.request("b0", "alice/b")
    order = serve_all(hub, "w1", first)
    # was: w1 held a and took a's queue whole before it ever loaded b (b waited for 41)
    assert order.index("alice/b@1") <= 2, order
    assert order.count("alice/a@1") == 11 and order.count("alice/b@1") == 1
    assert hub.state.view().pools["servables"]["alice/b@1"]["loads"] == 1


def test_turns_alternate_between_backlogged_servables_each_holds() -> None:
    hub = PoolHub(info("alice/a"), info("alice/b"))
    hub.join("w1", budget=100)
    out = hub.request("a0", "alice/a")
    for i in range(1, 13):
        hub.request(f"a{i}", "alice/a")
    for i in range(12):
        hub.request(f"b{i}", "alice/b")
    order = serve_all(hub, "w1", out)
    # after a's first batch: a and b take turns while both have requests waiting
    assert order[1:7] == ["alice/a@1", "alice/b@1"] * 3, order


def on_demand_pool_hub(*names: str) -> PoolHub:
    hub = PoolHub(*(info(n) for n in names))
    config = HubConfig(heartbeat_interval=0.1, heartbeat_timeout=0.5,
                       start_on_demand={"*": "local"})
    hub.state = BrokerState(Catalog(*(info(n) for n in names)), config)
    return hub


def test_a_pool_that_admits_a_servable_keeps_its_default_profile_from_starting_a_pilot() -> None:
    hub = on_demand_pool_hub("alice/a", "alice/b")
    hub.join("w1")
    out = hub.request("r1", "alice/a")
    assert starts(out) == [] and loads(out) == [(b"w1", "alice/a")]
    out = hub.request("r2", "alice/b")  # w1 is busy loading a: b waits for it, no pilot
    assert starts(out) == [] and loads(out) == []
    assert starts(hub.ready("w1", "alice/a@1", 10)) == []
    assert hub.state.start_stage(("alice/b", 1)) is None


def test_a_servable_no_pool_admits_still_starts_on_demand() -> None:
    hub = on_demand_pool_hub("alice/a", "bob/c")
    hub.join("w1")  # alice's pool: bob's servable is not its to serve
    assert starts(hub.request("r1", "bob/c")) == [StartServable(("bob/c", 1), "local")]


def test_status_shows_each_servables_last_load_time_as_the_worker_reported_it() -> None:
    hub = PoolHub(info("alice/a"), info("alice/b"))
    hub.join("w1")
    hub.request("r1", "alice/a")
    report = {"holds": [["alice/a@1", 10]], "seconds": 0.25}
    (_, batch), = batches(hub.send("w1", Ready("w1", report)))
    hub.held["w1"] = [("alice/a@1", 10)]
    hub.finish("w1", batch)
    hub.request("r2", "alice/b")
    hub.send("w1", Ready("w1", {"holds": [["alice/b@1", 10]], "seconds": float("nan")}))
    view = hub.state.view().pools["servables"]
    assert view["alice/a@1"]["last_load_s"] == 0.25
    assert view["alice/b@1"]["last_load_s"] is None  # not a time: not believed
    assert hub.state.pools.view_servable("alice/a@1") == view["alice/a@1"]
    assert hub.state.pools.view_servable("alice/zzz@1") is None
    assert hub.state.pools.view_servable("junk") is None


def test_a_request_that_came_before_any_pooled_worker_is_served_by_the_first_to_join() -> None:
    hub = PoolHub(info("alice/a"))
    assert loads(hub.request("r1", "alice/a")) == []  # no worker yet: it waits
    out = hub.join("w1")
    assert loads(out) == [(b"w1", "alice/a")]
    (_, batch), = batches(hub.ready("w1", "alice/a@1", 10))
    assert batch.request_ids == ["r1"]
