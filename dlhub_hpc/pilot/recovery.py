"""A restarted hub takes back the jobs its crashed predecessor left running.

Every block a hub submits is written to the registry (:class:`Journal`, on
``dlhub_hpc.registry.pilots``); its row goes when the block is cancelled or ends. On start,
the hub asks each recorded job's provider for its state, after giving the provider back
what it kept about the job (``provider.resources[job_id]``: for ``LocalProvider`` the
process id and script path, for batch providers the job id alone): a job still queued or
running is adopted; one that cannot be (its profile no longer parses, the provider cannot
be rebuilt) is cancelled, so that nothing runs on until its walltime.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

from parsl.jobs.states import JobState, JobStatus
from parsl.providers.base import ExecutionProvider

from dlhub_hpc.pilot import pilots as pilots_module
from dlhub_hpc.registry.pilots import BlockRecord, PilotRecord, PilotRecords

logger = logging.getLogger(__name__)

LIVE = ("PENDING", "RUNNING", "HELD", "UNKNOWN")


def job_resources(provider: ExecutionProvider, job_id: str) -> dict[str, Any]:
    """What ``provider`` keeps about ``job_id`` that a new provider needs to follow it."""
    kept = getattr(provider, "resources", {}).get(job_id) or {}
    return {k: v for k, v in kept.items() if isinstance(v, (str, int, float, bool))}


def adopt_job(provider: ExecutionProvider, rec: BlockRecord) -> str:
    """Give ``provider`` back its record of ``rec``'s job and read its state now."""
    resources = getattr(provider, "resources", None)
    if resources is None:
        return "UNKNOWN"
    resources[rec.job_id] = {**rec.resources, "job_id": rec.job_id,
                             "status": JobStatus(JobState.PENDING)}
    if "remote_pid" in rec.resources:  # LocalProvider: the pid is its job
        resources[rec.job_id]["remote_pid"] = int(rec.resources["remote_pid"])
    try:
        [status] = provider.status([rec.job_id])
    except Exception:
        logger.warning("cannot read the state of job %s of %s", rec.job_id, rec.block_id,
                       exc_info=True)
        return "UNKNOWN"
    return str(status.state.name)


def cancel_job(provider: ExecutionProvider, rec: BlockRecord) -> None:
    """Cancel ``rec``'s job (adopted into ``provider`` first), logging what fails."""
    try:
        if adopt_job(provider, rec) in LIVE:
            provider.cancel([rec.job_id])
            logger.warning("cancelled job %s (%s of %s): it could not be adopted",
                           rec.job_id, rec.block_id, rec.servable)
    except Exception:
        logger.exception("could not cancel job %s (%s); cancel it by hand (scancel %s / "
                         "qdel %s)", rec.job_id, rec.block_id, rec.job_id, rec.job_id)


def skip_ids(counter: itertools.count[int], used: list[str]) -> None:
    """Advance ``counter`` past the numbers ending the ids in ``used`` (block-3, pilot-2.b7)."""
    numbers = [int(n) for u in used if (n := u.rsplit("-", 1)[-1].rsplit("b", 1)[-1]).isdigit()]
    top = max(numbers, default=0)
    while top and next(counter) < top:
        pass


def skip_pilot_ids(used: list[str]) -> None:
    """New pilots of this process must not take the id of an adopted one."""
    skip_ids(pilots_module._pilot_ids, used)


class Journal:
    """Writes blocks and pilots to the registry as they start and end; never raises."""

    def __init__(self, records: PilotRecords) -> None:
        self.records = records

    def __repr__(self) -> str:
        return f"Journal({self.records!r})"

    def block_started(self, provider: ExecutionProvider, pilot_id: str, block_id: str,
                      servable: str, job_id: str, workers: int) -> None:
        rec = BlockRecord(block_id, pilot_id, servable, job_id, type(provider).__name__,
                          workers, time.time(), job_resources(provider, job_id))
        self._write(self.records.add_block, rec)

    def blocks_ended(self, block_ids: list[str]) -> None:
        if block_ids:
            self._write(self.records.remove_blocks, block_ids)

    def pilot_started(self, pilot_id: str, servable: str, profile: dict[str, Any],
                      nodes: int | None) -> None:
        self._write(self.records.add_pilot,
                    PilotRecord(pilot_id, servable, profile, nodes, time.time()))

    def pilot_ended(self, pilot_id: str) -> None:
        self._write(self.records.remove_pilot, pilot_id)

    @staticmethod
    def _write(write: Any, arg: Any) -> None:
        try:
            write(arg)
        except Exception:  # a record lost is a job a crash may orphan; the block still runs
            logger.exception("could not record %s in the registry", arg)
