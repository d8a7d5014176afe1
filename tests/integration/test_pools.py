"""Shared pools with real processes: 3 pooled workers serve 20 servables (the same code,
different weights) within a memory budget that holds a few each, so models are evicted and
loaded again while requests for them wait. Every answer is checked; the counters come from
``status``; nothing here waits on time."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from benchmarks.servables.floats import write_float_servable
from benchmarks.servables.scaled import write_scaled as write_servable
from dlhub_hpc import Client
from dlhub_hpc.cli.pools import pool_workers, pools_tables
from dlhub_hpc.errors import InvalidInput, Timeout
from dlhub_hpc.hub import Hub
from dlhub_hpc.pilot.profiles import load_profile
from dlhub_hpc.servable.pools import PoolSpec

from .conftest import HubProcess, wait_for
from .gated import Gate, busy_workers, write_gated_pids

SERVABLES = 20
WEIGHT_BYTES = 1 << 20  # each servable's weights; the budget holds three
BUDGET = 3 * WEIGHT_BYTES + WEIGHT_BYTES // 2


def write_scaled(root: Path, i: int, tag: str = "pooltest") -> Path:
    """A servable that answers ``weight * sum(x)``, its weight ``i + 1`` in weights.npy."""
    return write_servable(root, f"scaled-{i}", float(i + 1), WEIGHT_BYTES, tag, owner="test",
                          max_batch_size=4)


def pools_of(client: Client) -> dict[str, Any]:
    return client.status()["pools"]


def run_wave(client: Client, names: list[str], per_servable: int) -> None:
    """Every servable's requests at once, interleaved; each answer checked."""
    futures: list[tuple[Future[Any], float]] = []
    for k in range(per_servable):
        for i, name in enumerate(names):
            x = [1.0, float(k)]
            futures.append((client.submit(name, x, cache=False), (i + 1) * sum(x)))
    for future, expected in futures:
        assert future.result(timeout=120) == expected


def test_a_pool_of_three_serves_twenty_servables_loading_and_evicting(
        client: Client, hub: Hub, tmp_path: Path) -> None:
    names = [str(client.publish(write_scaled(tmp_path, i))["name"]) for i in range(SERVABLES)]
    ref = PoolSpec.parse("tag:pooltest", BUDGET).ref()
    client.start_workers(ref, 3)
    wait_for(lambda: pool_workers(client.status(), ref) == 3, what="3 pooled workers")

    run_wave(client, names, 3)  # the first wave loads each at least once
    first = pools_of(client)
    run_wave(client, names, 3)  # 20 servables over 9 slots: most were evicted since

    pools = pools_of(client)
    servables = pools["servables"]
    assert set(servables) == {f"{n}@1" for n in names}
    loads = sum(c["loads"] for c in servables.values())
    evictions = sum(c["evictions"] for c in servables.values())
    assert sum(c["loads"] for c in first["servables"].values()) >= SERVABLES
    assert loads >= SERVABLES + (SERVABLES - 9)  # the second wave found at most 9 loaded
    assert evictions >= loads - 9  # what is loaded now is all that was not evicted
    assert all(c["load_failures"] == 0 for c in servables.values())
    # Interleaved waves may batch each servable's requests into one load; two calls in a
    # row must reuse what the first left loaded.
    before = servables[f"{names[0]}@1"]["hits"]
    assert client.run(names[0], [1.0], cache=False) == 1.0
    assert client.run(names[0], [2.0], cache=False) == 2.0
    pools = pools_of(client)
    assert pools["servables"][f"{names[0]}@1"]["hits"] > before
    for w in pools["workers"].values():
        assert w["pool"] == "tag:pooltest" and w["budget"] == BUDGET
        assert 1 <= len(w["holds"]) <= 3  # within the budget (its first load may be larger)
        assert w["loads"] >= 1
    stats = client.status()["stats"]
    assert stats["replies_ok"] == 2 * 3 * SERVABLES + 2 and not stats.get("replies_error")
    assert not stats.get("workers_lost")


def test_a_pool_serves_only_what_its_spec_names_and_status_shows_it(
        client: Client, hub: Hub, tmp_path: Path) -> None:
    inside = str(client.publish(write_scaled(tmp_path, 0))["name"])
    outside = str(client.publish(write_scaled(tmp_path / "other", 1, tag="elsewhere"))["name"])
    ref = PoolSpec.parse("tag:pooltest").ref()
    client.start_workers(ref, 1)
    wait_for(lambda: pool_workers(client.status(), ref) == 1, what="1 pooled worker")
    assert client.run(inside, [2.0]) == 2.0
    with pytest.raises(Timeout, match="no worker serves"):  # the pool does not name it
        client.run(outside, [2.0], timeout=1.0)
    status = client.status()
    pooled = [w for w in status["workers"] if w["servable"].startswith("pool")]
    assert len(pooled) == 1
    console = Console(record=True, width=200)
    for table in pools_tables(status):
        console.print(table)
    text = console.export_text()
    assert f"{inside}@1" in text and "tag:pooltest" in text and outside not in text


