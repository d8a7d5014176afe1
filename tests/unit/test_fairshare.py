"""Deficit round robin and the fair request queue (broker/fairshare.py), and the broker
sharing a servable's worker between a flooding caller and a quiet one: counted answers."""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.broker.fairshare import DeficitRoundRobin, FairQueue, pick_flow
from dlhub_hpc.broker.state import BrokerState, FromClient, FromWorker, ServableInfo, ToClient
from dlhub_hpc.errors import Overloaded, QueueFull, error_from_wire
from dlhub_hpc.protocol import Batch, BatchResult, Hello, Ready, Request
from dlhub_hpc.servable.types import ArgType

FLOATS = ArgType(type="list", item_type=ArgType(type="float"))


def test_round_robin_alternates_between_backlogged_flows() -> None:
    order: DeficitRoundRobin[str] = DeficitRoundRobin()
    order.activate("a")
    order.activate("b")
    assert [order.next() for _ in range(4)] == ["a", "b", "a", "b"]


def test_weights_give_a_flow_more_turns_per_round() -> None:
    order: DeficitRoundRobin[str] = DeficitRoundRobin(weights={"a": 3.0})
    order.activate("a")
    order.activate("b")
    assert Counter(order.next() for _ in range(8)) == {"a": 6, "b": 2}


def test_a_costly_item_waits_until_its_flow_saved_enough() -> None:
    order: DeficitRoundRobin[str] = DeficitRoundRobin(quantum=1.0)
    order.activate("big")
    order.activate("small")
    # 'big' sends items of cost 3: it sends once per three rounds, 'small' every round
    sent = []
    for _ in range(6):
        flow = order.peek(3.0 if order.peek() == "big" else 1.0)
        sent.append(order.next(3.0 if flow == "big" else 1.0))
    assert sent.count("small") > sent.count("big") >= 1


def test_peek_names_what_next_returns() -> None:
    order: DeficitRoundRobin[str] = DeficitRoundRobin(weights={"b": 0.5})
    for flow in "abc":
        order.activate(flow)
    for _ in range(10):
        assert order.peek() == order.next()


def test_a_quantum_must_be_positive() -> None:
    with pytest.raises(ValueError, match="quantum"):
        DeficitRoundRobin(quantum=0)


def test_pick_flow_skips_flows_that_ran_dry() -> None:
    order: DeficitRoundRobin[str] = DeficitRoundRobin()
    for flow in "abc":
        order.activate(flow)
    work = {"a": 0, "b": 2, "c": 1}
    picked = []
    while (flow := pick_flow(order, lambda f: work[f] > 0)) is not None:
        work[flow] -= 1
        picked.append(flow)
    assert picked == ["b", "c", "b"]
    assert len(order) == 0


def test_a_fair_queue_interleaves_users_and_keeps_each_users_order() -> None:
    q: FairQueue[tuple[str, int]] = FairQueue(lambda item: item[0])
    for i in range(5):
        q.append(("flood", i))
    q.append(("quiet", 0))
    assert q[0] == ("flood", 0)
    out = [q.popleft() for _ in range(3)]
    assert out == [("flood", 0), ("quiet", 0), ("flood", 1)]
    assert len(q) == 3 and q.flows() == {"flood": 3}


def test_appendleft_puts_a_retried_item_first() -> None:
    q: FairQueue[tuple[str, int]] = FairQueue(lambda item: item[0])
    q.append(("a", 1))
    q.append(("b", 1))
    q.appendleft(("b", 0))
    assert q[0] == ("b", 0) and q.popleft() == ("b", 0)


def test_clear_and_empty_errors() -> None:
    q: FairQueue[tuple[str, int]] = FairQueue(lambda item: item[0], [("a", 1)])
    q.clear()
    assert not q and list(q) == []
    with pytest.raises(IndexError):
        q.popleft()
    with pytest.raises(IndexError):
        q[0]


