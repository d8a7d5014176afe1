"""Pooling grants on a real hub with CurveZMQ identities: bob's pool serves alice's private
servable only while alice allows it ('dlhub-hpc pooling alice/adder --allow bob'); taking it
back stops the next request from going there, though bob's worker still holds it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dlhub_hpc import Client
from dlhub_hpc.cli.pools import pool_workers
from dlhub_hpc.errors import PermissionDenied
from dlhub_hpc.servable.pools import PoolSpec
from tests.integration.conftest import wait_for
from tests.integration.test_auth import servable_copy
from tests.integration.test_pool_owners import pytestmark as owners_marks

pytestmark = owners_marks

REF = "alice/adder@1"


def counters(admin: Client) -> dict[str, Any]:
    return admin.control("pool_counters", servable=REF)


def queued(client: Client, request_id: str) -> bool:
    return client.request_status(request_id)["state"] == "queued"


def test_bobs_pool_serves_alices_servable_only_while_she_allows_it(
        tmp_path: Path, people: dict[str, Client]) -> None:
    admin, alice, bob = people["admin"], people["alice"], people["bob"]
    alice.publish(servable_copy(tmp_path, "alice", "adder", []))  # private: alice only
    pool = PoolSpec.parse("owner:bob").ref()
    bob.start_workers(pool, 1)
    wait_for(lambda: pool_workers(bob.status(), pool) == 1, what="bob's pooled worker")

    # A list pool of bob's that names her servable is refused at its start, and says why.
    with pytest.raises(PermissionDenied, match="alice runs 'dlhub-hpc pooling alice/adder "
                                               "--allow bob'"):
        bob.start_workers(PoolSpec.parse("alice/adder").ref(), 1)

    # No grant: bob's free pooled worker never loads it.
    first = alice.submit("alice/adder", [1.0, 2.0])
    wait_for(lambda: queued(alice, first.request_id), what="alice's request queued")
    assert counters(admin)["pool_loads"] == 0 and counters(admin)["servable"] is None

    assert alice.pooling("alice/adder", allow=["bob"])["pooled_by"] == ["user:bob"]
    assert alice.run("alice/adder", [2.0, 3.0], timeout=60) == 5.0
    assert first.result(timeout=60) == 3.0
    served = counters(admin)
    assert served["pool_loads"] == 1 and served["servable"]["loads"] == 1
    holders = [w for w in admin.status()["pools"]["workers"].values() if REF in w["holds"]]
    assert [w["owner"] for w in holders] == ["bob"]
    # a grant is no visibility: bob still may not run it
    with pytest.raises(PermissionDenied, match="may not use alice/adder"):
        bob.run("alice/adder", [1.0, 1.0], timeout=30)

    # Taken back: the next request is not served by bob's pool, which still holds it.
    assert alice.pooling("alice/adder", deny=["bob"])["pooled_by"] == []
    after = alice.submit("alice/adder", [4.0, 4.0])
    wait_for(lambda: queued(alice, after.request_id), what="alice's request queued again")
    assert counters(admin)["servable"] == served["servable"]  # no load, no hit
    assert [w for w in admin.status()["pools"]["workers"].values() if REF in w["holds"]]
    # alice's own worker serves it instead
    alice.start_workers("alice/adder", 1)
    assert after.result(timeout=60) == 8.0
    own = [w for w in alice.status()["workers"] if w["servable"] == REF]
    assert len(own) == 1 and own[0]["batches"] == 1
    assert counters(admin)["servable"] == served["servable"]
    bob.stop_workers(servable=pool)
    alice.stop_workers(servable="alice/adder")