def test_pool_workers_stop_by_their_pool_whatever_their_budget(client: Client, hub: Hub,
                                                 tmp_path: Path) -> None:
    name = str(client.publish(write_scaled(tmp_path, 2))["name"])
    ref = PoolSpec.parse("tag:pooltest", 5 * WEIGHT_BYTES).ref()
    client.start_workers(ref, 1)
    wait_for(lambda: pool_workers(client.status(), ref) == 1, what="1 pooled worker")
    assert client.run(name, [1.0]) == 3.0
    stopped = client.stop_workers(servable=PoolSpec.parse("tag:pooltest").ref())  # any budget
    assert [b["servable"] for b in stopped] == [ref]
    wait_for(lambda: pool_workers(client.status(), ref) == 0, what="the pool to stop")



def test_a_pilot_serves_a_pool_from_a_site_profile(client: Client, hub: Hub,
                                                    tmp_path: Path) -> None:
    name = str(client.publish(write_scaled(tmp_path, 3))["name"])
    ref = PoolSpec.parse("tag:pooltest").ref()
    info = client.start_pilot(ref, "local")
    assert info["servable"] == ref
    assert client.run(name, [1.0], timeout=60) == 4.0  # waits in its queue for the pilot
    assert pool_workers(client.status(), ref) >= 1
    stopped = client.stop_pilot(servable=ref)
    assert [p["pilot_id"] for p in stopped] == [info["pilot_id"]]


@pytest.mark.slow
def test_a_restarted_hub_takes_back_a_pools_pilot(
        hub_process: HubProcess, tmp_path: Path) -> None:
    home = tmp_path / "home"
    hub = hub_process(home, "--client-address", "tcp://127.0.0.1:0",
                      "--worker-address", "tcp://127.0.0.1:0")
    address = json.loads((home / "hub.json").read_text())["client_address"]
    ref = PoolSpec.parse("tag:pooltest").ref()
    with Client(address, timeout=30) as client:
        name = str(client.publish(write_scaled(tmp_path, 4))["name"])
        client.start_pilot(ref, "local")
        wait_for(lambda: pool_workers(client.status(), ref) == 1, what="1 pooled worker")
    os.kill(hub.pid, signal.SIGKILL)
    hub.wait()
    hub = hub_process(home)  # was: the pool's pilot could not be rebuilt and was cancelled
    with Client(address, timeout=30) as client:
        [pilot] = client.pilot_status()
        assert pilot["servable"] == ref
        assert [b["reason"] for b in pilot["blocks"]] == ["adopted after a hub restart"]
        assert client.run(name, [1.0], timeout=60) == 5.0
        client.shutdown_hub()
    hub.wait(timeout=60)


def test_a_pool_pilot_scales_up_on_its_pools_queue_and_back_down(
        client: Client, hub: Hub, tmp_path: Path, gates: Callable[[str], Gate]) -> None:
    path, release = gates("work")
    name = str(client.publish(write_gated_pids(tmp_path, path))["name"])
    ref = PoolSpec.parse(name).ref()  # a pool of one servable, named by the list form
    profile = load_profile("local").model_dump(mode="json")
    profile["scaling"] = {"min_blocks": 1, "max_blocks": 2, "queue_per_worker": 2,
                          "idle_release": 2, "period": 0.3}
    info = client.start_pilot(ref, profile)
    wait_for(lambda: pool_workers(client.status(), ref) == 1, what="1 pooled worker")
    futures = [client.submit(name, [float(i)], cache=False) for i in range(40)]
    wait_for(lambda: len(client.pilot_status()[0]["blocks"]) == 2, what="a second block")
    # the first worker holds its batch at the gate, so the queue waits for the second
    wait_for(lambda: busy_workers(client.status()) == 2, what="both workers running a batch")
    release()
    assert len({f.result(timeout=120) for f in futures}) == 2  # both blocks' pids
    wait_for(lambda: len(client.pilot_status()[0]["blocks"]) == 1, what="idle block released")
    client.stop_pilot([info["pilot_id"]])


def test_a_pooled_worker_gives_each_servable_its_own_lazily_imported_helper(
        client: Client, hub: Hub, tmp_path: Path) -> None:
    names = []
    for i in range(2):  # one module name, ``helper``, with different code in each bundle
        d = write_float_servable(tmp_path, f"helped-{i}", title=f"Helped {i}", tag="lazypool",
                                 owner="test", model="def run(x):\n    import helper\n\n"
                                                    "    return float(helper.K * sum(x))\n")
        (d / "helper.py").write_text(f"K = {i + 1}\n")
        names.append(str(client.publish(d)["name"]))
    ref = PoolSpec.parse("tag:lazypool").ref()
    client.start_workers(ref, 1)  # one worker holds both: each call may follow the other's
    wait_for(lambda: pool_workers(client.status(), ref) == 1, what="1 pooled worker")
    for k in range(3):
        for i, name in enumerate(names):
            assert client.run(name, [1.0, float(k)], cache=False) == (i + 1) * (1.0 + k)
    [worker] = pools_of(client)["workers"].values()
    assert sorted(worker["holds"]) == sorted(f"{n}@1" for n in names)


def test_an_owner_pool_of_nobody_the_hub_knows_is_refused_at_start(client: Client) -> None:
    """Its workers would run with nobody's credential and serve nothing: say so at once."""
    with pytest.raises(InvalidInput, match=r"no identity of this hub.*keys list"):
        client.start_workers(PoolSpec.parse("owner:nobody").ref(), 1)
    assert client.status()["blocks"] == []
