"""The warm worker process that serves one servable."""

from dlhub_hpc.worker.loop import Worker, WorkerOptions

__all__ = ["Worker", "WorkerOptions"]
