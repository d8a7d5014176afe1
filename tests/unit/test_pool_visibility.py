"""What two identities, alice and bob, see of each other's pools, workers, blocks and
pilots in ``status`` and ``pilot status``, over a real registry and its access rules; and
how the status tables show starts on demand and why servables get workers of their own."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from dlhub_hpc.cli.pools import pools_tables
from dlhub_hpc.cli.serving import starting_table
from dlhub_hpc.cli.top import visible_metrics
from dlhub_hpc.examples import example_dir
from dlhub_hpc.hubops.hubwide import visible_snapshot
from dlhub_hpc.hubops.pools import visible_pools
from dlhub_hpc.hubops.visibility import Viewer
from dlhub_hpc.metrics.reading import ServableMetrics
from dlhub_hpc.registry import Registry
from dlhub_hpc.registry.access import AccessControl
from dlhub_hpc.servable.bundle import make_bundle
from dlhub_hpc.servable.pools import PoolSpec

SECRETS = "alice/secret1,alice/secret2"  # a list pool of alice's private servables
MIXED = "alice/pub,alice/secret1,alice/secret2"


def _publish(registry: Registry, tmp_path: Path, owner: str, name: str,
             visible_to: list[str]) -> None:
    root = Path(shutil.copytree(example_dir("add"), tmp_path / f"{owner}-{name}",
                                ignore=shutil.ignore_patterns("__pycache__")))
    spec = yaml.safe_load((root / "servable.yaml").read_text())
    spec["dlhub"].update(owner=owner, name=name, visible_to=visible_to)
    (root / "servable.yaml").write_text(yaml.safe_dump(spec))
    registry.publish(make_bundle(root), publisher=owner)


@pytest.fixture
def access(tmp_path: Path) -> Iterator[AccessControl]:
    """alice's two private servables and a public one; bob's private one; admin root."""
    registry = Registry(tmp_path / "registry")
    for owner, name, visible_to in (("alice", "secret1", []), ("alice", "secret2", []),
                                    ("alice", "pub", ["public"]), ("bob", "mine", [])):
        _publish(registry, tmp_path, owner, name, visible_to)
    yield AccessControl(registry, admin="root")
    registry.close()


@pytest.fixture
def views(access: AccessControl) -> dict[str, Viewer]:
    return {who: Viewer(access, who, admin=who == "root") for who in ("alice", "bob", "root")}


def _pools() -> dict[str, Any]:
    """The broker's pools view: a worker of alice's list pool, one of her owner pool."""
    worker = {"budget": 100, "owner": "alice", "held_bytes": 12, "loads": 2, "evictions": 0,
              "hits": 0, "load_failures": 0, "hit_rate": 0.0}
    return {
        "workers": {
            "w1": {**worker, "pool": SECRETS, "holds": {"alice/secret1@1": 5},
                   "loading": "alice/secret2@1"},
            "w2": {**worker, "pool": "owner:alice", "holds": {"alice/pub@1": 7,
                                                              "alice/secret1@1": 5},
                   "loading": None},
        },
        "servables": {ref: {"loads": 1, "evictions": 0, "hits": 0, "load_failures": 0,
                            "hit_rate": 0.0, "bytes": 5, "last_load_s": 0.1}
                      for ref in ("alice/secret1@1", "alice/pub@1")},
        "own_workers": {
            "alice/pub@1": "it pins numpy 2 but alice/secret1@1, already loaded there, "
                           "pins numpy 1",
            "bob/mine@1": "it runs over 4 MPI ranks, started by its own pilot"},
        "queued": {f"pool:{SECRETS}": 3},
    }


def test_a_list_pool_is_shown_as_written_only_to_who_may_see_all_it_names(
        views: dict[str, Viewer]) -> None:
    secrets, mixed = PoolSpec.parse(SECRETS), PoolSpec.parse(MIXED)
    for who in ("alice", "root"):
        assert views[who].pool_text(secrets) == SECRETS
        assert views[who].pool_text(mixed) == MIXED
    bob = views["bob"]
    assert bob.pool_text(secrets) == "2 hidden servables of alice"
    assert bob.pool_text(mixed) == "alice/pub + 2 hidden servables of alice"
    assert bob.pool_text(PoolSpec.parse("alice/pub,alice/secret1")) == (
        "alice/pub + 1 hidden servable of alice")
    assert bob.pool_text(PoolSpec.parse("alice/pub")) == "alice/pub"
    for spec in ("owner:alice", "tag:materials", "public"):  # an owner or a tag: no servable
        assert bob.pool_text(PoolSpec.parse(spec)) == spec


def test_a_name_not_yet_published_is_shown_only_to_whoever_would_own_it(
        views: dict[str, Viewer]) -> None:
    later = PoolSpec.parse("alice/pub,alice/later")  # alice may publish it private later
    assert views["alice"].pool_text(later) == "alice/pub,alice/later"
    assert views["bob"].pool_text(later) == "alice/pub + 1 hidden servable of alice"


def test_status_pools_redact_list_pools_hidden_holds_and_reasons(
        views: dict[str, Viewer]) -> None:
    alice, bob = visible_pools(_pools(), views["alice"]), visible_pools(_pools(), views["bob"])
    assert alice["workers"]["w1"]["pool"] == SECRETS
    assert alice["workers"]["w1"]["holds"] == {"alice/secret1@1": 5}
    assert alice["workers"]["w1"]["loading"] == "alice/secret2@1"
    assert alice["own_workers"]["alice/pub@1"].startswith("it pins numpy 2 but alice/secret1@1")
    assert bob["workers"]["w1"]["pool"] == "2 hidden servables of alice"
    assert bob["workers"]["w1"]["holds"] == {} and bob["workers"]["w1"]["loading"] is None
    assert bob["workers"]["w2"]["pool"] == "owner:alice"
    assert bob["workers"]["w2"]["holds"] == {"alice/pub@1": 7}
    assert list(bob["servables"]) == ["alice/pub@1"]
    assert bob["own_workers"] == {
        "alice/pub@1": "it pins numpy 2 but another servable, already loaded there, pins numpy 1",
        "bob/mine@1": "it runs over 4 MPI ranks, started by its own pilot"}
    assert "bob/mine@1" not in alice["own_workers"]
    assert "queued" not in bob  # keyed by pool refs, which name the servables
    assert "secret" not in json.dumps(bob)


def test_the_worker_list_hides_what_a_pooled_worker_runs_unless_visible(
        views: dict[str, Viewer]) -> None:
    def worker(wid: str, servable: str) -> dict[str, Any]:
        return {"worker_id": wid, "servable": servable, "state": "busy"}

    snapshot = {"servables": {"alice/secret1@1": {"queued": 1}, "alice/pub@1": {"queued": 0}},
                "workers": [worker("p1", "pool: alice/secret1@1"), worker("p2", "pool: "),
                            worker("p3", "pool: alice/pub@1"), worker("d1", "alice/secret2@1"),
                            worker("d2", "bob/mine@1")],
                "load_failures": {"alice/secret2@1": {"message": "m"}},
                "starting": {"alice/secret2@1": {"stage": "job running"}}, "pools": _pools()}
    bob = visible_snapshot(views["bob"], snapshot)
    assert [(w["worker_id"], w["servable"]) for w in bob["workers"]] == [
        ("p1", "pool: hidden"), ("p2", "pool: "), ("p3", "pool: alice/pub@1"),
        ("d2", "bob/mine@1")]
    assert list(bob["servables"]) == ["alice/pub@1"]
    assert bob["load_failures"] == {} and bob["starting"] == {}
    assert "secret" not in json.dumps(bob)
    alice = visible_snapshot(views["alice"], snapshot)
    assert [w["servable"] for w in alice["workers"]] == [
        "pool: alice/secret1@1", "pool: ", "pool: alice/pub@1", "alice/secret2@1"]


def test_blocks_and_pilots_of_pools_are_listed_with_their_lists_redacted(
        views: dict[str, Viewer]) -> None:
    ref = PoolSpec.parse(SECRETS, 1000).ref()
    block = {"block_id": "block-1", "servable": ref, "workers": 1, "state": "RUNNING"}
    pilot = {"pilot_id": "pilot-1", "servable": ref, "blocks": [block], "events": []}
    bob, alice = views["bob"], views["alice"]
    assert bob.lists(ref) and alice.lists(ref)
    assert bob.block(block)["servable"] == "pool:2 hidden servables of alice,budget=1000"
    shown = bob.pilot(pilot)
    assert shown["servable"] == "pool:2 hidden servables of alice,budget=1000"
    assert [b["servable"] for b in shown["blocks"]] == [shown["servable"]]
    assert alice.pilot(pilot) == pilot  # its owner tells its pools apart
    assert views["root"].block(block) == block
    owner_pool = PoolSpec.parse("owner:alice").ref()
    assert bob.ref(owner_pool) == owner_pool
    # a servable's own blocks and pilots are listed only to who may see the servable
    assert not bob.lists("alice/secret1@1") and alice.lists("alice/secret1@1")
    assert bob.lists("alice/pub@1")


def test_pools_tables_say_why_servables_get_workers_of_their_own_without_pooled_workers(
) -> None:
    status = {"pools": {"workers": {}, "servables": {},
                        "own_workers": {"demo/mpi@1": "it runs over 4 MPI ranks"}}}
    tables = pools_tables(status)
    assert [t.title for t in tables] == ["Servables that get workers of their own"]
    text = _render(tables)
    assert "demo/mpi@1" in text and "it runs over 4 MPI ranks" in text
    assert pools_tables({"pools": {}}) == [] and pools_tables({}) == []
    with_workers = pools_tables({"pools": {**_pools(), "own_workers": {}}})
    assert [t.title for t in with_workers] == ["Pooled workers", "Pooled servables"]


def test_the_starting_table_shows_each_start_on_demand_and_its_stage() -> None:
    status = {"starting": {
        "demo/add@1": {"stage": "queued at scheduler", "profile": "slurm-local",
                       "pilot": "pilot-2", "since": 1234.5, "in_stage_s": 12.4},
        "demo/echo@2": {"stage": "requested", "profile": "local", "pilot": "",
                        "since": 1240.0}}}
    table = starting_table(status)
    assert table is not None and table.title == "Starting on demand"
    assert [c.header for c in table.columns] == ["servable", "stage", "profile", "since"]
    lines = _render([table]).splitlines()
    add = next(line for line in lines if "demo/add@1" in line)
    assert "queued at scheduler" in add and "slurm-local" in add and "12s ago" in add
    echo = next(line for line in lines if "demo/echo@2" in line)
    assert "requested" in echo and "local" in echo


def test_the_starting_table_says_why_a_servable_is_not_started() -> None:
    why = "demo/big names default_profile 'gpu-big', which this hub does not let servables"
    status = {"starting": {
        "demo/add@1": {"stage": "requested", "profile": "local", "pilot": "", "since": 1.0},
        "demo/big@1": {"stage": "not started", "profile": "gpu-big", "pilot": "",
                       "since": 2.0, "in_stage_s": 3.0, "reason": why}}}
    table = starting_table(status)
    assert table is not None
    assert [c.header for c in table.columns] == [
        "servable", "stage", "profile", "since", "reason"]
    assert list(table.columns[-1].cells) == ["-", why]  # by row, as sorted
    big = next(line for line in _render([table]).splitlines() if "demo/big@1" in line)
    assert "not started" in big and "gpu-big" in big
    assert starting_table({"starting": {}}) is None and starting_table({}) is None


def test_top_shows_metrics_only_of_servables_the_callers_status_shows() -> None:
    metrics = {"alice/secret1@1": ServableMetrics(ok=3), "alice/pub@1": ServableMetrics(ok=1),
               "bob/mine@1": ServableMetrics(ok=2)}
    status = {"published": [{"name": "alice/pub", "version": 1}],
              "servables": {"bob/mine@1": {"queued": 0, "in_flight": 0}}}
    assert set(visible_metrics(status, metrics)) == {"alice/pub@1", "bob/mine@1"}
    assert visible_metrics(status, None) == {}


def _render(tables: list[Any]) -> str:
    console = Console(record=True, width=200)
    for table in tables:
        console.print(table)
    return console.export_text()
