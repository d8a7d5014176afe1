"""``make demo`` runs the main job end to end and leaves nothing behind."""

from __future__ import annotations

import re
import subprocess
import sys

from .conftest import wait_for, worker_processes


def test_demo_answers_and_cleans_up() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dlhub_hpc.demo", "--requests", "40"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "demo/add [1.5, 2.5, 3.0] -> 7.0" in out
    assert "['setosa', 'versicolor', 'virginica']" in out
    assert "InvalidInput" in out
    assert "sum of answers 5050.0" in out
    assert "demo/add (memo hit)" in out and "hub and workers stopped" in out
    worker_address = re.search(r"\(workers: (tcp://[\d.:]+)\)", out)
    assert worker_address is not None, out
    wait_for(lambda: worker_processes(worker_address.group(1)) == [], timeout=30,
             what="workers exited")
