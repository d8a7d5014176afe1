"""``make demo`` runs the main job end to end and leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys

import psutil


def _workers() -> set[int]:
    return {
        p.pid for p in psutil.process_iter(["cmdline"])
        if "dlhub_hpc.worker" in (p.info["cmdline"] or [])
    }


def test_demo_answers_and_cleans_up() -> None:
    before = _workers()
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
    assert _workers() - before == set()
