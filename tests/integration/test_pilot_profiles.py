"""Pilots from site profiles on this machine (profile ``local``): the CLI, the Python API,
elastic scaling on queue depth, and typed errors for bad profiles."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from dlhub_hpc import Client, Hub
from dlhub_hpc.cli import cli
from dlhub_hpc.cli.common import console
from dlhub_hpc.errors import ProfileError, ServableNotFound
from dlhub_hpc.examples import example_dir
from dlhub_hpc.pilot.profiles import load_profile

from .conftest import SERVABLES, wait_for, worker_processes
from .gated import Gate, busy_workers, write_gated_pids


def test_cli_pilot_start_status_stop(hub: Hub, client: Client,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "width", 200)
    client.publish(example_dir("add"))
    runner = CliRunner()
    base = ["--hub", hub.client_address, "pilot"]
    started = runner.invoke(cli, [*base, "start", "--profile", "local", "-s", "demo/add",
                                  "--wait", "--timeout", "60"])
    assert started.exit_code == 0, started.output
    assert "started pilot-" in started.output and "LocalProvider" in started.output
    assert "first worker ready" in started.output
    assert client.run("demo/add", [4, 5]) == 9

    shown = runner.invoke(cli, [*base, "status", "--events"])
    assert shown.exit_code == 0, shown.output
    assert "demo/add@1" in shown.output and "RUNNING" in shown.output
    assert "submitted" in shown.output  # the event log
    hub_status = runner.invoke(cli, ["--hub", hub.client_address, "status"])
    assert "Pilot blocks" in hub_status.output and ".b1" in hub_status.output

    stopped = runner.invoke(cli, [*base, "stop", "-s", "demo/add@1"])
    assert stopped.exit_code == 0 and "stopped pilot-" in stopped.output, stopped.output
    wait_for(lambda: not worker_processes(hub.worker_address), what="workers gone")
    assert runner.invoke(cli, [*base, "status"]).output.startswith("no pilots")


def test_local_pilot_scales_up_on_queue_depth_and_back_down(
        client: Client, hub: Hub, tmp_path: Path, gates: Callable[[str], Gate]) -> None:
    path, release = gates("work")
    name = str(client.publish(write_gated_pids(tmp_path, path))["name"])
    profile = load_profile("local").model_dump(mode="json")
    profile["scaling"] = {"min_blocks": 1, "max_blocks": 2, "queue_per_worker": 2,
                          "idle_release": 2, "period": 0.3}
    info = client.start_pilot(name, profile)
    client.wait_for_workers(name, 1, timeout=60)
    futures = [client.submit(name, [float(i)], cache=False) for i in range(40)]
    wait_for(lambda: len(client.pilot_status()[0]["blocks"]) == 2, what="a second block")
    # the first worker holds its batch at the gate, so the queue waits for the second
    wait_for(lambda: busy_workers(client.status()) == 2, what="both workers running a batch")
    release()
    assert len({f.result(timeout=120) for f in futures}) == 2  # both blocks' pids
    wait_for(lambda: len(client.pilot_status()[0]["blocks"]) == 1, what="idle block released")
    wait_for(lambda: len(worker_processes(hub.worker_address)) == 1, what="its worker gone")
    client.stop_pilot([info["pilot_id"]])


def test_bad_profile_and_servable_are_typed_errors(client: Client) -> None:
    client.publish(example_dir("add"))
    with pytest.raises(ProfileError, match=r"no site profile named 'summit'.*slurm-local"):
        client.start_pilot("demo/add", "summit")
    with pytest.raises(ProfileError, match=r"unknown provider type 'Slurm'.*SlurmProvider"):
        client.start_pilot("demo/add", {"name": "x", "provider": {"type": "Slurm"}})
    with pytest.raises(ServableNotFound):
        client.start_pilot("demo/nothing", "local")
    assert client.pilot_status() == []


def test_a_broken_worker_command_halts_the_pilot_instead_of_looping(client: Client) -> None:
    client.publish(example_dir("add"))
    profile = load_profile("local").model_dump(mode="json")
    profile["python"] = "/bin/false"  # every block ends at once, no worker ever connects
    profile["scaling"] = {"min_blocks": 1, "max_blocks": 2, "period": 0.2, "max_failures": 3}
    info = client.start_pilot("demo/add", profile)
    pilot = wait_for(lambda: [p for p in client.pilot_status() if p["halted"]], timeout=60,
                      what="the pilot halted")[0]
    assert pilot["failures"] == 3 and pilot["blocks"] == []
    events = " ".join(pilot["events"])
    assert "3 blocks in a row ended before a worker connected" in events
    assert events.count("submitted pilot-") == 3, events
    assert "ended (FAILED) before any worker connected" in events
    # A second broken pilot resubmits from the same scaling loop: once it has done so
    # twice, the loop has passed over the halted pilot at least twice more.
    profile["scaling"]["max_failures"] = 10
    other = client.start_pilot("demo/add", profile)["pilot_id"]

    def other_events() -> str:
        return " ".join(next(p for p in client.pilot_status()
                             if p["pilot_id"] == other)["events"])

    wait_for(lambda: other_events().count("submitted pilot-") >= 3, timeout=60,
             what="the second pilot resubmitted twice")
    halted = next(p for p in client.pilot_status() if p["pilot_id"] == info["pilot_id"])
    assert halted["events"] == pilot["events"], "nothing more submitted"
    client.stop_pilot([info["pilot_id"], other])


def test_a_single_block_pilot_s_dead_worker_is_replaced_and_its_request_served(
    client: Client, hub: Hub,
) -> None:
    """The pilot's only worker is SIGKILLed mid-request: the request waits for the
    replacement block the pilot starts, instead of failing with WorkerLost."""
    import signal

    name = client.publish(SERVABLES / "sleepy")["name"]
    profile = load_profile("local").model_dump(mode="json")
    profile["scaling"] = {"min_blocks": 1, "max_blocks": 1, "period": 0.3}
    info = client.start_pilot(name, profile)
    try:
        client.wait_for_workers(name, 1, timeout=60)
        first = wait_for(lambda: worker_processes(hub.worker_address), what="the worker")[0]
        future = client.submit(name, 1.0, cache=False)
        wait_for(lambda: any(w["state"] == "busy" for w in client.status()["workers"]),
                 what="the request running")
        first.send_signal(signal.SIGKILL)
        answer = future.result(timeout=120)
        assert answer["pid"] != first.pid
        assert client.status()["stats"]["retries"] >= 1
        events = " ".join(client.pilot_status()[0]["events"])
        assert "b2" in events, events  # a replacement block was submitted
    finally:
        client.stop_pilot([info["pilot_id"]])
