"""Job scripts for sites that cannot run here (PBS Pro, GPU Slurm), rendered by Parsl's own
providers and launchers and checked: nothing is submitted; qsub/sbatch calls are captured."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from dlhub_hpc.errors import PilotError, ProfileError
from dlhub_hpc.pilot.pilots import Pilot, hub_address_for_workers
from dlhub_hpc.pilot.profiles import build_provider, load_profile, parse_profile
from dlhub_hpc.security.isolation import WorkerLaunch

HUB = "tcp://10.140.1.5:47652"


@pytest.fixture(autouse=True)
def account(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DLHUB_HPC_ACCOUNT", "matsci")


def render(name: str, tmp_path: Path, *, ranks: int = 1, nodes: int | None = None,
           job_id: str = "4242.polaris-pbs-01", launch: WorkerLaunch | None = None,
           **changes: Any) -> tuple[str, list[str], Pilot]:
    """Submit one block with the site's real Parsl provider; capture the script and command."""
    data = load_profile(name).model_dump(mode="json")
    data.update(changes)
    profile = parse_profile(data)
    provider = build_provider(profile, mpi=ranks > 1)
    calls: list[str] = []

    def execute_wait(cmd: str, timeout: float | None = None) -> tuple[int, str, str]:
        calls.append(cmd)
        return 0, (job_id if "qsub" in cmd else f"Submitted batch job {job_id}") + "\n", ""

    provider.execute_wait = execute_wait  # type: ignore[method-assign]
    pilot = Pilot(profile, "alice/oqmd@3", HUB, tmp_path, ranks=ranks, nodes=nodes,
                  provider=provider, launch=launch)
    block = pilot.submit_block()
    assert block.job_id == job_id
    script = calls[-1].split()[-1]
    return Path(script).read_text(), calls, pilot


def test_polaris_pbs_script(tmp_path: Path) -> None:
    script, calls, _ = render("polaris", tmp_path, nodes=2)
    assert re.search(r"qsub\s+-q debug -A matsci \S+", calls[-1])
    assert "#PBS -l select=2:ncpus=64:ngpus=4" in script
    assert "#PBS -l walltime=01:00:00" in script
    assert "#PBS -l filesystems=home:eagle" in script
    assert "module load spack-pe-base apptainer" in script
    assert "mpiexec --cpu-bind none --depth=16 --ppn 4 -n $WORKERCOUNT" in script
    assert "WORKERCOUNT=8" in script
    worker = next(line for line in script.splitlines() if "dlhub_hpc.worker" in line)
    assert worker.startswith("apptainer exec --cleanenv --contain --no-home --nv")
    # The launcher's local rank reaches the worker inside the clean container environment.
    # Escaped: the heredoc that writes the task script must not expand it in the batch shell.
    assert '--env PALS_LOCAL_RANKID="\\${PALS_LOCAL_RANKID:-}"' in worker
    assert "/lus/eagle/projects/matsci/dlhub-hpc/images/alice_oqmd.sif" in worker
    assert "--bind /lus/eagle:/lus/eagle" in worker
    assert "python3 -m dlhub_hpc.worker --hub tcp://10.140.1.5:47652" in worker
    assert "--servable alice/oqmd@3" in worker
    assert "--cache-dir /opt/dlhub-hpc/bundles" in worker  # the bundle baked into the image
    assert "--drain-after 3480" in worker  # walltime 3600 - drain margin 120
    assert "--gpus 0,1,2,3 --gpu-env CUDA_VISIBLE_DEVICES --workers-per-gpu 1" in worker


def test_aurora_binds_twelve_tiles_with_ze_affinity_mask(tmp_path: Path) -> None:
    script, _, pilot = render("aurora", tmp_path)
    assert "#PBS -l select=1:ncpus=208" in script
    assert "WORKERCOUNT=12" in script and "--ppn 12" in script
    worker = next(line for line in script.splitlines() if "dlhub_hpc.worker" in line)
    assert "--gpu-env ZE_AFFINITY_MASK" in worker and "--nv" not in worker
    assert "0.0,0.1,1.0,1.1,2.0,2.1,3.0,3.1,4.0,4.1,5.0,5.1" in worker
    assert pilot.tasks_per_node == 12


