"""The same flow by hand: separate dlhub-hpc commands against a hub in the background."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from dlhub_hpc.examples import example_dir

from .conftest import wait_for, worker_processes

DLHUB = [sys.executable, "-m", "dlhub_hpc.cli"]


def dlhub(
    *args: str, check: bool = True, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*DLHUB, *args], capture_output=True, text=True, timeout=120, input=input_text,
        env={**os.environ, "COLUMNS": "200"},
    )
    if check and result.returncode != 0:
        command = " ".join(args)
        raise AssertionError(f"dlhub-hpc {command} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def background_hub(_isolated_home: Path) -> Iterator[Path]:
    dlhub("hub", "start", "--background",
          "--client-address", "tcp://127.0.0.1:0", "--worker-address", "tcp://127.0.0.1:0")
    state = json.loads((_isolated_home / "hub.json").read_text())
    yield _isolated_home
    if psutil.pid_exists(state["pid"]):
        dlhub("hub", "stop", check=False)
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(state["pid"]).wait(timeout=20)


def test_hand_driven_flow(background_hub: Path) -> None:
    out = dlhub("publish", str(example_dir("add"))).stdout
    assert "published demo/add@1" in out

    out = dlhub("workers", "start", "--servable", "demo/add", "-n", "2").stdout
    assert "started block-1" in out and "workers ready" in out

    assert json.loads(dlhub("run", "demo/add", "[1, 2, 3.5]").stdout) == 6.5
    assert json.loads(dlhub("run", "demo/add", "-", input_text="[4, 5]").stdout) == 9.0

    status = dlhub("status").stdout
    assert "demo/add@1" in status and "Pilot blocks" in status and "block-1" in status
    raw = json.loads(dlhub("status", "--json").stdout)
    assert len(raw["workers"]) == 2 and raw["blocks"][0]["state"] == "RUNNING"

    out = dlhub("workers", "stop", "--servable", "demo/add").stdout
    assert "stopped block-1" in out

    dlhub("hub", "stop")
    assert not (background_hub / "hub.json").exists()
    wait_for(lambda: worker_processes(raw["hub"]["worker_address"]) == [], timeout=30,
             what="workers exited")


def test_cli_errors_are_clear(background_hub: Path) -> None:
    dlhub("publish", str(example_dir("add")))
    bad = dlhub("run", "demo/add", "[1, 'x']", check=False)
    assert bad.returncode != 0 and "INPUT is not JSON" in bad.stderr
    bad = dlhub("run", "demo/missing", "[1]", check=False)
    assert bad.returncode == 1 and "ServableNotFound" in bad.stderr
    bad = dlhub("run", "nobody", "[1]", check=False)
    assert "should look like owner/name[@version]" in bad.stderr
    bad = dlhub("hub", "start", check=False)
    assert bad.returncode == 1 and "already runs" in bad.stderr


def test_no_hub_is_reported(tmp_path: Path) -> None:
    bad = dlhub("--hub", "tcp://127.0.0.1:9", "status", "--timeout", "1", check=False)
    assert bad.returncode == 1 and "HubUnavailable" in bad.stderr
