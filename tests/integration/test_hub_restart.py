"""A hub killed with SIGKILL and started again on its home takes back what it left running."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import psutil
import pytest

from dlhub_hpc import Client
from dlhub_hpc.examples import example_dir

from .conftest import HubProcess, wait_for

pytestmark = pytest.mark.slow



def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _worker_pids(client: Client) -> list[int]:
    return sorted(w["pid"] for w in client.status()["workers"])


def _start_served_hub(hub_process: HubProcess, home: Path) -> tuple[
        subprocess.Popen[bytes], str, list[int]]:
    hub = hub_process(home, "--client-address", "tcp://127.0.0.1:0",
                      "--worker-address", "tcp://127.0.0.1:0")
    address = json.loads((home / "hub.json").read_text())["client_address"]
    with Client(address, timeout=30) as client:
        client.publish(example_dir("add"))
        client.start_workers("demo/add", 1)  # block-1
        client.start_pilot("demo/add", "local")  # pilot-N.b1, one worker
        client.wait_for_workers("demo/add", 2, timeout=120)
        pids = _worker_pids(client)
    os.kill(hub.pid, signal.SIGKILL)
    hub.wait()
    assert all(_alive(p) for p in pids)  # the crash left them running, as a job would be
    return hub, address, pids


def test_a_restarted_hub_takes_back_the_same_workers(
    hub_process: HubProcess, tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    _, address, pids = _start_served_hub(hub_process, home)
    # Was: "a hub ... already runs" never came (pid dead), but its pilots and blocks were
    # forgotten: the jobs ran on, and nothing the new hub did could stop them.
    hub = hub_process(home)  # no addresses: the stale hub.json's, which the workers dial
    assert "replaced a stale" in (tmp_path / "hub1.log").read_text()
    with Client(address, timeout=30) as client:
        wait_for(lambda: _worker_pids(client) == pids, timeout=90,
                 what="the same worker processes to register with the new hub")
        assert client.run("demo/add", [1, 2]) == 3
        blocks = {b["block_id"]: b for b in client.status()["blocks"]}
        assert "block-1" in blocks and blocks["block-1"]["state"] == "RUNNING"
        [pilot] = client.pilot_status()
        assert [b["reason"] for b in pilot["blocks"]] == ["adopted after a hub restart"]
        client.shutdown_hub()
    hub.wait(timeout=60)
    wait_for(lambda: not any(_alive(p) for p in pids), timeout=60,
             what="every worker to be gone after the final stop")


def test_blocks_that_cannot_be_taken_back_are_cancelled(
    hub_process: HubProcess, tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    _, address, pids = _start_served_hub(hub_process, home)
    with sqlite3.connect(home / "registry.sqlite") as db:  # the pilot's profile is gone
        db.execute("UPDATE pilots SET profile = ?", (json.dumps({"provider": {"type": "Gone"}}),))
    hub = hub_process(home)
    with Client(address, timeout=30) as client:
        assert client.pilot_status() == []
        # The pilot's worker is cancelled with its job; block-1's worker comes back.
        wait_for(lambda: sum(_alive(p) for p in pids) == 1, timeout=60,
                 what="the pilot's worker to be cancelled")
        client.shutdown_hub()
    hub.wait(timeout=60)
    wait_for(lambda: not any(_alive(p) for p in pids), timeout=60,
             what="every worker to be gone after the final stop")
