"""A pooled model evicted while its requests are queued loses none of them: one pooled
worker whose budget holds one model serves two servables in turns, so loading the second
evicts the first with the first's requests still waiting; every request is answered right.

Each servable's calls wait at a gate (a FIFO) until the test opens it, so the hub's state
is read while it holds still: no sleeps, no timing."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.servables.floats import write_float_servable
from dlhub_hpc import Client, Hub
from dlhub_hpc.cli.pools import pool_workers
from dlhub_hpc.servable.pools import PoolSpec

from .conftest import wait_for
from .gated import gate_line

pytestmark = pytest.mark.timeout(180)

WEIGHT_BYTES = 1 << 20
BUDGET = WEIGHT_BYTES + WEIGHT_BYTES // 2  # holds one model, never two
BATCH = 2
A_REQUESTS = 12  # six batches: the other servable's turn comes long before they are done
B_REQUESTS = 4


def write_gated_scaled(root: Path, name: str, weight: float, gate: Path) -> Path:
    """A pooled servable (tag evicttest) answering ``weight * sum(x)`` from 1 MiB of
    weights, whose calls wait until ``gate`` (a FIFO) has a writer."""
    d = write_float_servable(root, name, title=f"Gated scaled sum {name}", tag="evicttest",
                             owner="test", max_batch_size=BATCH, model=f"""\
        import os
        import pathlib

        import numpy as np

        _W = np.load(pathlib.Path(__file__).with_name("weights.npy"))


        def run(x):
            {gate_line(gate)}
            return float(_W[0] * sum(x))
        """)
    np.save(d / "weights.npy", np.full(WEIGHT_BYTES // 8, weight))
    return d


def queued(client: Client, ref: str) -> int:
    return int(client.status()["servables"].get(ref, {}).get("queued", 0))


def counts(client: Client, ref: str) -> dict[str, Any]:
    return client.control("pool_counters", servable=ref)["servable"] or {}


def test_a_model_evicted_with_requests_queued_loses_none(
        client: Client, hub: Hub, tmp_path: Path,
        gates: Callable[[str], tuple[Path, Callable[[], None]]]) -> None:
    gate_a, release_a = gates("a")
    gate_b, release_b = gates("b")
    a = str(client.publish(write_gated_scaled(tmp_path, "evict-a", 1.0, gate_a))["name"])
    b = str(client.publish(write_gated_scaled(tmp_path, "evict-b", 2.0, gate_b))["name"])
    ref_a, ref_b = f"{a}@1", f"{b}@1"
    pool = PoolSpec.parse("tag:evicttest", BUDGET).ref()
    client.start_workers(pool, 1)
    wait_for(lambda: pool_workers(client.status(), pool) == 1, what="1 pooled worker")

    futures: list[tuple[Future[Any], float]] = []
    for i in range(A_REQUESTS):
        futures.append((client.submit(a, [1.0, float(i)], cache=False), 1.0 + i))
    # A's first batch holds the worker at its gate; the rest of A's requests queue
    wait_for(lambda: counts(client, ref_a).get("loads") == 1 and queued(client, ref_a) > 0,
             what="A loaded, its first batch at the gate, the rest queued")
    for i in range(B_REQUESTS):
        futures.append((client.submit(b, [2.0, float(i)], cache=False), 2.0 * (2.0 + i)))
    wait_for(lambda: queued(client, ref_b) == B_REQUESTS, what="B's requests queued")

    release_a()  # A's batches run until B's turn: B's load evicts A, B's batch waits at its gate
    wait_for(lambda: counts(client, ref_b).get("loads") == 1
             and counts(client, ref_a).get("evictions") == 1,
             what="B loaded in its turn, evicting A")
    [worker] = client.status()["pools"]["workers"].values()
    assert list(worker["holds"]) == [ref_b]
    left = queued(client, ref_a)
    assert left > 0, "A's requests were all answered before its eviction: nothing tested"

    release_b()
    for future, expected in futures:
        assert future.result(timeout=120) == expected
    after = counts(client, ref_a)
    # loaded again for the requests queued at its eviction (turns may evict it again)
    assert after["loads"] >= 2 and after["evictions"] >= 1
    assert after["load_failures"] == 0
    stats = client.status()["stats"]
    assert stats["replies_ok"] == A_REQUESTS + B_REQUESTS and not stats.get("replies_error")
    assert not stats.get("workers_lost")
