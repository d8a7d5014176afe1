"""Binding a worker to its GPU(s) from its local rank on the node.

A pilot starts one worker per task; the launcher (srun, mpiexec, aprun-like PALS) tells
each task its local rank through the environment. The worker turns that into the device
list of one vendor variable (``CUDA_VISIBLE_DEVICES``, ``ROCR_VISIBLE_DEVICES``,
``HIP_VISIBLE_DEVICES`` or ``ZE_AFFINITY_MASK``) and sets it in its own environment before
the model is imported, so the framework only ever sees its own device.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dlhub_hpc.errors import ConfigError

logger = logging.getLogger(__name__)

GpuEnv = Literal[
    "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK", "HIP_VISIBLE_DEVICES"
]
GPU_ENVS: tuple[str, ...] = GpuEnv.__args__  # type: ignore[attr-defined]

# Where launchers put the task's rank on its node: Open MPI, MPICH/Hydra, Cray PALS, Intel
# MPI, Slurm. Slurm's comes last: an mpiexec inside a batch job inherits the batch step's
# SLURM_LOCALID=0 in every rank, while the MPI launcher's own variable is right.
LOCAL_RANK_ENVS = (
    "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_LOCAL_RANK", "PALS_LOCAL_RANKID", "MPI_LOCALRANKID",
    "SLURM_LOCALID",
)


def local_rank_from_env(environ: Mapping[str, str] | None = None) -> tuple[int, str] | None:
    """The local rank the launcher set, with the variable it came from; None if none did."""
    env = os.environ if environ is None else environ
    for name in LOCAL_RANK_ENVS:
        value = env.get(name, "").strip()
        if value:
            if not value.isdigit():
                raise ConfigError(f"{name}={value!r} is not a local rank (a number)", env=name)
            return int(value), name
    return None


class GpuBinding(BaseModel):
    """Which GPUs a node offers its workers, and how many workers share each one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpus: list[str] = Field(min_length=1, description="device ids on the node, e.g. 0,1,2,3")
    env: GpuEnv = "CUDA_VISIBLE_DEVICES"
    workers_per_gpu: int = Field(default=1, ge=1, le=256)
    local_rank: int | None = Field(default=None, ge=0, description="None: from the launcher")

    @field_validator("gpus")
    @classmethod
    def _device_ids(cls, gpus: list[str]) -> list[str]:
        for gpu in gpus:
            # Plain ids, or card.tile for Intel (ZE_AFFINITY_MASK=0.1).
            if not gpu or not all(part.isdigit() for part in gpu.split(".")):
                raise ValueError(f"GPU id {gpu!r} should be a number like 0, or card.tile like 0.1")
        if len(set(gpus)) != len(gpus):
            raise ValueError(f"GPU ids {gpus} repeat an id")
        return gpus

    @classmethod
    def from_flags(
        cls, gpus: str, env: str = "CUDA_VISIBLE_DEVICES", workers_per_gpu: int = 1,
        local_rank: int | None = None,
    ) -> GpuBinding:
        """From the worker's ``--gpus 0,1 --gpu-env NAME --workers-per-gpu K [--local-rank R]``."""
        try:
            return cls(gpus=[g.strip() for g in gpus.split(",")], env=env,  # type: ignore[arg-type]
                       workers_per_gpu=workers_per_gpu, local_rank=local_rank)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'binding'}: {e['msg']}"
                for e in exc.errors()
            )
            raise ConfigError(
                f"invalid GPU binding ({problems}); use e.g. --gpus 0,1,2,3 "
                f"--gpu-env {'|'.join(GPU_ENVS)} --workers-per-gpu 1",
            ) from None

    def __repr__(self) -> str:
        return (f"GpuBinding(gpus={self.gpus!r}, env={self.env!r}, "
                f"workers_per_gpu={self.workers_per_gpu}, local_rank={self.local_rank!r})")

    def rank(self, environ: Mapping[str, str] | None = None) -> int:
        """This worker's local rank: the explicit one, else the launcher's, else 0."""
        if self.local_rank is not None:
            return self.local_rank
        found = local_rank_from_env(environ)
        if found is None:
            logger.info("no launcher set a local rank (%s); using 0", ", ".join(LOCAL_RANK_ENVS))
            return 0
        return found[0]

    def devices(self, local_rank: int) -> list[str]:
        """The device(s) of the worker at ``local_rank``: K consecutive ranks share one GPU."""
        index = local_rank // self.workers_per_gpu
        if index >= len(self.gpus):
            served = len(self.gpus) * self.workers_per_gpu
            raise ConfigError(
                f"local rank {local_rank} has no GPU: {len(self.gpus)} GPUs "
                f"({','.join(self.gpus)}) x {self.workers_per_gpu} workers per GPU serve local "
                f"ranks 0-{served - 1}; list more GPUs, raise --workers-per-gpu, or start "
                "fewer workers per node",
                local_rank=local_rank, gpus=self.gpus, workers_per_gpu=self.workers_per_gpu,
            )
        return [self.gpus[index]]

    def apply(self, environ: MutableMapping[str, str] | None = None) -> dict[str, Any]:
        """Set the variable in this process's environment; returns the record for the hub."""
        env = os.environ if environ is None else environ
        rank = self.rank(env)
        value = ",".join(self.devices(rank))
        env[self.env] = value
        logger.info("bound to %s=%s (local rank %d)", self.env, value, rank)
        return {"env": self.env, "devices": value, "local_rank": rank}
