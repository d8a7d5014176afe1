"""``hub start --log-format json``: every line of the hub's and its workers' logs is a JSON
object, and one request is followed by its id from the hub to the worker that ran it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dlhub_hpc import Client
from dlhub_hpc.examples import example_dir
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.slow
DLHUB = [sys.executable, "-m", "dlhub_hpc.cli"]


def records(path: Path) -> list[dict[str, Any]]:
    """The JSON records of a log file; a line that is not one fails the test."""
    found = []
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            assert {"time", "level", "logger", "message"} <= record.keys(), line
            found.append(record)
    return found


@pytest.fixture
def json_hub(_isolated_home: Path) -> Iterator[Path]:
    """A hub in the foreground with ``-vv hub start --log-format json``; its log file."""
    log = _isolated_home.parent / "hub-json.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*DLHUB, "-vv", "hub", "start", "--log-format", "json",
             "--client-address", "tcp://127.0.0.1:0", "--worker-address", "tcp://127.0.0.1:0"],
            stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        wait_for(lambda: proc.poll() is not None or (_isolated_home / "hub.json").exists(),
                 timeout=60, what="the hub's hub.json")
        assert proc.poll() is None, log.read_text()
        yield log
    finally:
        with contextlib.suppress(Exception), Client(timeout=10) as client:
            client.shutdown_hub()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_one_request_is_followed_by_its_id_from_hub_to_worker(
    json_hub: Path, _isolated_home: Path,
) -> None:
    with Client(timeout=60) as client:
        name = str(client.publish(example_dir("noop"))["name"])
        client.start_workers(name, 1)
        client.wait_for_workers(name, 1, timeout=60)
        assert client.run(name, {"x": 1}) == {"x": 1}  # the one request to this servable

    def arrival() -> str | None:
        return next((str(r["request_id"]) for r in records(json_hub)
                     if r["message"].startswith(f"request for {name}@")), None)

    rid = wait_for(arrival, timeout=30, what="the hub's record of the request")
    def hub_trail() -> list[str]:
        return [r["message"] for r in records(json_hub)
                if r.get("request_id") == rid or rid in r.get("request_ids", [])]

    trail = wait_for(lambda: len(hub_trail()) >= 3 and hub_trail(), timeout=30,
                     what=f"the hub's records of {rid}")
    assert trail[0].startswith(f"request for {name}")
    assert any(m.startswith("batch ") for m in trail) and trail[-1] == "reply ok"

    def worker_trail() -> list[dict[str, Any]]:
        found = []
        for path in (_isolated_home / "pilot").rglob("*"):
            if path.is_file() and path.suffix in (".err", ".stderr", ".out", ".stdout"):
                text = path.read_text(errors="replace")
                if '"logger"' in text:  # a worker's JSON log (not a Parsl script's output)
                    found += [r for r in records(path) if r.get("request_id") == rid]
        return found

    [item] = wait_for(worker_trail, timeout=30, what=f"the worker's record of {rid}")
    assert item["logger"] == "dlhub_hpc.worker.loop" and "item done" in item["message"]
    assert item["process"] != json.loads((_isolated_home / "hub.json").read_text())["pid"]
