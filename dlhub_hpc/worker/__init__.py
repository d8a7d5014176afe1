"""The warm worker process that serves one servable (on one process, or over MPI ranks)."""

from dlhub_hpc.worker.gpu import GpuBinding
from dlhub_hpc.worker.loop import Worker, WorkerOptions
from dlhub_hpc.worker.runner import LocalRunner, Runner

__all__ = ["GpuBinding", "LocalRunner", "Runner", "Worker", "WorkerOptions"]