@given(st.lists(st.tuples(st.sampled_from("abcd"), st.integers()), max_size=60))
def test_a_fair_queue_loses_nothing_and_keeps_per_user_order(items: list[Any]) -> None:
    q: FairQueue[tuple[str, int]] = FairQueue(lambda item: item[0])
    for item in items:
        q.append(item)
    out = []
    while q:
        head = q[0]
        out.append(q.popleft())
        assert out[-1] == head
    assert sorted(out) == sorted(items)
    for user in "abcd":
        assert [x for x in out if x[0] == user] == [x for x in items if x[0] == user]


@given(st.dictionaries(st.sampled_from("abcdef"), st.integers(1, 30), min_size=2))
def test_while_all_are_backlogged_no_user_gets_two_turns_more_than_another(
        sizes: dict[str, int]) -> None:
    q: FairQueue[tuple[str, int]] = FairQueue(lambda item: item[0])
    for user, n in sizes.items():
        for i in range(n):
            q.append((user, i))
    served: Counter[str] = Counter()
    while len(q.flows()) == len(sizes):
        served[q.popleft()[0]] += 1
    assert max(served.values()) - min(served.values()) <= 1


# ---- the broker: one worker, a flood from one user, a few requests from another ----------

ADD = ServableInfo("demo/add", 1, "digest-add-1", {"run": FLOATS}, max_batch_size=4)


def _serve_all(state: BrokerState, first: list[Any]) -> list[str]:
    """Answer every batch the one worker gets, in the order sent (a batch may come while
    it runs another), until none is left; the users answered, in order."""
    answered: list[str] = []
    pending, batches = first, deque[Batch]()
    while True:
        replies = [a.message for a in pending if isinstance(a, ToClient)]
        answered += [r.request_id.split("-")[0] for r in replies]
        batches += [a.message for a in pending
                    if not isinstance(a, ToClient) and isinstance(a.message, Batch)]
        if not batches:
            return answered
        batch = batches.popleft()
        pending = state.handle(FromWorker(b"w1", BatchResult(
            batch.batch_id, [[True, 0.0] for _ in batch.payloads])), 0.0)


def test_a_flood_from_one_user_does_not_starve_another() -> None:
    state = BrokerState(lambda name, version: ADD, HubConfig(memo_max_bytes=0))
    state.handle(FromWorker(b"w1", Hello("w1", "demo/add", None, "h", 1, None)), 0.0)
    first = state.handle(FromWorker(b"w1", Ready("w1")), 0.0)
    for i in range(200):
        first += state.handle(FromClient(b"c1", Request(f"flood-{i}", "demo/add", None, "run",
                                                       [1.0], None, False), "mallory"), 0.0)
    for i in range(5):
        first += state.handle(FromClient(b"c2", Request(f"quiet-{i}", "demo/add", None, "run",
                                                       [2.0], None, False), "alice"), 0.0)
    answered = _serve_all(state, first)
    assert Counter(answered) == {"flood": 200, "quiet": 5}
    last_quiet = max(i for i, who in enumerate(answered) if who == "quiet")
    # alice's five wait for one batch already at the worker, one sent to it ahead
    # (HubConfig.prefetch) and five of mallory's beside hers, not for the 200 queued ahead
    assert answered[:last_quiet + 1].count("flood") <= 4 + 4 + 5


def test_a_servables_own_queue_limit_answers_queue_full() -> None:
    state = BrokerState(lambda name, version: ADD, HubConfig(queue_limits={"demo/add": 2}))
    out = []
    for i in range(3):
        out += state.handle(FromClient(b"c1", Request(f"r{i}", "demo/add", None, "run", [1.0],
                                                      None, False), "u"), 0.0)
    (reply,) = [a.message for a in out if isinstance(a, ToClient)]
    error = error_from_wire(reply.error or {})
    assert isinstance(error, QueueFull) and isinstance(error, Overloaded)
    assert reply.request_id == "r2" and error.details["limit"] == 2