def test_mpi_servable_runs_under_the_mpi_launcher(tmp_path: Path) -> None:
    script, _, pilot = render("polaris", tmp_path, ranks=4)
    assert "mpiexec --cpu-bind none --depth=8 -n $WORKERCOUNT" in script
    assert "WORKERCOUNT=4" in script
    worker = next(line for line in script.splitlines() if "dlhub_hpc.worker" in line)
    assert "--mpi" in worker.split()
    assert pilot.blocks[next(iter(pilot.blocks))].workers == 1, "one MPI worker per block"


def test_frontier_slurm_script(tmp_path: Path) -> None:
    script, calls, _ = render("frontier", tmp_path, job_id="1234567")
    assert calls[-1].startswith("sbatch ")
    for line in ("#SBATCH --time=60", "#SBATCH --ntasks-per-node=8",
                 "#SBATCH --account=matsci", "#SBATCH --partition=batch", "#SBATCH -C nvme",
                 "#SBATCH --exclusive"):
        assert line in script
    assert "srun --ntasks 8 -l --gpus-per-node=8" in script.replace("  ", " ")
    worker = next(line for line in script.splitlines() if "dlhub_hpc.worker" in line)
    assert "apptainer exec --cleanenv --contain --no-home --rocm" in worker
    assert "--gpu-env ROCR_VISIBLE_DEVICES" in worker


def test_perlmutter_uses_podman_hpc_with_gpus(tmp_path: Path) -> None:
    script, _, _ = render("perlmutter", tmp_path, job_id="99")
    assert "#SBATCH --qos=regular" in script and "#SBATCH --constraint=gpu" in script
    worker = next(line for line in script.splitlines() if "dlhub_hpc.worker" in line)
    assert worker.startswith("podman-hpc run") and "dlhub-hpc/alice_oqmd:latest" in worker


def test_unset_variables_and_bad_counts_are_refused(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DLHUB_HPC_ACCOUNT")
    with pytest.raises(ProfileError, match="needs DLHUB_HPC_ACCOUNT set"):
        Pilot(load_profile("polaris"), "alice/oqmd@3", HUB, tmp_path)
    with pytest.raises(PilotError, match="at least 1"):
        Pilot(load_profile("local"), "alice/oqmd@3", HUB, tmp_path, nodes=0)
    with pytest.raises(ProfileError, match="unknown container runtime 'docker'"):
        parse_profile({"name": "x", "container": {"runtime": "docker", "image": "i"}})


def test_hub_address_as_workers_dial_it() -> None:
    local = load_profile("local")
    assert hub_address_for_workers("tcp://127.0.0.1:5000", local) == "tcp://127.0.0.1:5000"
    by_if = parse_profile({"name": "x", "hub": {"interface": "lo"}})
    assert hub_address_for_workers("tcp://0.0.0.0:5000", by_if) == "tcp://127.0.0.1:5000"
    with pytest.raises(ProfileError, match="interface 'nope0'"):
        hub_address_for_workers("tcp://0.0.0.0:5000",
                                parse_profile({"name": "x", "hub": {"interface": "nope0"}}))


def test_containerised_workers_get_the_hub_worker_key(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "worker.key"
    key.write_text("placeholder\n")
    monkeypatch.setenv("DLHUB_HPC_WORKER_KEY", str(key))
    script, _, _ = render("polaris", tmp_path / "run")
    worker = next(line for line in script.splitlines() if "dlhub_hpc.worker" in line)
    # keys.container_worker_access decides the bind; the command must carry it and the variable.
    assert f"--bind {key.parent}" in worker or f"--bind {key}" in worker
    assert "--env DLHUB_HPC_WORKER_KEY=" in worker
