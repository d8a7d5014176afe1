"""Container runtimes build the exact command lines each site's tool expects."""

from __future__ import annotations

import pytest

from dlhub_hpc.container.runtimes import (
    IMAGE_PATH,
    RUNTIMES,
    ContainerRuntime,
    get_runtime,
)
from dlhub_hpc.errors import ConfigError, RuntimeNotFound

ARGV = ["python3", "-m", "dlhub_hpc.worker", "--hub", "tcp://10.0.0.1:5001", "--servable", "a/b"]


def test_apptainer_command_is_exact() -> None:
    cmd = get_runtime("apptainer").command(
        "/images/b.sif", ARGV, env={"OMP_NUM_THREADS": "4"},
        binds=["/scratch/data:/data:ro", "/lus/run"], gpu="nvidia",
    )
    assert cmd == [
        "apptainer", "exec", "--cleanenv", "--contain", "--no-home", "--nv",
        "--bind", "/scratch/data:/data:ro", "--bind", "/lus/run:/lus/run",
        "--env", "OMP_NUM_THREADS=4", "/images/b.sif", *ARGV,
    ]


def test_singularity_uses_rocm_for_amd_and_its_own_executable() -> None:
    cmd = get_runtime("singularity").command("/i.sif", ["true"], gpu="amd")
    assert cmd == ["singularity", "exec", "--cleanenv", "--contain", "--no-home", "--rocm",
                   "/i.sif", "true"]


@pytest.mark.parametrize("name", ["apptainer", "singularity"])
def test_apptainer_binds_dev_dri_for_intel_gpus(name: str) -> None:
    # --contain leaves a minimal /dev: without the bind, Aurora's GPUs are not there.
    cmd = get_runtime(name).command("/i.sif", ["true"], gpu="intel")
    assert cmd == [name, "exec", "--cleanenv", "--contain", "--no-home",
                   "--bind", "/dev/dri", "/i.sif", "true"]


def test_apptainer_refuses_env_values_it_would_split() -> None:
    with pytest.raises(ConfigError, match="comma"):
        get_runtime("apptainer").command("/i.sif", ["true"], env={"X": "a,b"})


def test_charliecloud_command_is_exact() -> None:
    rt = get_runtime("charliecloud")
    cmd = rt.command("/img/b.sqfs", ARGV, env={"A": "1"}, binds=["/scratch:/mnt"])
    assert cmd == [
        "ch-run", "--private-tmp", "--unset-env=*", "--env-no-expand",
        f"--set-env=PATH={IMAGE_PATH}",
        "--bind=/scratch:/mnt",
        "--set-env=A=1", "/img/b.sqfs", "--", *ARGV,
    ]
    assert rt.setup_commands("/img/b", gpu="nvidia") == [["ch-fromhost", "--nvidia", "/img/b"]]
    with pytest.raises(ConfigError, match="read-write only"):
        rt.command("/img", ["true"], binds=["/a:/b:ro"])


def test_podman_hpc_command_is_exact() -> None:
    cmd = get_runtime("podman-hpc").command(
        "registry.nersc.gov/me/b:1", ["true"], env={"A": "1"}, binds=["/pscratch:/data:ro"],
        gpu="nvidia",
    )
    assert cmd == [
        "podman-hpc", "run", "--rm", "--net", "host", "--gpu",
        "-v", "/pscratch:/data:ro", "-e", "A=1", "registry.nersc.gov/me/b:1", "true",
    ]
    amd = get_runtime("podman-hpc").command("img", ["true"], gpu="amd")
    assert amd[5:9] == ["--device", "/dev/kfd", "--device", "/dev/dri"]
    intel = get_runtime("podman-hpc").command("img", ["true"], gpu="intel")
    assert intel == ["podman-hpc", "run", "--rm", "--net", "host", "--device", "/dev/dri",
                     "img", "true"]


def test_bubblewrap_command_is_exact() -> None:
    cmd = get_runtime("bwrap").command("/root", ["python3"], env={"A": "1"}, binds=["/d:/tmp/d"])
    assert cmd == [
        "bwrap", "--ro-bind", "/root", "/", "--proc", "/proc", "--dev", "/dev",
        "--tmpfs", "/tmp", "--unshare-all", "--share-net", "--die-with-parent",
        "--bind", "/d", "/tmp/d",
        "--clearenv", "--setenv", "PATH", IMAGE_PATH, "--setenv", "HOME", "/tmp",
        "--setenv", "A", "1", "--", "python3",
    ]
    gpu = get_runtime("bubblewrap").command("/root", ["x"], gpu="nvidia")
    assert gpu[6:9] == ["--dev-bind", "/dev", "/dev"]
    assert "--dev" not in gpu
    intel = get_runtime("bubblewrap").command("/root", ["x"], gpu="intel")
    assert intel[6:9] == ["--dev-bind", "/dev", "/dev"]


def test_charliecloud_shares_the_host_dev_for_intel_gpus() -> None:
    rt = get_runtime("charliecloud")
    # ch-run keeps the host's /dev: the command is the same with or without the GPU.
    assert rt.command("/img", ["x"], gpu="intel") == rt.command("/img", ["x"])
    assert rt.setup_commands("/img", gpu="intel") == []


def test_none_runs_argv_as_is() -> None:
    rt = get_runtime("none")
    assert rt.available()
    assert rt.command("", ARGV) == ARGV
    assert rt.command("", ["x"], env={"A": "1"}) == ["env", "A=1", "x"]


def test_unknown_runtime_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        get_runtime("docker")
    for name in RUNTIMES:
        assert name in str(err.value)


def test_unknown_gpu_kind_and_bad_bind_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="gpu='habana'"):
        get_runtime("apptainer").command("/i.sif", ["x"], gpu="habana")
    with pytest.raises(ConfigError, match="SRC"):
        get_runtime("apptainer").command("/i.sif", ["x"], binds=["/a:/b:rx"])


@pytest.mark.parametrize("name", sorted(set(RUNTIMES) - {"none"}))
def test_a_missing_runtime_names_what_to_install(name: str) -> None:
    rt = get_runtime(name, executable="/nonexistent/bin/tool")
    assert not rt.available()
    with pytest.raises(RuntimeNotFound) as err:
        rt.require()
    message = str(err.value)
    assert "/nonexistent/bin/tool" in message
    assert any(word in message for word in ("apt-get", "module load", "spack"))


def test_repr_reads_like_the_call() -> None:
    assert repr(get_runtime("apptainer")) == "ApptainerRuntime()"
    assert repr(get_runtime("singularity", "/opt/s/bin/singularity")) == (
        "SingularityRuntime(executable='/opt/s/bin/singularity')"
    )
    assert all(issubclass(cls, ContainerRuntime) for cls in RUNTIMES.values())
