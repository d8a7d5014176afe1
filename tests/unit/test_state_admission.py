"""Admission: a servable's queue bound over all its methods, and each user's fair share of it.

A lone user may fill the whole bound; while others wait each user is owed bound // users,
admitted even past the bound (up to twice it), so one caller's flood never locks the others
out. Every event is followed by ``validate()`` (conftest), which recounts the per-user
counts the state keeps as requests come and go.
"""

from __future__ import annotations

from typing import Any

from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.broker.fairshare import QueueShares
from dlhub_hpc.broker.state import BrokerState, FromClient, FromWorker, Tick
from dlhub_hpc.errors import QueueFull, error_from_wire
from dlhub_hpc.protocol import BatchResult, Hello, Ready, Request
from tests.unit.test_broker_state import ADD, MULTI, Catalog, batches, replies


class Hub:
    def __init__(self, **config: Any) -> None:
        self.state = BrokerState(Catalog(ADD, MULTI), HubConfig(**config))
        self.now = 0.0
        self.n = 0

    def ask(self, user: str, servable: str = "demo/add", method: str = "run",
            timeout: float | None = None) -> QueueFull | None:
        """One request of ``user``: None when queued, else the QueueFull it got."""
        self.n += 1
        rid = f"{user}-{self.n}"
        msg = Request(rid, servable, None, method, [1.0], timeout, False)
        got = replies(self.state.handle(FromClient(user.encode(), msg, user), self.now))
        if rid not in got:
            return None
        error = error_from_wire(got[rid].error or {})
        assert isinstance(error, QueueFull), error
        return error

    def fill(self, user: str, n: int, **kw: Any) -> None:
        for _ in range(n):
            assert self.ask(user, **kw) is None

    def start(self, wid: str, servable: str = "demo/add") -> list[Any]:
        self.state.handle(FromWorker(wid.encode(), Hello(wid, servable, 1, "n", 1)), self.now)
        return self.state.handle(FromWorker(wid.encode(), Ready(wid)), self.now)


def test_a_lone_user_may_fill_the_whole_bound_and_is_told_which_bound() -> None:
    hub = Hub(max_queue_length=4)
    hub.fill("mallory", 4)
    error = hub.ask("mallory")
    assert error is not None and "4 requests queued (the bound is 4)" in error.message
    assert error.details == {"servable": "demo/add", "queued": 4, "limit": 4}


def test_another_user_gets_a_fair_share_when_one_filled_the_queue() -> None:
    hub = Hub(max_queue_length=4)
    hub.fill("mallory", 4)
    hub.fill("alice", 2)  # 4 // 2 users: alice is owed two, past the bound
    error = hub.ask("alice")
    assert error is not None and error.details["share"] == 2 and error.details["yours"] == 2
    assert "your fair share" in error.message and "retry once some of yours" in error.message
    assert hub.ask("mallory") is not None  # over the bound and over her share
    assert hub.state.shares.of_users(ADD.key) == {"mallory": 4, "alice": 2}


def test_the_bound_counts_every_method_of_the_servable() -> None:
    hub = Hub(queue_limits={"demo/multi": 2})
    hub.fill("alice", 1, servable="demo/multi", method="predict")
    hub.fill("alice", 1, servable="demo/multi", method="score")
    error = hub.ask("alice", servable="demo/multi", method="predict")
    assert error is not None and error.details["queued"] == 2
    assert "over all its methods" in error.message


def test_no_one_queues_past_twice_the_bound() -> None:
    hub = Hub(max_queue_length=2)
    hub.fill("a", 2)
    hub.fill("b", 1)  # share 2 // 2
    hub.fill("c", 1)  # share max(1, 2 // 3): the queue holds 4 now, twice the bound
    error = hub.ask("d")
    assert error is not None and "twice its bound of 2" in error.message


def test_a_user_over_their_share_is_admitted_again_once_the_queue_drains() -> None:
    hub = Hub(max_queue_length=4)
    hub.fill("mallory", 4)
    hub.fill("alice", 1)
    assert hub.ask("mallory") is not None
    out = hub.start("w1")  # the worker takes a batch of three (round robin across users)
    ((_, batch),) = batches(out)
    assert len(batch.payloads) == 3
    assert sum(hub.state.shares.of_users(ADD.key).values()) == 2
    assert hub.ask("mallory") is None  # 2 queued: under the bound again
    hub.state.handle(FromWorker(b"w1", BatchResult(batch.batch_id, [[True, 1.0]] * 3)), 0.0)


def test_expired_requests_leave_their_users_count() -> None:
    hub = Hub(max_queue_length=2)
    hub.fill("alice", 2, timeout=1.0)
    assert hub.ask("alice") is not None
    hub.state.handle(Tick(), 1.0)
    assert hub.state.shares.of_users(ADD.key) == {}
    hub.now = 1.0
    hub.fill("alice", 2)


def test_queue_shares_count_and_refuse() -> None:
    shares: QueueShares[str] = QueueShares()
    for user in ("a", "a", "b"):
        shares.add("s", user)
    assert shares.refusal("s", "c", 3) is None  # c holds none: owed max(1, 3 // 3)
    assert shares.refusal("s", "a", 3) == ("share", 3, 2, 1)
    assert shares.refusal("s", "a", 4) is None  # room under the bound
    shares.remove("s", "b")
    assert shares.refusal("s", "a", 2) == ("servable", 2, 2, 2)  # a alone: the whole bound
    shares.clear("s")
    assert shares.queued("s") == 0 and shares.of_users("s") == {}
