"""The examples set themselves up, or say in one line what to run first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dlhub_hpc import Hub
from dlhub_hpc.servable import make_bundle


def test_the_iris_example_trains_its_model_where_it_is_written(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "dlhub_hpc.examples.iris", str(tmp_path / "iris")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"dlhub-hpc publish {tmp_path / 'iris'}" in done.stdout
    assert sorted(p.name for p in (tmp_path / "iris").iterdir()) == ["model.pkl", "servable.yaml"]
    assert make_bundle(tmp_path / "iris").spec.dlhub.name == "iris"


def test_the_screening_workflow_without_a_hub_says_what_to_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dlhub_hpc.examples.screening.workflow", "--hub",
         "tcp://127.0.0.1:9", "--rounds", "1"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "no hub is running: start one first with 'dlhub-hpc hub start --background' "
        "(or pass --hub ADDRESS)"]


def test_the_screening_workflow_leaves_no_parsl_run_dir_behind(tmp_path: Path, hub: Hub) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "dlhub_hpc.examples.screening.workflow", "--hub",
         hub.client_address, "--rounds", "1", "--batches", "1", "--batch-size", "8",
         "--keep", "2"],
        capture_output=True, text=True, timeout=300, cwd=cwd,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert len(done.stdout.strip().splitlines()[-2:]) == 2  # the best two, one a line
    assert list(cwd.iterdir()) == []  # Parsl's runinfo/ went to a temporary folder
