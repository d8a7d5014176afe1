"""Two owners share one hub with CurveZMQ identities, and alice runs pools: her pools never
load bob's servable (his request waits for workers of his own, which serve it), and what
bob sees of her pools (status, pilot status, a refused stop) names none of her private
servables."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import zmq

from dlhub_hpc import Client
from dlhub_hpc.cli.pools import pool_workers
from dlhub_hpc.errors import PermissionDenied
from dlhub_hpc.servable.pools import PoolSpec
from tests.integration.conftest import wait_for
from tests.integration.test_auth import servable_copy

pytestmark = [
    pytest.mark.skipif(not zmq.has("curve"), reason="libzmq was built without CURVE"),
    pytest.mark.skipif(shutil.which("bwrap") is None and os.environ.get("CI") != "true",
                       reason="bubblewrap is not installed ('apt-get install bubblewrap'): "
                              "another owner's workers run sandboxed"),
]

SECRETS = ("alice/adder", "alice/secret")  # alice's private servables


def test_an_owners_pools_serve_only_hers_and_show_others_none_of_her_names(
        tmp_path: Path, people: dict[str, Client]) -> None:
    admin, alice, bob = people["admin"], people["alice"], people["bob"]
    for ref in SECRETS:
        alice.publish(servable_copy(tmp_path, "alice", ref.partition("/")[2], []))
    bob.publish(servable_copy(tmp_path, "bob", "adder", []))

    owner_pool = PoolSpec.parse("owner:alice").ref()
    list_pool = PoolSpec.parse(",".join(SECRETS)).ref()
    alice.start_workers(owner_pool, 1)
    pilot = alice.start_pilot(list_pool, "local")  # its first block starts at once
    wait_for(lambda: pool_workers(alice.status(), owner_pool) == 1
             and pool_workers(alice.status(), list_pool) == 1, what="alice's pooled workers")
    assert alice.run("alice/adder", [1.0, 2.0], timeout=60) == 3.0
    assert alice.run("alice/secret", [2.0, 2.0], timeout=60) == 4.0
    loads = admin.control("pool_counters")["pool_loads"]
    assert loads >= 1

    # bob's request: no pooled worker of alice's takes it, though both are free.
    future = bob.submit("bob/adder", [5.0, 6.0])
    wait_for(lambda: bob.request_status(future.request_id)["state"] == "queued",
             what="bob's request queued at the hub")
    assert admin.control("pool_counters")["pool_loads"] == loads
    holds = {r for w in admin.status()["pools"]["workers"].values() for r in w["holds"]}
    assert not any(r.startswith("bob/") for r in holds)
    # It gets its own path: bob's own workers, run with his credential, serve it.
    bob.start_workers("bob/adder", 1)
    assert future.result(timeout=60) == 11.0
    served = [w for w in bob.status()["workers"] if w["servable"] == "bob/adder@1"]
    assert len(served) == 1 and served[0]["batches"] == 1
    assert admin.control("pool_counters")["pool_loads"] == loads
    assert "bob/adder@1" not in admin.status()["pools"]["servables"]

    # bob sees alice's pooled workers, blocks and pilot (capacity all share), never her names.
    status, pilots = bob.status(), bob.pilot_status()
    shown = json.dumps([status, pilots])
    assert "adder@1" in shown  # his own, listed as usual
    for name in SECRETS:
        assert name not in shown, name
    pools = {w["pool"] for w in status["pools"]["workers"].values()}
    assert pools == {"owner:alice", "2 hidden servables of alice"}
    assert {b["servable"] for b in status["blocks"]} >= {
        owner_pool, "pool:2 hidden servables of alice"}
    assert [p["servable"] for p in pilots] == ["pool:2 hidden servables of alice"]
    # The owner and the admin see the list as written: they tell their pools apart.
    for who in (alice, admin):
        assert {w["pool"] for w in who.status()["pools"]["workers"].values()} == {
            "owner:alice", ",".join(SECRETS)}
        assert [p["servable"] for p in who.pilot_status()] == [list_pool]

    # Pilot ids are easy to guess: a refused stop does not say what the pilot serves.
    with pytest.raises(PermissionDenied) as refused:
        bob.stop_pilot([pilot["pilot_id"]])
    said = json.dumps([refused.value.message, refused.value.details])
    assert pilot["pilot_id"] in said and not any(name in said for name in SECRETS)
    assert [p["pilot_id"] for p in alice.stop_pilot([pilot["pilot_id"]])] == [pilot["pilot_id"]]
    alice.stop_workers(servable=owner_pool)
    bob.stop_workers(servable="bob/adder")
