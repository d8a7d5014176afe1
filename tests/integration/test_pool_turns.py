"""A pool's servables with real processes: a flood of one does not starve another (answers
counted, not timed), and a servable a pool serves starts no pilot of its own on demand."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from dlhub_hpc import Client, Hub
from dlhub_hpc.cli.pools import pool_workers
from dlhub_hpc.servable.pools import PoolSpec

from .conftest import wait_for
from .gated import Gate, write_gated
from .test_pools import BUDGET, write_scaled

pytestmark = pytest.mark.timeout(180)

FLOOD = 80


def queued(client: Client, name: str) -> int:
    """Requests the hub holds queued for any version of ``name``."""
    return sum(int(q.get("queued", 0)) for ref, q in client.status()["servables"].items()
               if ref.rpartition("@")[0] == name)


def test_a_flood_of_one_pooled_servable_does_not_starve_another(
        client: Client, hub: Hub, tmp_path: Path, gates: Callable[[str], Gate]) -> None:
    path, release = gates("flood")
    flooded = str(client.publish(write_gated(tmp_path, path))["name"])
    other = str(client.publish(write_scaled(tmp_path, 1))["name"])
    ref = PoolSpec.parse("tag:pooltest", BUDGET).ref()
    client.start_workers(ref, 1)
    wait_for(lambda: pool_workers(client.status(), ref) == 1, what="1 pooled worker")

    floods: list[Future[Any]] = [client.submit(flooded, [1.0, float(i)], cache=False)
                                 for i in range(FLOOD)]
    wait_for(lambda: client.status()["stats"].get("batches", 0) >= 1,
             what="the flood's first batch to hold the worker")
    unanswered_then: list[int] = []
    last = client.submit(other, [3.0], cache=False)
    last.add_done_callback(
        lambda _: unanswered_then.append(sum(not f.done() for f in floods)))
    # the claim is about turns once both wait: a loaded CI machine may deliver the
    # request to the hub after several of the flood's batches, had the gate opened first
    wait_for(lambda: queued(client, other) == 1, what="the other's request to be queued")
    release()
    assert last.result(timeout=120) == 6.0
    assert [f.result(timeout=120) for f in floods] == [1.0 + i for i in range(FLOOD)]
    # was: the worker held the flooded servable and took its whole queue first (0 left)
    [left] = unanswered_then
    assert left >= FLOOD - 4 * 4, f"{left} of the flood were unanswered when the other was"


def test_a_servable_a_pool_serves_starts_no_pilot_on_demand(
        make_hub: Callable[..., Hub], tmp_path: Path) -> None:
    hub = make_hub(start_on_demand={"*": "local"})
    with Client(hub.client_address, timeout=60) as client:
        name = str(client.publish(write_scaled(tmp_path, 2))["name"])
        ref = PoolSpec.parse("tag:pooltest", BUDGET).ref()
        client.start_workers(ref, 1)
        wait_for(lambda: pool_workers(client.status(), ref) == 1, what="1 pooled worker")
        assert client.run(name, [1.0, 1.0]) == 6.0
        assert client.pilot_status() == []  # the pool loaded it: no pilot started
        status = client.status()
        assert status["starting"] == {}
        assert status["pools"]["servables"][f"{name}@1"]["loads"] == 1
