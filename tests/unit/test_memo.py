"""Memoization: the MemoCache and its keys, and single flight in BrokerState."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from dlhub_hpc.broker.memo import MemoCache, memo_key, value_nbytes
from dlhub_hpc.broker.state import ServableInfo, Tick, ToClient
from dlhub_hpc.errors import ExecutionError, Timeout
from dlhub_hpc.protocol import BatchResult, Reply
from dlhub_hpc.servable.types import ArgType
from tests.unit.test_broker_state import (
    FLOATS,
    Catalog,
    Hub,
    batches,
    error_of,
    only_batch,
    replies,
)

ANY = ArgType(type="any")
DET = ServableInfo("demo/det", 1, "digest-det-1", {"run": ANY, "sum": FLOATS},
                   max_batch_size=4, deterministic=True)
DET_V2 = ServableInfo("demo/det", 2, "digest-det-2", {"run": ANY, "sum": FLOATS},
                      max_batch_size=4, deterministic=True)
RANDOM = ServableInfo("demo/random", 1, "digest-random", {"run": ANY}, max_batch_size=4)


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(DET, RANDOM)


def make_hub(catalog: Catalog, **config: Any) -> Hub:
    hub = Hub(catalog, heartbeat_interval=50.0, heartbeat_timeout=100.0, **config)
    hub.tick(0.0)
    return hub


@pytest.fixture
def hub(catalog: Catalog) -> Hub:
    hub = make_hub(catalog)
    hub.start("w1", "demo/det")
    return hub


def ask(hub: Hub, rid: str, payload: Any, **kw: Any) -> list[Any]:
    kw.setdefault("servable", "demo/det")
    return hub.request(rid, payload, **kw)


def run_through(hub: Hub, rid: str, payload: Any, value: Any, wid: str = "w1",
                **kw: Any) -> Reply:
    """Request, see it batched to ``wid``, answer it with ``value``; the reply."""
    identity, batch = only_batch(ask(hub, rid, payload, **kw))
    assert identity == wid.encode()
    return replies(hub.result(wid, batch.batch_id, value))[rid]


def stats(hub: Hub) -> dict[str, int]:
    return hub.state.snapshot()["stats"]


# ---- cache hits and misses -----------------------------------------------------------------

def test_a_repeated_request_is_answered_from_the_cache(hub: Hub) -> None:
    assert run_through(hub, "r1", [1, 2], 3.0).value == 3.0
    hub.now = 5.0
    actions = ask(hub, "r2", [1, 2], client=b"c2")
    assert actions == [ToClient(b"c2", Reply("r2", True, 3.0, None, [0.0, 0.0]))]
    assert (stats(hub)["memo_hits"], stats(hub)["memo_misses"]) == (1, 1)
    assert stats(hub)["batches"] == 1


def test_dict_key_order_does_not_change_the_key(hub: Hub) -> None:
    run_through(hub, "r1", {"a": 1, "b": [2, 3]}, "x")
    assert replies(ask(hub, "r2", {"b": [2, 3], "a": 1}))["r2"].value == "x"


def test_an_equal_numpy_array_hits(hub: Hub) -> None:
    run_through(hub, "r1", np.arange(6.0).reshape(2, 3), 15.0)
    actions = ask(hub, "r2", np.arange(6.0).reshape(2, 3).copy())
    assert batches(actions) == [] and replies(actions)["r2"].value == 15.0


@pytest.mark.parametrize("other", [
    np.arange(6.0, dtype=np.float32).reshape(2, 3),
    np.arange(6.0).reshape(3, 2),
    np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 6.0]]),
], ids=["dtype", "shape", "last-element"])
def test_a_different_numpy_array_misses(hub: Hub, other: np.ndarray) -> None:
    run_through(hub, "r1", np.arange(6.0).reshape(2, 3), 15.0)
    actions = ask(hub, "r2", other)
    assert replies(actions) == {} and len(batches(actions)) == 1


def test_payloads_equal_after_checking_share_a_key(hub: Hub) -> None:
    run_through(hub, "r1", [1, 2], 3.0, method="sum")
    assert replies(ask(hub, "r2", [1.0, 2.0], method="sum"))["r2"].value == 3.0


def test_the_same_payload_for_another_method_misses(hub: Hub) -> None:
    run_through(hub, "r1", [1, 2], "from run")
    actions = ask(hub, "r2", [1, 2], method="sum")
    assert replies(actions) == {} and only_batch(actions)[1].method == "sum"


def test_cache_false_bypasses_the_lookup(hub: Hub) -> None:
    run_through(hub, "r1", [1, 2], 3.0)
    actions = ask(hub, "r2", [1, 2], cache=False)
    assert replies(actions) == {} and only_batch(actions)[1].payloads == [[1, 2]]
    assert stats(hub)["memo_hits"] == 0


def test_a_non_deterministic_servable_is_never_cached(catalog: Catalog) -> None:
    hub = make_hub(catalog)
    hub.start("w1", "demo/random")
    run_through(hub, "r1", [1], 0.5, servable="demo/random")
    assert run_through(hub, "r2", [1], 0.7, servable="demo/random").value == 0.7
    _, batch = only_batch(ask(hub, "r3", [1], servable="demo/random"))
    assert ask(hub, "r4", [1], servable="demo/random") == []  # queued, not joined to r3
    actions = hub.result("w1", batch.batch_id, 0.9)
    assert list(replies(actions)) == ["r3"] and only_batch(actions)[1].payloads == [[1]]
    assert (stats(hub)["memo_entries"], stats(hub)["memo_misses"]) == (0, 0)


def test_a_new_version_never_gets_the_old_versions_answer(
    hub: Hub, catalog: Catalog,
) -> None:
    run_through(hub, "r1", [1, 2], "v1 answer")
    catalog.add(DET_V2)
    hub.state.invalidate("demo/det")
    hub.start("w2", "demo/det")  # serves version 2
    assert run_through(hub, "r2", [1, 2], "v2 answer", wid="w2").value == "v2 answer"
    assert replies(ask(hub, "r3", [1, 2], version=1))["r3"].value == "v1 answer"
    assert replies(ask(hub, "r4", [1, 2]))["r4"].value == "v2 answer"


def test_errors_are_not_cached(hub: Hub) -> None:
    _, batch = only_batch(ask(hub, "r1", [1]))
    failure = ExecutionError("boom").to_wire()
    got = replies(hub.send("w1", BatchResult(batch.batch_id, [[False, failure]])))
    assert isinstance(error_of(got["r1"]), ExecutionError)
    actions = ask(hub, "r2", [1])
    assert replies(actions) == {} and len(batches(actions)) == 1
    assert stats(hub)["memo_entries"] == 0


def test_memo_max_bytes_zero_turns_memoization_off(catalog: Catalog) -> None:
    hub = make_hub(catalog, memo_max_bytes=0)
    hub.start("w1", "demo/det")
    run_through(hub, "r1", [1], 1.0)
    _, busy = only_batch(ask(hub, "r2", [1]))  # no hit: runs again
    ask(hub, "r3", [2])
    ask(hub, "r4", [2])  # identical and in flight together: no single flight either
    _, batch = only_batch(hub.result("w1", busy.batch_id, 1.0))
    assert batch.payloads == [[2], [2]]
    assert (stats(hub)["memo_misses"], stats(hub).get("single_flight_joins", 0)) == (0, 0)


# ---- single flight -------------------------------------------------------------------------

def test_identical_requests_in_flight_run_once_and_all_get_the_answer(hub: Hub) -> None:
    _, batch = only_batch(ask(hub, "r1", [1, 2], client=b"a"))
    assert ask(hub, "r2", [1, 2], client=b"b") == []
    assert ask(hub, "r3", [1, 2], client=b"c") == []
    assert batch.payloads == [[1, 2]]
    actions = hub.result("w1", batch.batch_id, 3.0)
    assert {(a.identity, a.message.request_id, a.message.value) for a in actions
            if isinstance(a, ToClient)} == {(b"a", "r1", 3.0), (b"b", "r2", 3.0),
                                            (b"c", "r3", 3.0)}
    assert stats(hub)["single_flight_joins"] == 2
    assert replies(ask(hub, "r4", [1, 2]))["r4"].value == 3.0  # and it was cached


def test_joined_requests_add_no_items_to_the_next_batch(hub: Hub) -> None:
    _, busy = only_batch(ask(hub, "r0", [0]))
    for rid in ("r1", "r2", "r3"):
        assert ask(hub, rid, [7]) == []
    ask(hub, "r4", [8])
    _, batch = only_batch(hub.result("w1", busy.batch_id, 0.0))
    assert batch.payloads == [[7], [8]]
    assert sorted(replies(hub.result("w1", batch.batch_id, 7.0, 8.0))) == [
        "r1", "r2", "r3", "r4"]


def test_followers_get_the_leaders_error(hub: Hub) -> None:
    _, batch = only_batch(ask(hub, "r1", [1]))
    ask(hub, "r2", [1], client=b"c2")
    failure = ExecutionError("model exploded").to_wire()
    got = replies(hub.send("w1", BatchResult(batch.batch_id, [[False, failure]])))
    assert sorted(got) == ["r1", "r2"]
    assert error_of(got["r2"]).message == "model exploded"
    assert len(batches(ask(hub, "r3", [1]))) == 1  # the error was not cached


def test_a_leader_timing_out_hands_the_flight_to_a_follower(hub: Hub) -> None:
    hub.start("w2", "demo/det")
    _, first = only_batch(ask(hub, "r1", [1], timeout=1.0))
    assert ask(hub, "r2", [1], client=b"c2", timeout=5.0) == []
    actions = hub.tick(1.0)
    got = replies(actions)
    assert list(got) == ["r1"] and isinstance(error_of(got["r1"]), Timeout)
    identity, retry = only_batch(actions)  # the follower is queued again and runs
    assert identity == b"w2" and retry.payloads == [[1]]
    assert replies(hub.result("w1", first.batch_id, 9.0)) == {}  # r1's late answer
    got = replies(hub.result("w2", retry.batch_id, 1.0))
    assert got == {"r2": Reply("r2", True, 1.0, None, [1.0, 0.0])}
    assert replies(ask(hub, "r3", [1]))["r3"].value == 1.0


def test_a_follower_timing_out_alone_does_not_disturb_the_leader(hub: Hub) -> None:
    _, batch = only_batch(ask(hub, "r1", [1]))
    ask(hub, "r2", [1], timeout=1.0)
    actions = hub.tick(1.0)
    assert batches(actions) == [] and list(replies(actions)) == ["r2"]
    assert isinstance(error_of(replies(actions)["r2"]), Timeout)
    assert list(replies(hub.result("w1", batch.batch_id, 5.0))) == ["r1"]
    assert replies(ask(hub, "r3", [1]))["r3"].value == 5.0


def test_a_leader_timing_out_in_the_queue_leaves_the_follower_queued(catalog: Catalog) -> None:
    hub = make_hub(catalog)  # no worker yet
    ask(hub, "r1", [1], timeout=1.0)
    ask(hub, "r2", [1], timeout=5.0)
    assert list(replies(hub.tick(1.0))) == ["r1"]
    assert hub.state.snapshot()["servables"]["demo/det@1"]["queued"] == 1
    _, batch = only_batch(hub.start("w1", "demo/det"))
    assert batch.payloads == [[1]]
    assert list(replies(hub.result("w1", batch.batch_id, 1.0))) == ["r2"]


def full_queue_hub(catalog: Catalog) -> Hub:
    """w1 busy with [2], [3] queued (the bound is 1), and [1] already cached."""
    hub = make_hub(catalog, max_queue_length=1)
    hub.start("w1", "demo/det")
    run_through(hub, "r1", [1], 1.0)
    only_batch(ask(hub, "r2", [2]))
    assert ask(hub, "r3", [3]) == []
    return hub


def test_a_cache_hit_is_answered_even_when_the_queue_is_full(catalog: Catalog) -> None:
    hub = full_queue_hub(catalog)
    got = replies(ask(hub, "r4", [1]))["r4"]
    assert (got.ok, got.value) == (True, 1.0)


def test_joining_a_queued_twin_is_allowed_when_the_queue_is_full(catalog: Catalog) -> None:
    hub = full_queue_hub(catalog)
    assert ask(hub, "r4", [3]) == []
    assert stats(hub)["single_flight_joins"] == 1


def test_a_memo_hit_is_not_answered_again_at_its_deadline(hub: Hub) -> None:
    run_through(hub, "r1", [1], 1.0)
    ask(hub, "r2", [1], timeout=1.0)  # a hit
    assert replies(hub.state.handle(Tick(), 2.0)) == {}
    assert stats(hub).get("timeouts", 0) == 0


# ---- MemoCache -----------------------------------------------------------------------------

def blob(total: int) -> bytes:
    """A value whose entry takes ``total`` bytes of the cache."""
    return b"x" * (total - 64)


def test_memo_cache_evicts_the_least_recently_used() -> None:
    cache = MemoCache(300)
    for key in (b"a", b"b", b"c"):
        cache.put(key, blob(100))
    assert cache.get(b"a")[0]  # a is now the most recent
    cache.put(b"d", blob(100))
    assert [cache.get(k)[0] for k in (b"a", b"b", b"c", b"d")] == [True, False, True, True]
    assert (cache.evictions, cache.nbytes, len(cache)) == (1, 300, 3)


def test_memo_cache_evicts_as_many_as_the_byte_bound_needs() -> None:
    cache = MemoCache(300)
    for key in (b"a", b"b", b"c"):
        cache.put(key, blob(100))
    cache.put(b"big", blob(250))
    assert (len(cache), cache.evictions, cache.nbytes) == (1, 3, 250)
    assert cache.get(b"big") == (True, blob(250))


def test_an_entry_larger_than_the_bound_is_not_stored() -> None:
    cache = MemoCache(300)
    cache.put(b"small", blob(100))
    cache.put(b"huge", blob(301))
    assert cache.get(b"huge") == (False, None)
    assert (len(cache), cache.nbytes, cache.evictions) == (1, 100, 0)


def test_putting_a_key_again_replaces_its_bytes() -> None:
    cache = MemoCache(1000)
    cache.put(b"k", blob(100))
    cache.put(b"k", blob(200))
    assert (len(cache), cache.nbytes, cache.get(b"k")[1]) == (1, 200, blob(200))


def test_memo_cache_stats_count_hits_and_misses() -> None:
    cache = MemoCache(1000)
    cache.put(b"k", 1)
    cache.get(b"k")
    cache.get(b"nope")
    cache.get(b"nope")
    assert cache.stats() == {"memo_hits": 1, "memo_misses": 2, "memo_entries": 1,
                             "memo_bytes": 72, "memo_evictions": 0}


# ---- keys and sizes ------------------------------------------------------------------------

BASE = ("digest", 1, "run", {"x": [1.0, 2.0], "name": "a"})


def test_memo_key_is_stable() -> None:
    key = memo_key(*BASE)
    assert memo_key("digest", 1, "run", {"name": "a", "x": [1.0, 2.0]}) == key
    assert isinstance(key, bytes) and len(key) == 20


@pytest.mark.parametrize("changed", [
    ("digest2", 1, "run", BASE[3]),
    ("digest", 2, "run", BASE[3]),
    ("digest", 1, "predict", BASE[3]),
    ("digest", 1, "run", {"x": [1.0, 2.5], "name": "a"}),
    ("digest", 1, "run", {"x": [1.0, 2.0], "name": "b"}),
    ("digest", 1, "run", {"x": [1.0, 2.0]}),
], ids=["digest", "version", "method", "number", "string", "missing-key"])
def test_memo_key_changes_with_each_part(changed: tuple[Any, ...]) -> None:
    assert memo_key(*changed) != memo_key(*BASE)


def test_memo_key_of_arrays_depends_on_content_not_memory_layout() -> None:
    a = np.arange(12.0).reshape(3, 4)
    key = memo_key("d", 1, "run", a)
    assert memo_key("d", 1, "run", np.asfortranarray(a)) == key
    assert memo_key("d", 1, "run", np.arange(24.0).reshape(3, 8)[:, ::2] / 2) == key
    assert memo_key("d", 1, "run", a.astype(np.float32)) != key
    assert memo_key("d", 1, "run", a.reshape(4, 3)) != key
    changed = a.copy()
    changed[-1, -1] += 1
    assert memo_key("d", 1, "run", changed) != key
    assert memo_key("d", 1, "run", a.tolist()) != key


def test_memo_key_keeps_arrays_in_their_places() -> None:
    a, b = np.zeros(2), np.ones(2)
    assert memo_key("d", 1, "run", [a, b]) != memo_key("d", 1, "run", [b, a])


def test_value_nbytes_counts_arrays_bytes_and_strings_exactly() -> None:
    assert value_nbytes(np.zeros((10, 10))) == 800
    assert value_nbytes(np.zeros(10, dtype=np.int8)) == 10
    assert value_nbytes(b"abcd") == 4
    assert value_nbytes("abc") == 3


def test_value_nbytes_of_nested_values_counts_every_part() -> None:
    array = np.zeros(100)
    assert value_nbytes({"a": array}) >= 800 + 1
    assert value_nbytes([array, array, b"xy"]) >= 1602
    assert value_nbytes({"k": [array, {"deep": b"x" * 50}]}) >= 800 + 50
