"""MPI servables with Open MPI on 2 ranks, against a real hub: split batches and an ensemble."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlhub_hpc import Client, Hub
from dlhub_hpc.errors import ExecutionError, ServableLoadError
from dlhub_hpc.examples import EXAMPLES

from .conftest import worker_processes
from .test_drain_workers import Spawn, by_pid, spawn, wait_for, worker_argv

pytestmark = [pytest.mark.mpi, pytest.mark.slow]
__all__ = ["spawn"]  # the fixture, shared with the drain tests

ROOT_OK = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
MPIEXEC = shutil.which("mpiexec")


def _why_no_mpi() -> str | None:
    if MPIEXEC is None:
        return "mpiexec is not on PATH (apt-get install openmpi-bin libopenmpi-dev)"
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install 'dlhub-hpc[mpi]')"
    return None


@pytest.fixture(autouse=True)
def _need_mpi() -> None:
    reason = _why_no_mpi()
    if reason:
        print(f"skipping: {reason}")
        pytest.skip(reason)


@pytest.fixture
def hub(make_hub: Callable[..., Hub]) -> Hub:
    return make_hub(heartbeat_interval=0.1, heartbeat_timeout=3.0)


def mpiexec(ranks: int, argv: list[str]) -> list[str]:
    assert MPIEXEC is not None
    return [MPIEXEC, "--oversubscribe", "-n", str(ranks), *argv]


def mpi_profile(name: str, provider: dict[str, Any], mpi_launcher: dict[str, Any]
                ) -> dict[str, Any]:
    """A one-block site profile whose MPI servables run under ``mpi_launcher``."""
    return {"name": name, "provider": provider, "mpi_launcher": mpi_launcher,
            "scaling": {"min_blocks": 1, "max_blocks": 1}}


SPLIT_MODULE = '''
import os
import time

def where(x):
    time.sleep(0.05)  # long enough that requests arriving together share a batch
    if x < 0:
        raise ValueError("negative input")
    return {"x": x, "rank": int(os.environ["DLHUB_HPC_RANK"]), "pid": os.getpid()}
'''

SPLIT_SPEC = '''
datacite: {title: Reports which rank ran each item}
dlhub: {owner: test, name: where}
servable:
  type: python_function
  ranks: 2
  max_batch_size: 8
  methods:
    run:
      function: "where:where"
      input: {type: float}
      output: {type: dict}
'''


def split_servable(tmp_path: Path) -> Path:
    directory = tmp_path / "where"
    directory.mkdir()
    (directory / "where.py").write_text(textwrap.dedent(SPLIT_MODULE))
    (directory / "servable.yaml").write_text(textwrap.dedent(SPLIT_SPEC))
    return directory


def example_member(rank: int) -> Any:
    """The example's module as rank ``rank`` imports it, to compute the expected mean."""
    spec = importlib.util.spec_from_file_location(
        f"ensemble_member_{rank}", EXAMPLES / "ensemble_mpi" / "ensemble.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fit(rank)


def test_an_ensemble_runs_one_member_per_rank_and_rank_0_averages(
    hub: Hub, client: Client, spawn: Spawn
) -> None:
    name = client.publish(EXAMPLES / "ensemble_mpi")["name"]
    job = spawn(mpiexec(2, worker_argv(hub, name, mpi=True)), env=ROOT_OK)
    wait_for(lambda: by_pid(client), timeout=60, what="the MPI worker registers")
    (worker,) = client.status()["workers"]
    assert worker["ranks"] == 2
    client.wait_for_workers(name, 1)

    assert client.run(name, None, method="member") == 0.5, "members 0 and 1 both ran"
    points = [0.25, 1.0, 2.5]
    expected = np.mean([np.polyval(example_member(r), points) for r in (0, 1)], axis=0)
    assert np.allclose(client.run(name, points), expected)
    assert not np.allclose(np.polyval(example_member(0), points), expected), "not one member"

    client.shutdown_hub()
    assert job.wait(timeout=30) == 0, "rank 0 leaving stops every rank, without a hang"


def test_a_split_batch_runs_on_both_ranks_in_order_with_per_item_errors(
    hub: Hub, client: Client, spawn: Spawn, tmp_path: Path
) -> None:
    name = client.publish(split_servable(tmp_path))["name"]
    job = spawn(mpiexec(2, worker_argv(hub, name, mpi=True)), env=ROOT_OK)
    client.wait_for_workers(name, 1, timeout=60)

    inputs = [float(i) for i in range(8)]
    inputs[5] = -1.0
    results = client.run_batch(name, inputs, cache=False, return_exceptions=True)
    assert isinstance(results[5], ExecutionError) and "negative input" in str(results[5])
    good = [r for i, r in enumerate(results) if i != 5]
    assert [r["x"] for r in good] == [x for i, x in enumerate(inputs) if i != 5]
    assert {r["rank"] for r in good} == {0, 1}, "the batch was shared by both ranks"
    assert len({r["pid"] for r in good}) == 2

    os.kill(job.pid, signal.SIGTERM)  # mpiexec forwards it to every rank: rank 0 drains
    job.wait(timeout=30)  # mpiexec itself reports the signal in its exit status
    wait_for(lambda: not client.status()["workers"], what="the worker said goodbye")
    stats = client.status()["stats"]
    assert stats["workers_drained"] == 1 and stats["workers_exited"] == 1
    assert stats.get("workers_lost", 0) == 0


def test_a_rank_that_cannot_load_fails_the_load_with_its_rank(
    hub: Hub, client: Client, spawn: Spawn, tmp_path: Path
) -> None:
    directory = split_servable(tmp_path)
    module = directory / "where.py"
    module.write_text("import os\nif os.environ['DLHUB_HPC_RANK'] == '1':\n"
                      "    raise ImportError('no GPU on this rank')\n" + module.read_text())
    name = client.publish(directory)["name"]
    waiting = client.submit(name, 1.0, timeout=60)
    job = spawn(mpiexec(2, worker_argv(hub, name, mpi=True)), env=ROOT_OK)
    assert job.wait(timeout=60) != 0
    with pytest.raises(ServableLoadError, match=r"rank 1: .*no GPU on this rank"):
        waiting.result(timeout=30)


def test_a_pilot_block_through_parsl_mpiexec_launcher(
    hub: Hub, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the launcher writes its hostfile into the current directory

    name = client.publish(EXAMPLES / "ensemble_mpi")["name"]
    exports = " ".join(f"{k}={v}" for k, v in {**ROOT_OK, "DLHUB_HPC_MPI": "1"}.items())
    profile = mpi_profile("local-mpi", {
        "type": "LocalProvider", "launcher": {"type": "SingleNodeLauncher", "debug": False},
        "worker_init": f"export {exports}; export PATH={Path(sys.executable).parent}:$PATH",
    }, {"type": "MpiExecLauncher", "debug": False, "overrides": "--oversubscribe"})
    info = client.start_pilot(name, profile)  # ranks 2: mpiexec -n 2
    try:
        wait_for(lambda: client.status()["workers"], timeout=60, what="the block's worker")
        (worker,) = client.status()["workers"]
        assert worker["ranks"] == 2 and worker["block"] == info["blocks"][0]["block_id"]
        client.wait_for_workers(name, 1)
        assert client.run(name, None, method="member") == 0.5
    finally:
        client.stop_pilot([info["pilot_id"]])
    wait_for(lambda: not client.status()["workers"], what="cancel ends the MPI job")
    wait_for(lambda: not worker_processes(hub.worker_address), what="no rank is left behind")


def _slurm_conf() -> str | None:
    """SLURM_CONF of a Slurm that answers (scripts/slurm/start.sh), else None."""
    conf = os.environ.get("SLURM_CONF", "/tmp/dlhub-hpc-slurm/slurm.conf")
    if shutil.which("sinfo") is None or not Path(conf).exists():
        return None
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                         timeout=30, check=False, env={**os.environ, "SLURM_CONF": conf})
    return conf if out.returncode == 0 and out.stdout.strip() else None


@pytest.mark.slurm
@pytest.mark.timeout(240)
def test_an_mpi_worker_as_a_slurm_job_through_srun(
    hub: Hub, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = _slurm_conf()
    if conf is None:
        reason = "no Slurm answers; start one with scripts/slurm/start.sh (make test does)"
        print(f"skipping: {reason}")
        pytest.skip(reason)
    monkeypatch.setenv("SLURM_CONF", conf)
    monkeypatch.chdir(tmp_path)  # where sbatch runs the job, and its output goes
    name = client.publish(split_servable(tmp_path))["name"]
    profile = mpi_profile("slurm-mpi", {
        "type": "SlurmProvider", "partition": "debug", "nodes_per_block": 1,
        "walltime": "00:05:00", "exclusive": False, "cmd_timeout": 60,
        "launcher": {"type": "SrunLauncher", "debug": False},
        "worker_init": (f"export SLURM_CONF={conf} DLHUB_HPC_MPI=1 "
                        f"PATH={Path(sys.executable).parent}:$PATH"),
    }, {"type": "SrunLauncher", "debug": False, "overrides": "--mpi=pmix"})
    info = client.start_pilot(name, profile)  # one Slurm job: srun --ntasks 2 --mpi=pmix
    try:
        wait_for(lambda: client.status()["workers"], timeout=180, what="the job's worker")
        (worker,) = client.status()["workers"]
        assert worker["ranks"] == 2
        client.wait_for_workers(name, 1)
        results = client.run_batch(name, [float(i) for i in range(6)], cache=False)
        assert [r["x"] for r in results] == [float(i) for i in range(6)]
        assert {r["rank"] for r in results} == {0, 1}
    finally:
        client.stop_pilot([info["pilot_id"]])
    wait_for(lambda: not client.status()["workers"], timeout=60, what="scancel ends the job")
