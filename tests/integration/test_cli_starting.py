"""``dlhub-hpc run`` on a servable that starts on first request: its output is not a
terminal, so it prints one line per start stage (on stderr), in order, then the answer."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dlhub_hpc import Client, Hub
from dlhub_hpc.broker.ondemand import STAGES
from dlhub_hpc.examples import example_dir

pytestmark = pytest.mark.timeout(180)


def test_run_prints_each_stage_of_a_start_on_demand(
        make_hub: Callable[..., Hub], _isolated_home: Path) -> None:
    hub = make_hub(home=_isolated_home, start_on_demand={"demo/add": "local"})
    with Client(hub.client_address, timeout=60) as client:
        client.publish(example_dir("add"))
        assert client.status()["workers"] == []
    result = subprocess.run(
        [sys.executable, "-m", "dlhub_hpc.cli", "run", "demo/add", "[1, 2]",
         "--timeout", "120"],
        capture_output=True, text=True, timeout=170, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3.0"
    seen = re.findall(r"demo/add is starting: (.+)", result.stderr)
    assert seen, f"no stage printed:\n{result.stderr}"
    assert all(stage in STAGES for stage in seen), seen
    ranks = [STAGES.index(stage) for stage in seen]
    assert ranks == sorted(set(ranks)), f"stages out of order or repeated: {seen}"
