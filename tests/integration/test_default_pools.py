"""The hub's default pools and servables' own default profiles, with real processes.

A hub whose settings name a default pool on a LocalProvider profile at ``min_blocks: 0``
starts its pool pilot with no block; the first request for a servable of the pool is
answered once the block it brings up serves; a hub killed and started again from the same
home takes that pilot back and starts no second one. A servable whose servable.yaml names
a default profile the hub allows answers its first request through a pilot started on
demand; one naming a profile the hub does not allow is not started, and says why."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dlhub_hpc import Client, Hub, ServableNotStarted, Timeout
from dlhub_hpc.broker.ondemand import NOT_STARTED
from dlhub_hpc.cli.pools import pool_workers
from dlhub_hpc.examples import example_dir
from dlhub_hpc.pilot.profiles import load_profile

from .conftest import FAST

pytestmark = pytest.mark.timeout(240)

POOL = "pool:demo/add"  # the pilot's servable ref of the pool default_pools names


def zero_profile(tmp_path: Path) -> Path:
    """The local profile at min_blocks 0: a block only while requests wait."""
    profile = load_profile("local").model_dump(mode="json", exclude_none=True)
    profile["scaling"] = {"min_blocks": 0, "max_blocks": 1, "idle_release": 300,
                          "period": 0.3}
    path = tmp_path / "zero.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def test_a_default_pool_at_zero_answers_its_first_request_and_is_started_once(
        hub_process: Callable[..., subprocess.Popen[bytes]], tmp_path: Path) -> None:
    settings = tmp_path / "hub.yaml"
    settings.write_text(yaml.safe_dump({
        **FAST, "default_pools": [{"pool": "demo/add", "profile": str(zero_profile(tmp_path))}],
    }))
    home = tmp_path / "home"
    first = hub_process(home, "--config", str(settings), "--client-address",
                        "tcp://127.0.0.1:0", "--worker-address", "tcp://127.0.0.1:0")
    address = json.loads((home / "hub.json").read_text())["client_address"]
    with Client(address, timeout=30) as client:
        (pilot,) = client.pilot_status()  # the hub started it, with no block at zero
        assert pilot["servable"] == POOL and pilot["blocks"] == []
        client.publish(example_dir("add"))
        assert client.run("demo/add", [1.0, 2.0], timeout=180) == 3.0
        assert pool_workers(client.status(), POOL) == 1
        assert client.status()["starting"] == {}  # no pilot on demand beside the pool
        pilot_id = pilot["pilot_id"]
    os.kill(first.pid, signal.SIGKILL)  # a crash: the pilot's block runs on
    first.wait()

    second = hub_process(home, "--config", str(settings))  # the stale hub.json's addresses
    with Client(address, timeout=30) as client:
        pilots = client.pilot_status()
        assert [p["pilot_id"] for p in pilots] == [pilot_id], pilots  # taken back, not two
        assert client.run("demo/add", [2.0, 2.0], timeout=180) == 4.0
        assert [p["pilot_id"] for p in client.pilot_status()] == [pilot_id]
        client.shutdown_hub()
    second.wait(timeout=60)


def servable_naming(tmp_path: Path, name: str, profile: str) -> Path:
    """A copy of the add example, published as demo/NAME, whose spec names ``profile``."""
    directory = tmp_path / name
    shutil.copytree(example_dir("add"), directory)
    spec_path = directory / "servable.yaml"
    spec: dict[str, Any] = yaml.safe_load(spec_path.read_text())
    spec["dlhub"]["name"] = name
    spec["servable"]["default_profile"] = profile
    spec_path.write_text(yaml.safe_dump(spec))
    return directory


def test_a_servables_own_default_profile_starts_it_where_the_hub_allows(
        make_hub: Callable[..., Hub], tmp_path: Path) -> None:
    hub = make_hub(servable_profiles=["local"])
    with Client(hub.client_address, timeout=60) as client:
        client.publish(servable_naming(tmp_path, "add-local", "local"))
        client.publish(servable_naming(tmp_path, "add-slurm", "slurm-local"))

        assert client.run("demo/add-local", [1.0, 2.0], timeout=180) == 3.0
        (pilot,) = client.pilot_status()
        assert pilot["servable"] == "demo/add-local@1" and pilot["profile"] == "local"

        refused = client.submit("demo/add-slurm", [1.0, 1.0], timeout=120)
        rid = refused.request_id  # type: ignore[attr-defined]
        status = client.request_status(rid)
        assert status["state"] == "queued" and status["stage"] == NOT_STARTED
        assert "servable_profiles: local" in status["reason"]
        shown = client.status()["starting"]["demo/add-slurm@1"]
        assert shown["stage"] == NOT_STARTED and shown["profile"] == "slurm-local"
        with pytest.raises(ServableNotStarted) as caught:
            client.run("demo/add-slurm", [2.0, 2.0], timeout=0.5)
        assert isinstance(caught.value, Timeout)  # old callers still catch it
        assert caught.value.details["profile"] == "slurm-local"
        assert caught.value.details["allowed"] == ["local"]
        assert "does not let servables choose" in caught.value.message
        assert [p["servable"] for p in client.pilot_status()] == ["demo/add-local@1"]
        refused.cancel()
