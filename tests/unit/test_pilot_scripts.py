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
    assert "#PBS -l singularity_fakeroot=true" in script  # apptainer build --fakeroot
    assert "module load spack-pe-base apptainer" in script
    # Each worker bound to its 8 cores (Parsl's "none" goes to --mem-bind, not --cpu-bind).
    assert ("mpiexec --mem-bind none --ppn 4 --depth=8 --cpu-bind depth -n $WORKERCOUNT"
            in script)
    assert "--cpu-bind none" not in script
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
    assert "#PBS -l filesystems=home:flare" in script
    assert ("--cpu-bind list:1-8:9-16:17-24:25-32:33-40:41-48:53-60:61-68:69-76:77-84:"
            "85-92:93-100") in script and "--cpu-bind none" not in script
    assert pilot.profile.hub.interface == "hsn0"  # ALCF's Aurora Parsl guidance
    assert pilot.profile.queue.jobs_per_user == 1  # debug: one job per user
    assert any("cannot run beside it" in e for e in pilot.events)
    worker = next(line for line in script.splitlines() if "dlhub_hpc.worker" in line)
    assert "--gpu-env ZE_AFFINITY_MASK" in worker and "--nv" not in worker
    # Apptainer's --contain gives a minimal /dev: the Intel GPUs are bound in.
    assert "apptainer exec --cleanenv --contain --no-home --bind /dev/dri " in worker
    assert "0.0,0.1,1.0,1.1,2.0,2.1,3.0,3.1,4.0,4.1,5.0,5.1" in worker
    assert pilot.tasks_per_node == 12


def test_mpi_servable_runs_under_the_mpi_launcher(tmp_path: Path) -> None:
    script, _, pilot = render("polaris", tmp_path, ranks=4)
    assert "mpiexec --mem-bind none --ppn 4 --depth=8 --cpu-bind depth -n $WORKERCOUNT" in script
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
    assert ("srun --ntasks 8 -l --gpus-per-node=8 --gpu-bind=closest -c 7 --threads-per-core=1"
            in script.replace("  ", " "))
    assert ("module load olcf-container-tools apptainer-enable-mpi apptainer-enable-gpu"
            in script)
    worker = next(line for line in script.splitlines() if "dlhub_hpc.worker" in line)
    assert "apptainer exec --cleanenv --contain --no-home --rocm" in worker
    assert "--gpus 4,5,2,3,6,7,0,1 --gpu-env ROCR_VISIBLE_DEVICES" in worker


def test_perlmutter_uses_podman_hpc_with_gpus(tmp_path: Path) -> None:
    container = {"runtime": "podman-hpc", "image": "dlhub-hpc/{name}:{version}"}
    script, _, pilot = render("perlmutter", tmp_path, job_id="99", container=container)
    assert "#SBATCH --qos=regular" in script and "#SBATCH --constraint=gpu" in script
    assert "#SBATCH --gpus-per-node=4" in script
    assert "srun --ntasks 4 -l -c 32 --cpu-bind=cores" in script
    assert pilot.provider.cmd_timeout == 120  # type: ignore[attr-defined]
    worker = next(line for line in script.splitlines() if "dlhub_hpc.worker" in line)
    assert worker.startswith("podman-hpc run") and " --gpu " in worker
    assert "dlhub-hpc/alice_oqmd:3 python3" in worker  # as 'podman-hpc migrate'd


def test_perlmutter_refuses_without_an_image_and_says_how_to_make_one(
        tmp_path: Path) -> None:
    from dlhub_hpc.container.launch import pick_image
    from dlhub_hpc.container.runtimes import get_runtime
    from dlhub_hpc.errors import ContainerError
    from dlhub_hpc.registry.images import ImageRecord

    assert load_profile("perlmutter").container.image is None
    built = {"sif": ImageRecord("alice/oqmd", 3, "d", "r", "sif", "/i/image.sif", "s", 0.0),
             "dir": ImageRecord("alice/oqmd", 3, "d", "r", "dir", "/i/rootfs", "s", 0.0)}
    with pytest.raises(ContainerError) as caught:
        pick_image(get_runtime("podman-hpc"), built)
    message = caught.value.message
    assert "tar -C /i/rootfs -c . | podman-hpc import - dlhub-hpc/alice_oqmd:3" in message
    assert "podman-hpc migrate dlhub-hpc/alice_oqmd:3" in message
    assert "container.image" in message


@pytest.mark.parametrize(("site", "directives"), [
    ("polaris", ["#PBS -l singularity_fakeroot=true", "--cpu-bind depth", "--depth=8"]),
    ("aurora", ["#PBS -l filesystems=home:flare", "--cpu-bind list:1-8:", "--ppn 12"]),
    ("frontier", ["apptainer-enable-gpu", "--gpu-bind=closest", "-c 7", "#SBATCH -C nvme"]),
    ("perlmutter", ["#SBATCH --constraint=gpu", "#SBATCH --gpus-per-node=4", "-c 32",
                    "podman-hpc run"]),
])
def test_profiles_render_shows_each_sites_key_directives(site: str,
                                                         directives: list[str]) -> None:
    from dlhub_hpc.pilot.render import render_block

    block = render_block(load_profile(site), "alice/oqmd@3", "tcp://0.0.0.0:47651")
    text = block.script + block.submit_command
    for directive in directives:
        assert directive in text, f"{site}: {directive!r} not in the rendered block"
    assert "--cpu-bind none" not in text


def test_every_site_profile_sets_a_scheduler_command_timeout() -> None:
    for site in ("polaris", "aurora", "frontier", "perlmutter", "slurm", "pbs"):
        timeout = load_profile(site).provider.options().get("cmd_timeout")
        assert timeout is not None and timeout >= 60, site


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
