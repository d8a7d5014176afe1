"""GPU binding seen from inside real workers: each gets the device its local rank picks.

No GPU exists here; the servable reports the environment it was loaded with, which is
what a framework (torch, jax, ...) would read to find its device.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from dlhub_hpc import Client, Hub
from dlhub_hpc.cli.serving import _workers_table

from .test_drain_workers import Spawn, by_pid, spawn, wait_for, worker_argv
from .test_mpi_workers import MPIEXEC, ROOT_OK, _why_no_mpi

pytestmark = pytest.mark.slow
__all__ = ["spawn"]

MODULE = '''
import os

SEEN = {name: os.environ.get(name) for name in (
    "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK", "HIP_VISIBLE_DEVICES")}

def report(name):
    return {"pid": os.getpid(), "value": SEEN.get(name), "now": os.environ.get(name)}
'''

SPEC = '''
datacite: {title: Reports the GPU variables it was loaded with}
dlhub: {owner: test, name: gpu-env}
servable:
  type: python_function
  max_batch_size: 1
  methods:
    run:
      function: "report:report"
      input: {type: string}
      output: {type: dict}
'''


@pytest.fixture
def hub(make_hub: Callable[..., Hub]) -> Hub:
    return make_hub(heartbeat_interval=0.1, heartbeat_timeout=3.0)


@pytest.fixture
def servable(client: Client, tmp_path: Path) -> str:
    directory = tmp_path / "gpu-env"
    directory.mkdir()
    (directory / "report.py").write_text(textwrap.dedent(MODULE))
    (directory / "servable.yaml").write_text(textwrap.dedent(SPEC))
    return str(client.publish(directory)["name"])


def seen_by_each_worker(client: Client, name: str, env: str, pids: set[int]) -> dict[int, Any]:
    """Send requests until every worker answered one; ``pid -> value it saw``."""
    seen: dict[int, Any] = {}

    def all_seen() -> bool:
        for r in client.run_batch(name, [env] * 2 * len(pids), cache=False):
            assert r["value"] == r["now"], "the variable was set before the model loaded"
            seen[r["pid"]] = r["value"]
        return set(seen) >= pids

    wait_for(all_seen, timeout=60, what="every worker answered")
    return seen


def test_each_worker_binds_the_gpu_of_its_local_rank(
    hub: Hub, client: Client, servable: str, spawn: Spawn
) -> None:
    flags = ["--gpus", "0,1", "--gpu-env", "CUDA_VISIBLE_DEVICES", "--workers-per-gpu", "2"]
    expected: dict[int, str] = {}
    # Two ranks from an explicit flag, two from what Slurm and Open MPI set.
    for rank, env in ((0, None), (1, {"SLURM_LOCALID": "1"}),
                      (2, {"OMPI_COMM_WORLD_LOCAL_RANK": "2"}), (3, None)):
        extra = flags + (["--local-rank", str(rank)] if env is None else [])
        proc = spawn(worker_argv(hub, servable, *extra), env=env)
        expected[proc.pid] = "0" if rank < 2 else "1"
    wait_for(lambda: set(by_pid(client)) == set(expected), what="four workers")
    client.wait_for_workers(servable, 4)

    seen = seen_by_each_worker(client, servable, "CUDA_VISIBLE_DEVICES", set(expected))
    assert seen == expected
    workers = by_pid(client)
    assert {pid: w["gpus"] for pid, w in workers.items()} == {
        pid: f"CUDA_VISIBLE_DEVICES={gpu}" for pid, gpu in expected.items()
    }

    out = io.StringIO()
    Console(file=out, width=240).print(_workers_table(client.status()))
    assert out.getvalue().count("CUDA_VISIBLE_DEVICES=1") == 2, "`dlhub-hpc status` shows it"


def test_a_worker_with_no_gpu_for_its_rank_exits_with_the_reason(
    hub: Hub, client: Client, servable: str, spawn: Spawn, capfd: pytest.CaptureFixture[str]
) -> None:
    proc = spawn(worker_argv(hub, servable, "--gpus", "0", "--local-rank", "1"))
    assert proc.wait(timeout=60) == 2
    assert "local rank 1 has no GPU" in capfd.readouterr().err
    assert client.status()["workers"] == []


@pytest.mark.mpi
def test_workers_launched_by_mpiexec_bind_from_the_launchers_rank(
    hub: Hub, client: Client, servable: str, spawn: Spawn
) -> None:
    reason = _why_no_mpi()
    if reason:
        print(f"skipping: {reason}")
        pytest.skip(reason)
    assert MPIEXEC is not None
    flags = ["--gpus", "4,5", "--gpu-env", "ROCR_VISIBLE_DEVICES"]
    spawn([MPIEXEC, "--oversubscribe", "-n", "2", *worker_argv(hub, servable, *flags)],
          env=ROOT_OK)  # two independent workers, as a pilot with MpiExecLauncher starts them
    wait_for(lambda: len(by_pid(client)) == 2, timeout=60, what="two workers")
    client.wait_for_workers(servable, 2)
    pids = set(by_pid(client))
    seen = seen_by_each_worker(client, servable, "ROCR_VISIBLE_DEVICES", pids)
    assert sorted(seen.values()) == ["4", "5"]
    assert {w["gpus"] for w in by_pid(client).values()} == {
        "ROCR_VISIBLE_DEVICES=4", "ROCR_VISIBLE_DEVICES=5"}

    # One MPI worker over both ranks: each rank binds its own GPU; rank 0 reports both.
    mpi_job = spawn([MPIEXEC, "--oversubscribe", "-n", "2",
                     *worker_argv(hub, servable, *flags, "--gpu-env", "HIP_VISIBLE_DEVICES",
                                  "--mpi")], env=ROOT_OK)
    wait_for(lambda: len(by_pid(client)) == 3, timeout=60, what="the MPI worker")
    (mpi_worker,) = [w for w in by_pid(client).values() if w["ranks"] == 2]
    assert mpi_worker["gpus"] == "HIP_VISIBLE_DEVICES=4,5"
    assert mpi_job.poll() is None
