"""Pilot blocks through Parsl's LocalProvider: start, watch, stop; nothing left behind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dlhub_hpc import Client, Hub, PilotError
from dlhub_hpc.examples import example_dir
from dlhub_hpc.pilot import PilotService, WorkersSetup, fixed_profile, local_provider

from .conftest import wait_for, worker_processes


def test_block_runs_n_workers_and_stop_ends_them(hub: Hub, client: Client) -> None:
    client.publish(example_dir("add"))
    block = client.start_workers("demo/add", 3)
    client.wait_for_workers("demo/add", 3)
    workers = client.status()["workers"]
    assert {w["block"] for w in workers} == {block["block_id"]}
    assert len(worker_processes(hub.worker_address)) == 3

    stopped = client.stop_workers(blocks=[block["block_id"]])
    assert [b["block_id"] for b in stopped] == [block["block_id"]]
    wait_for(lambda: not worker_processes(hub.worker_address))
    wait_for(lambda: client.status()["workers"] == [])
    assert client.status()["stats"].get("workers_lost", 0) == 0, "SIGTERM gives a clean exit"


def test_hub_stop_leaves_no_worker_behind(make_hub: Callable[..., Hub]) -> None:
    hub = make_hub()
    with Client(hub.client_address) as client:
        client.publish(example_dir("add"))
        client.start_workers("demo/add", 2)
        client.wait_for_workers("demo/add", 2)
    address = hub.worker_address
    hub.stop()
    wait_for(lambda: not worker_processes(address))


def test_worker_exits_when_the_hub_goes_silent(tmp_path: Path) -> None:
    # A hub that vanished without a goodbye: workers must not linger on compute nodes.
    pilots = PilotService(dict, workers=WorkersSetup(
        local_provider(), "tcp://127.0.0.1:9", tmp_path, hub_timeout=1.0, heartbeat_interval=0.1))
    pilots.start_workers("demo/add", 1)
    wait_for(lambda: bool(worker_processes("tcp://127.0.0.1:9")))
    wait_for(lambda: not worker_processes("tcp://127.0.0.1:9"), timeout=20)
    pilots.shutdown()


def test_unknown_servable_and_bad_counts_are_refused(client: Client) -> None:
    with pytest.raises(Exception, match="no servable named 'demo/none'"):
        client.start_workers("demo/none", 1)
    pilots = PilotService(dict, workers=WorkersSetup(local_provider(), "tcp://127.0.0.1:9",
                                                     Path("/tmp")))
    with pytest.raises(PilotError, match="at least one worker"):
        pilots.start_workers("demo/add", 0)
    with pytest.raises(PilotError, match="no such blocks"):
        pilots.stop_workers(["block-99"])


def test_worker_command_names_hub_and_servable(tmp_path: Path) -> None:
    setup = WorkersSetup(local_provider(), "tcp://10.0.0.1:47651", tmp_path)
    cmd = setup.pilot("demo/add@2", fixed_profile(1), "block-7").command("block-7")
    assert "-m dlhub_hpc.worker --hub tcp://10.0.0.1:47651 --servable demo/add@2" in cmd
    assert "--block block-7" in cmd
