"""Pooled workers in the broker's state: placement, loads, evictions, counters, scoping.

Driven as test_broker_state.py drives the state (events in, actions out); every event is
followed by ``validate()`` (conftest), which checks the pool's books too.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.broker.events import ServableInfo
from dlhub_hpc.broker.pools import (
    PoolBook,
    compatible,
    credential_owner,
    key_of,
    requirement,
)
from dlhub_hpc.broker.state import BrokerState, FromClient, FromWorker, LoadServable, Tick
from dlhub_hpc.errors import ConfigError, ServableLoadError, error_from_wire
from dlhub_hpc.protocol import (
    Batch,
    BatchResult,
    Bye,
    Hello,
    LoadFailed,
    Ready,
    Request,
    Shutdown,
)
from dlhub_hpc.servable.pools import PoolSpec
from dlhub_hpc.servable.types import ArgType
from tests.unit.test_broker_state import Catalog, batches, replies

ANY = {"run": ArgType(type="any")}


def info(name: str, **kw: Any) -> ServableInfo:
    return ServableInfo(name, 1, f"digest-{name}", ANY, max_batch_size=4,
                        owner=name.partition("/")[0], **kw)


class PoolHub:
    """A state with pooled workers; each load is answered by ``ready`` with a report."""

    def __init__(self, *infos: ServableInfo, gate: Any = None, **config: Any) -> None:
        self.state = BrokerState(Catalog(*infos), HubConfig(heartbeat_interval=0.1,
                                                            heartbeat_timeout=0.5, **config),
                                 gate)
        self.now = 0.0
        self.held: dict[str, list[tuple[str, int]]] = {}  # what each worker says it holds

    def send(self, wid: str, msg: Any, user: str = "") -> list[Any]:
        return self.state.handle(FromWorker(wid.encode(), msg, user), self.now)

    def join(self, wid: str, spec: str = "owner:alice", budget: int = 100,
             user: str = "", image: str = "") -> list[Any]:
        self.held[wid] = []
        pool = PoolSpec.parse(spec, budget).in_image(image).to_wire()
        return self.send(wid, Hello(wid, "", None, "n", 1, None, 1, None, pool), user)

    def request(self, rid: str, name: str, payload: Any = 1) -> list[Any]:
        return self.state.handle(
            FromClient(b"c", Request(rid, name, None, "", payload, 60.0, False)), self.now)

    def ready(self, wid: str, ref: str, nbytes: int, budget: int = 100,
              installed: Any = None) -> list[Any]:
        """The worker loaded ``ref`` (``nbytes``) and evicted LRU models past ``budget``;
        ``installed``: the package versions it reports."""
        holds = [h for h in self.held[wid] if h[0] != ref] + [(ref, nbytes)]
        evicted = []
        while sum(n for _, n in holds) > budget and len(holds) > 1:
            evicted.append(holds.pop(0)[0])
        self.held[wid] = holds
        report = {"loaded": ref, "nbytes": nbytes, "holds": [list(h) for h in holds],
                  "evicted": evicted, **({} if installed is None else {"installed": installed})}
        return self.send(wid, Ready(wid, report))

    def finish(self, wid: str, batch: Batch) -> list[Any]:
        assert batch.servable is not None
        ref = batch.servable
        self.held[wid] = [h for h in self.held[wid] if h[0] != ref] + [
            next(h for h in self.held[wid] if h[0] == ref)]  # used: most recent now
        return self.send(wid, BatchResult(batch.batch_id, [[True, p] for p in batch.payloads]))


def loads(actions: list[Any]) -> list[tuple[bytes, str]]:
    return [(a.identity, a.servable.name) for a in actions if isinstance(a, LoadServable)]


def test_a_request_loads_into_a_pooled_worker_then_runs_there() -> None:
    hub = PoolHub(info("alice/a"), info("alice/b"))
    assert hub.join("w1") == []  # nothing waits: it loads nothing
    out = hub.request("r1", "alice/a")
    assert loads(out) == [(b"w1", "alice/a")]
    out = hub.ready("w1", "alice/a@1", 10)
    ((who, batch),) = batches(out)
    assert who == b"w1" and batch.servable == "alice/a@1" and batch.payloads == [1]
    assert replies(hub.finish("w1", batch))["r1"].value == 1
    # the second request for it is a hit: no load
    out = hub.request("r2", "alice/a")
    assert loads(out) == [] and batches(out)[0][1].servable == "alice/a@1"
    view = hub.state.view().pools
    assert view["servables"]["alice/a@1"]["loads"] == 1
    assert view["servables"]["alice/a@1"]["hits"] == 1
    assert view["workers"]["w1"]["holds"] == {"alice/a@1": 10}


def test_a_free_worker_holding_the_servable_wins_over_an_empty_one() -> None:
    hub = PoolHub(info("alice/a"), info("alice/b"))
    hub.join("w1")
    hub.request("r1", "alice/a")
    (_, batch), = batches(hub.ready("w1", "alice/a@1", 10))
    hub.finish("w1", batch)
    hub.join("w2")  # empty, and free longer than nothing: w1 still wins, it holds a
    out = hub.request("r2", "alice/a")
    assert batches(out)[0][0] == b"w1" and loads(out) == []


def test_the_load_goes_to_the_worker_that_would_evict_least() -> None:
    hub = PoolHub(info("alice/a"), info("alice/b"), info("alice/c"))
    hub.join("w1")
    hub.join("w2")
    for rid, name, wid in (("r1", "alice/a", "w1"), ("r2", "alice/b", "w2")):
        out = hub.request(rid, name)
        assert loads(out) == [(wid.encode(), name)]
        (_, batch), = batches(hub.ready(wid, f"{name}@1", 90 if wid == "w1" else 20))
        hub.finish(wid, batch)
    hub.state.pools.sizes[("alice/c", 1)] = 50  # measured before, on a worker since gone
    out = hub.request("r3", "alice/c")
    assert loads(out) == [(b"w2", "alice/c")]  # w2 has room for 50; w1 would evict a


def test_an_eviction_is_counted_and_its_queued_requests_are_loaded_again() -> None:
    hub = PoolHub(info("alice/a"), info("alice/b"))
    hub.join("w1")
    hub.request("r1", "alice/a")
    (_, batch), = batches(hub.ready("w1", "alice/a@1", 80))
    hub.request("r2", "alice/b")  # waits: w1 is busy
    out = hub.finish("w1", batch)
    assert loads(out) == [(b"w1", "alice/b")]
    hub.request("r3", "alice/a")  # queued while a is being evicted
    out = hub.ready("w1", "alice/b@1", 80)  # a is evicted (budget 100)
    (_, batch), = batches(out)
    assert batch.servable == "alice/b@1"
    out = hub.finish("w1", batch)
    assert "r2" in replies(out) and loads(out) == [(b"w1", "alice/a")]  # r3 is not lost
    (_, batch), = batches(hub.ready("w1", "alice/a@1", 80))
    assert replies(hub.finish("w1", batch))["r3"].ok
    view = hub.state.view().pools
    assert view["servables"]["alice/a@1"]["evictions"] == 1
    assert view["servables"]["alice/b@1"]["evictions"] == 1
    assert view["workers"]["w1"]["loads"] == 3
    assert hub.state.stats["pool_evictions"] == 2


def test_a_pool_serves_one_owner_and_its_credential_scopes_it() -> None:
    class OwnersOnly:  # the hub's rule: a credential serves its owner's servables
        def authorize(self, user: str, info: ServableInfo) -> None: ...
        def may_see(self, user: str, name: str) -> bool: return True
        def may_serve(self, user: str, info: ServableInfo, pooled: bool = False) -> bool:
            return credential_owner(user) in (info.owner, "admin")
        def credential_live(self, user: str) -> bool: return True

    hub = PoolHub(info("alice/a", public=True), info("bob/b", public=True),
                  info("admin/p", public=True), gate=OwnersOnly())
    hub.join("wa", "public", user="worker:alice:K1")  # alice's credential: alice's public
    hub.join("wz", "public", user="worker:admin:K2")  # the admin's: the admin's public
    assert loads(hub.request("r1", "bob/b")) == []  # neither may take bob's
    assert loads(hub.request("r2", "admin/p")) == [(b"wz", "admin/p")]
    assert loads(hub.request("r3", "alice/a")) == [(b"wa", "alice/a")]
    hub.join("wb", "owner:bob", user="worker:alice:K1")  # names bob; alice's credential
    assert loads(hub.request("r4", "bob/b")) == []


def test_an_mpi_servable_or_a_conflicting_pin_gets_its_own_workers_and_says_why() -> None:
    hub = PoolHub(info("alice/a", pins=(("numpy", "==1.26"),)),
                  info("alice/b", pins=(("numpy", "==2.0"),)), info("alice/m", ranks=4))
    hub.join("w1")
    hub.request("r1", "alice/a")
    (_, batch), = batches(hub.ready("w1", "alice/a@1", 10))
    hub.finish("w1", batch)
    assert loads(hub.request("r2", "alice/b")) == []
    assert loads(hub.request("r3", "alice/m")) == []
    why = hub.state.view().pools["own_workers"]
    assert "numpy" in why["alice/b@1"] and "alice/a@1" in why["alice/b@1"]
    assert "4 MPI ranks" in why["alice/m@1"]


def test_a_failed_load_keeps_the_worker_and_answers_with_the_load_error() -> None:
    hub = PoolHub(info("alice/a"), info("alice/b"))
    hub.join("w1")
    hub.request("r1", "alice/a")
    error = ServableLoadError("no module named torch").to_wire()
    out = hub.send("w1", LoadFailed("w1", error))
    assert isinstance(error_from_wire(replies(out)["r1"].error), ServableLoadError)
    assert not [a for a in out if isinstance(getattr(a, "message", None), Shutdown)]
    assert loads(hub.request("r2", "alice/b")) == [(b"w1", "alice/b")]  # it serves on


def test_a_pooled_worker_lost_mid_batch_has_its_batch_retried_on_another() -> None:
    hub = PoolHub(info("alice/a"))
    hub.join("w1")
    hub.join("w2")
    hub.request("r1", "alice/a")
    (who, _), = batches(hub.ready("w1", "alice/a@1", 10))
    assert who == b"w1"
    out = hub.send("w1", Bye("w1", "killed"))
    assert loads(out) == [(b"w2", "alice/a")]
    (who, batch), = batches(hub.ready("w2", "alice/a@1", 10))
    assert who == b"w2" and replies(hub.finish("w2", batch))["r1"].ok


def test_a_silent_pooled_worker_is_dropped_and_its_load_goes_elsewhere() -> None:
    hub = PoolHub(info("alice/a"))
    hub.join("w1")
    hub.request("r1", "alice/a")  # w1 loads, then goes silent
    hub.join("w2")
    hub.now = 0.3
    hub.send("w2", Ready("w2"))  # w2 is heard from (an unexpected Ready is ignored)
    hub.now = 0.7
    out = hub.state.handle(Tick(), hub.now)
    assert loads(out) == [(b"w2", "alice/a")] and b"w1" not in hub.state.pools.members


def test_a_malformed_pool_is_refused_at_hello() -> None:
    hub = PoolHub(info("alice/a"))
    out = hub.send("w1", Hello("w1", "", None, "n", 1, None, 1, None, {"spec": 7}))
    assert [a.message for a in out if isinstance(a.message, Shutdown)]
    assert not hub.state.pools.members


def test_a_report_cannot_claim_servables_it_was_never_sent() -> None:
    hub = PoolHub(info("alice/a"))
    hub.join("w1")
    hub.request("r1", "alice/a")
    report = {"holds": [["alice/zzz@1", 5], ["alice/a@1", "x"], "junk"], "evicted": 3}
    hub.send("w1", Ready("w1", report))
    assert hub.state.view().pools["workers"]["w1"]["holds"] == {"alice/a@1": 0}


@pytest.mark.parametrize("text, kind", [
    ("owner:alice", "owner"), ("tag:materials", "tag"), ("public", "public"),
    ("alice/a, alice/b", "names"),
    ("bob/b,alice/a", "names"),  # owners' grants decide at the hub (test_pool_grants.py)
])
def test_pool_specs_read_back_as_written(text: str, kind: str) -> None:
    spec = PoolSpec.parse(text, 123)
    assert spec.kind == kind and PoolSpec.from_wire(spec.to_wire()) == spec


@pytest.mark.parametrize("text", ["owner:", "tag:", "", "alice"])
def test_bad_pool_specs_say_what_to_give(text: str) -> None:
    with pytest.raises(ConfigError, match="owner:NAME, tag:TAG, public"):
        PoolSpec.parse(text)


def test_keys_of_untrusted_refs() -> None:
    assert key_of("alice/a@3") == ("alice/a", 3)
    assert key_of("alice/a") is None and key_of(3) is None and key_of("a@٣") is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 5), st.integers(1, 60)),
                min_size=1, max_size=40))
def test_placement_never_loses_a_request_and_books_balance(
        ops: list[tuple[int, int, int]]) -> None:
    """Any mix of requests over 6 servables on 3 pooled workers, each answered as it is
    asked: every request is answered exactly once, and hits + loads count every batch."""
    names = [f"alice/s{i}" for i in range(6)]
    hub = PoolHub(*(info(n) for n in names))
    for w in ("w0", "w1", "w2"):
        hub.join(w)
    pending: list[Any] = []
    answered: dict[str, Any] = {}
    for i, (_, servable, size) in enumerate(ops):
        pending += hub.request(f"r{i}", names[servable], i)
        while pending:
            a = pending.pop(0)
            if isinstance(a, LoadServable):
                pending += hub.ready(a.identity.decode(), f"{a.servable.name}@1", size)
            elif isinstance(getattr(a, "message", None), Batch):
                pending += hub.finish(a.identity.decode(), a.message)
            elif hasattr(a, "message") and hasattr(a.message, "request_id"):
                assert a.message.request_id not in answered
                answered[a.message.request_id] = a.message.value
    assert answered == {f"r{i}": i for i in range(len(ops))}
    book: PoolBook = hub.state.pools
    batches_sent = hub.state.stats["batches"]
    total = sum(c["hits"] + c["loads"] for c in book.counts.values())
    assert total == batches_sent + sum(1 for m in book.members.values() if m.fresh)


def test_the_cli_names_a_pool_as_a_ref_and_refuses_both_or_neither() -> None:
    import click

    from dlhub_hpc.cli.pools import servable_or_pool

    assert servable_or_pool(None, ("owner:alice",), 1000) == "pool:owner:alice,budget=1000"
    assert servable_or_pool(None, ("alice/a", "alice/b"), None) == "pool:alice/a,alice/b"
    assert servable_or_pool("alice/a", (), None) == "alice/a"
    for servable, pools in (("alice/a", ("public",)), (None, ())):
        with pytest.raises(click.UsageError, match="--servable or --pool"):
            servable_or_pool(servable, pools, None)
    # several owners' servables: the hub decides at start whether their owners allow it
    assert servable_or_pool(None, ("alice/a", "bob/b"), None) == "pool:alice/a,bob/b"


def test_a_worker_that_drains_mid_load_hands_its_load_to_another() -> None:
    from dlhub_hpc.protocol import Drain

    hub = PoolHub(info("alice/a"))
    hub.join("w1")
    hub.request("r1", "alice/a")  # w1 loads it
    hub.join("w2")
    out = hub.send("w1", Drain("w1", "walltime"))
    assert loads(out) == [(b"w2", "alice/a")]  # r1 waits for w2's load, not for w1
    (who, batch), = batches(hub.ready("w2", "alice/a@1", 10))
    assert who == b"w2" and replies(hub.finish("w2", batch))["r1"].ok


def test_the_state_counts_what_waits_for_each_pool() -> None:
    # What a pool pilot scales on: requests queued for the servables each pool admits.
    hub = PoolHub(info("alice/a"), info("alice/b"), info("bob/c"))
    hub.join("w1")
    hub.join("w2", spec="owner:bob")
    hub.request("r1", "alice/a")  # w1 loads it: busy
    hub.request("r2", "alice/b")
    hub.request("r3", "alice/b")
    hub.request("r4", "bob/c")  # w2 loads it: busy
    hub.request("r5", "bob/c")
    alice, bob = (PoolSpec.parse(f"owner:{o}", 100).ref() for o in ("alice", "bob"))
    queued = hub.state.view().pools["queued"]
    assert queued == {alice: 3, bob: 2}


def served_by(hub: PoolHub, rid: str, name: str, wid: str, **ready: Any) -> None:
    """``rid`` for ``name`` loads on ``wid`` and is answered there."""
    assert loads(hub.request(rid, name)) == [(wid.encode(), name)]
    (who, batch), = batches(hub.ready(wid, f"{name}@1", 10, **ready))
    assert who == wid.encode() and replies(hub.finish(wid, batch))[rid].ok


@pytest.mark.parametrize("one, other, fits", [
    ("", "1.19.2", True),  # DLHub's "latest": any version
    (">=1.20", "", True),
    ("latest", "2.0", True),
    ("1.19.2", "1.19.2", True),
    ("1.19.2", "==1.19.2", True),
    ("1.19", "1.19.0", True),
    ("1.19.2", "1.18.5", False),
    ("==1.26", "==2.0", False),
    (">=1.20", "1.19.2", False),
    ("1.21", ">=1.20,<2", True),
    (">=1.20", "<1.0", True),  # two ranges are taken to overlap
    ("==1.*", "1.4", True),
    ("==1.*", "2.0", False),
    ("git+https://x/y", "git+https://x/y", True),  # neither a version nor a range: as text
    ("git+https://x/y", "1.0", False),
])
def test_pins_conflict_only_when_no_version_meets_both(one: str, other: str, fits: bool) -> None:
    assert compatible(requirement(one), requirement(other)) is fits
    assert compatible(requirement(other), requirement(one)) is fits


def test_an_unpinned_or_equal_pin_shares_a_worker_with_an_exact_one() -> None:
    # As DLHub records them: numpy 1.19.2 exactly, or "" for whatever is installed.
    hub = PoolHub(info("alice/a", pins=(("numpy", "1.19.2"),)),
                  info("alice/b", pins=(("numpy", ""), ("scipy", ""))),
                  info("alice/c", pins=(("NumPy", "==1.19.2"),)),
                  info("alice/d", pins=(("numpy", ">=1.20"),)))
    hub.join("w1", budget=1000)
    for i, name in enumerate(("alice/a", "alice/b", "alice/c")):
        served_by(hub, f"r{i}", name, "w1")
    assert loads(hub.request("r9", "alice/d")) == []  # 1.19.2 was imported: >=1.20 waits
    why = hub.state.view().pools["own_workers"]
    assert list(why) == ["alice/d@1"]
    assert why["alice/d@1"] == ("it pins numpy >=1.20 but alice/a@1, already loaded there, "
                                "pins numpy 1.19.2")


def test_the_version_a_worker_has_installed_decides_and_the_reason_names_it() -> None:
    hub = PoolHub(info("alice/a", pins=(("numpy", "1.19.2"),)),
                  info("alice/b", pins=(("numpy", "1.26.4"),)),
                  info("alice/c", pins=(("numpy", "<1.20"),)),
                  info("alice/d", pins=(("scikit_learn", ">=1.3"),)))
    hub.join("w1", budget=1000)
    # a pinned 1.19.2, but the worker has 1.26.4: every servable there imports that one
    served_by(hub, "r1", "alice/a", "w1", installed={"numpy": "1.26.4", "Scikit-Learn": "1.5.0"})
    served_by(hub, "r2", "alice/b", "w1")  # its pin meets what is installed
    served_by(hub, "r3", "alice/d", "w1")  # one package, however its name is spelled
    assert loads(hub.request("r4", "alice/c")) == []
    why = hub.state.view().pools["own_workers"]["alice/c@1"]
    assert why == "it pins numpy <1.20 but the worker has numpy 1.26.4 installed"
    # a, loaded before the worker said what it has, is held there: it serves on
    out = hub.request("r5", "alice/a")
    assert loads(out) == [] and batches(out)[0][0] == b"w1"


def test_a_report_of_installed_versions_keeps_only_what_is_well_formed() -> None:
    hub = PoolHub(info("alice/a"))
    hub.join("w1")
    installed = {"numpy": "1.26.4", "torch": 2, "": "1.0", "x" * 300: "1.0", "scipy": None}
    served_by(hub, "r1", "alice/a", "w1", installed=installed)
    assert hub.state.pools.members[b"w1"].installed == {"numpy": "1.26.4"}
    hub.send("w1", Ready("w1", {"installed": ["numpy", "1.0"]}))  # not a mapping: ignored
    assert hub.state.pools.members[b"w1"].installed == {"numpy": "1.26.4"}


IMAGE = "/images/alice_x-1.sif"


def test_a_servable_with_its_own_image_goes_only_to_workers_in_that_image() -> None:
    hub = PoolHub(info("alice/x", images=(IMAGE,)), info("alice/a"))
    hub.join("w1")  # 'workers start --pool': no container
    hub.join("w2", image="/images/site-python.sif")  # a pool pilot in the site's image
    assert loads(hub.request("r1", "alice/x")) == []
    assert hub.state._pool_live(("alice/x", 1)) == 0
    why = hub.state.view().pools["own_workers"]["alice/x@1"]
    assert "it has its own image (built with 'dlhub-hpc build')" in why
    assert "dlhub-hpc pilot start --servable alice/x@1 --profile" in why
    assert "no container" in why or "site-python.sif" in why
    served_by(hub, "r2", "alice/a", "w1")  # the others are served as before
    hub.join("w3", image="/images/./alice_x-1.sif")  # the same path, written otherwise
    (who, batch), = batches(hub.ready("w3", "alice/x@1", 10))
    assert who == b"w3" and replies(hub.finish("w3", batch))["r1"].ok


def test_a_servable_with_its_own_image_starts_on_demand_as_an_mpi_one_does() -> None:
    from dlhub_hpc.broker.events import StartServable

    hub = PoolHub(info("alice/x", images=(IMAGE,)), info("alice/m", ranks=2), info("alice/a"),
                  start_on_demand={"*": "slurm-local"})
    hub.join("w1", image="/images/site-python.sif")

    def started(name: str) -> list[Any]:
        return [a.servable for a in hub.request(f"r-{name}", name)
                if isinstance(a, StartServable)]

    assert started("alice/x") == [("alice/x", 1)]
    assert started("alice/m") == [("alice/m", 1)]
    assert started("alice/a") == []  # the pool loads it


def test_a_servable_with_its_own_image_and_no_start_times_out_saying_no_worker_serves_it(
        ) -> None:
    hub = PoolHub(info("alice/x", images=(IMAGE,)))
    hub.join("w1")
    hub.request("r1", "alice/x")
    hub.now = 61.0
    error = error_from_wire(replies(hub.state.handle(Tick(), hub.now))["r1"].error)
    assert "no worker serves alice/x@1" in error.message


def test_a_pool_reports_its_image_on_the_wire_and_a_bad_one_is_refused() -> None:
    spec = PoolSpec.parse("owner:alice").in_image(IMAGE)
    assert PoolSpec.from_wire(spec.to_wire()) == spec and spec.ref() == "pool:owner:alice"
    assert "image" not in PoolSpec.parse("owner:alice").to_wire()  # as before images
    hub = PoolHub(info("alice/a"))
    out = hub.send("w1", Hello("w1", "", None, "n", 1, None, 1, None,
                               {"spec": "owner:alice", "image": ["x"]}))
    assert [a.message for a in out if isinstance(a.message, Shutdown)]
    assert not hub.state.pools.members


def test_a_pool_pilots_worker_in_a_container_is_told_its_image() -> None:
    from dlhub_hpc.pilot.command import Container, worker_command
    from dlhub_hpc.worker.__main__ import _parser

    box = Container("apptainer", "/images/site-python.sif")
    pooled = worker_command("tcp://h:1", "pool:owner:alice", container=box).argv
    assert pooled[pooled.index("--image") + 1] == "/images/site-python.sif"
    own = worker_command("tcp://h:1", "alice/x@1", container=box).argv
    assert "--image" not in own  # its own worker runs only it
    args = _parser().parse_args(["--hub", "tcp://h:1", "--servable", "pool:owner:alice",
                                 "--image", "/images/site-python.sif"])
    assert args.image == "/images/site-python.sif"


def test_a_worker_reports_the_installed_versions_of_what_a_servable_pins() -> None:
    import packaging

    from dlhub_hpc.worker.packages import installed_versions, pinned_packages

    spec = {"dlhub": {"dependencies": {"packaging": "", "no-such-package-here": "1.0"}}}
    assert pinned_packages(spec) == ["packaging", "no-such-package-here"]
    assert installed_versions(pinned_packages(spec)) == {"packaging": packaging.__version__}
    assert pinned_packages({"dlhub": {"dependencies": ["numpy"]}}) == []
    assert pinned_packages("junk") == []
