"""GPU binding from a worker's local rank: which device each worker of a node gets."""

from __future__ import annotations

import pytest

from dlhub_hpc.errors import ConfigError
from dlhub_hpc.worker.gpu import GpuBinding, local_rank_from_env


def test_one_worker_per_gpu_follows_the_local_rank() -> None:
    binding = GpuBinding.from_flags("0,1,2,3")
    assert [binding.devices(r) for r in range(4)] == [["0"], ["1"], ["2"], ["3"]]


def test_several_workers_share_a_gpu_in_consecutive_ranks() -> None:
    binding = GpuBinding.from_flags("0,1", "ROCR_VISIBLE_DEVICES", workers_per_gpu=2)
    assert [binding.devices(r)[0] for r in range(4)] == ["0", "0", "1", "1"]


def test_a_rank_beyond_the_gpus_says_how_to_fix_it() -> None:
    binding = GpuBinding.from_flags("0,1", workers_per_gpu=2)
    with pytest.raises(ConfigError, match=r"local rank 4 has no GPU.*ranks 0-3.*workers-per-gpu"):
        binding.devices(4)


@pytest.mark.parametrize(("env", "expected"), [
    ({"SLURM_LOCALID": "2"}, (2, "SLURM_LOCALID")),
    ({"OMPI_COMM_WORLD_LOCAL_RANK": "1"}, (1, "OMPI_COMM_WORLD_LOCAL_RANK")),
    ({"PMI_LOCAL_RANK": "3"}, (3, "PMI_LOCAL_RANK")),
    ({"PALS_LOCAL_RANKID": "5"}, (5, "PALS_LOCAL_RANKID")),
    # mpiexec inside a batch job: every rank inherits SLURM_LOCALID=0; the launcher's wins
    ({"SLURM_LOCALID": "0", "PALS_LOCAL_RANKID": "5"}, (5, "PALS_LOCAL_RANKID")),
    ({}, None),
])
def test_local_rank_comes_from_the_launcher(env: dict[str, str], expected: object) -> None:
    assert local_rank_from_env(env) == expected


def test_a_garbled_local_rank_is_refused() -> None:
    with pytest.raises(ConfigError, match="SLURM_LOCALID='x' is not a local rank"):
        local_rank_from_env({"SLURM_LOCALID": "x"})


def test_apply_sets_the_variable_and_returns_the_record() -> None:
    env = {"PALS_LOCAL_RANKID": "3"}
    binding = GpuBinding.from_flags("0.0,0.1,1.0,1.1", "ZE_AFFINITY_MASK")
    record = binding.apply(env)
    assert env["ZE_AFFINITY_MASK"] == "1.1"
    assert record == {"env": "ZE_AFFINITY_MASK", "devices": "1.1", "local_rank": 3}


def test_an_explicit_local_rank_wins_over_the_launcher() -> None:
    env = {"SLURM_LOCALID": "0"}
    GpuBinding.from_flags("0,1", "HIP_VISIBLE_DEVICES", local_rank=1).apply(env)
    assert env["HIP_VISIBLE_DEVICES"] == "1"


def test_no_launcher_rank_means_rank_zero() -> None:
    env: dict[str, str] = {}
    GpuBinding.from_flags("3,4").apply(env)
    assert env["CUDA_VISIBLE_DEVICES"] == "3"


@pytest.mark.parametrize(("gpus", "env", "k", "message"), [
    ("", "CUDA_VISIBLE_DEVICES", 1, "GPU id '' should be a number"),
    ("0,gpu1", "CUDA_VISIBLE_DEVICES", 1, "GPU id 'gpu1'"),
    ("0,0", "CUDA_VISIBLE_DEVICES", 1, "repeat an id"),
    ("0", "NVIDIA_VISIBLE", 1, "env: Input should be"),
    ("0", "CUDA_VISIBLE_DEVICES", 0, "workers_per_gpu: Input should be greater than"),
])
def test_bad_flags_get_a_typed_error_with_an_example(gpus: str, env: str, k: int,
                                                      message: str) -> None:
    with pytest.raises(ConfigError, match="--gpus 0,1,2,3") as info:
        GpuBinding.from_flags(gpus, env, k)
    assert message in info.value.message


def test_repr_reads_like_the_call() -> None:
    binding = GpuBinding.from_flags("0,1", workers_per_gpu=2)
    assert repr(binding) == ("GpuBinding(gpus=['0', '1'], env='CUDA_VISIBLE_DEVICES', "
                             "workers_per_gpu=2, local_rank=None)")
