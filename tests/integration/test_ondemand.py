"""Start on first request with real processes: a servable with no worker and a default
profile (HubConfig start_on_demand) answers its first request once the pilot it starts
(Parsl's LocalProvider) serves; a poller sees the stages in order; a deadline that passes
while it starts is ServableStarting naming the stage; an idle one is released."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dlhub_hpc import Client, Hub, ServableStarting, Timeout
from dlhub_hpc.broker.ondemand import STAGES
from dlhub_hpc.examples import example_dir

from .conftest import wait_for, worker_processes

pytestmark = pytest.mark.timeout(180)


def poll_stages(client: Client, request_id: str, done: threading.Event) -> list[str]:
    """The stages ``request_status`` reports until ``done``, each once, in the order seen."""
    seen: list[str] = []
    while not done.is_set():
        stage = client.request_status(request_id).get("stage")
        if stage and (not seen or seen[-1] != stage):
            seen.append(stage)
        done.wait(0.02)
    return seen


def in_order(seen: list[str]) -> bool:
    ranks = [STAGES.index(s) for s in seen]
    return ranks == sorted(ranks) and len(set(ranks)) == len(ranks)


def run_watched(client: Client, servable: str, inputs: Any,
                timeout: float = 120) -> tuple[Any, list[str]]:
    """Submit, poll the request's stage meanwhile; the answer and the stages seen."""
    future = client.submit(servable, inputs, timeout=timeout)
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    with Client(client.address, timeout=30) as poller:
        seen = poll_stages(poller, future.request_id, done)  # type: ignore[attr-defined]
    return future.result(), seen


def test_the_first_request_starts_a_pilot_and_is_answered(make_hub: Callable[..., Hub]) -> None:
    hub = make_hub(start_on_demand={"demo/add": "local"})
    with Client(hub.client_address, timeout=60) as client:
        client.publish(example_dir("add"))
        assert client.status()["workers"] == []
        result, seen = run_watched(client, "demo/add", [1.0, 2.0])
        assert result == 3.0
        assert seen, "the poller saw the servable starting"
        assert in_order(seen), seen
        pilots = client.pilot_status()
        assert [p["servable"] for p in pilots] == ["demo/add@1"]
        assert client.run("demo/add", [2.0, 2.0]) == 4.0  # warm now: no second pilot
        assert len(client.pilot_status()) == 1
        assert client.status()["starting"] == {}


def _stuck_profile(tmp_path: Path) -> Path:
    """A local profile whose job runs but whose worker never starts (it sleeps first)."""
    path = tmp_path / "stuck.yaml"
    path.write_text(
        "description: a job that never gets to its worker\n"
        "provider:\n  type: LocalProvider\n  worker_init: sleep 600\n"
        "  launcher: {type: SingleNodeLauncher, debug: false}\n"
        "workers_per_node: 1\nhub: {address: 127.0.0.1}\n"
        "scaling: {min_blocks: 1, max_blocks: 1, period: 0.2}\n")
    return path


def test_a_deadline_passed_while_starting_names_the_stage(
        make_hub: Callable[..., Hub], tmp_path: Path) -> None:
    hub = make_hub(start_on_demand={"demo/add": str(_stuck_profile(tmp_path))})
    with Client(hub.client_address, timeout=60) as client:
        client.publish(example_dir("add"))
        first = client.submit("demo/add", [1.0, 1.0], timeout=120)
        rid = first.request_id  # type: ignore[attr-defined]
        wait_for(lambda: client.request_status(rid)["stage"] == "job running",
                 what="the pilot's job runs")
        assert client.status()["starting"]["demo/add@1"]["stage"] == "job running"
        with pytest.raises(ServableStarting) as caught:
            client.run("demo/add", [2.0, 2.0], timeout=0.5)
        assert isinstance(caught.value, Timeout)  # old callers still catch it
        assert caught.value.details["stage"] == "job running"
        assert "job running" in caught.value.message


def test_an_unknown_default_profile_fails_the_waiting_request(
        make_hub: Callable[..., Hub]) -> None:
    hub = make_hub(start_on_demand={"demo/add": "no-such-profile"})
    with Client(hub.client_address, timeout=60) as client:
        client.publish(example_dir("add"))
        with pytest.raises(Exception, match="could not be started on demand") as caught:
            client.run("demo/add", [1.0, 1.0], timeout=60)
        assert "no-such-profile" in str(caught.value)


def test_an_idle_servable_goes_back_to_zero_workers(make_hub: Callable[..., Hub]) -> None:
    hub = make_hub(start_on_demand={"demo/add": "local"}, idle_release_after=0.5)
    with Client(hub.client_address, timeout=60) as client:
        client.publish(example_dir("add"))
        assert client.run("demo/add", [1.0, 2.0], timeout=240) == 3.0
        wait_for(lambda: client.pilot_status() == [], what="the idle pilot is released")
        wait_for(lambda: not worker_processes(hub.worker_address), what="its worker exits")
        assert client.status()["starting"] == {}
        assert client.run("demo/add", [3.0, 4.0], timeout=150) == 7.0  # and starts again
