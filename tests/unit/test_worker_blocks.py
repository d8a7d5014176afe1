"""``workers start`` as fixed pilots: one block of N workers, never scaled, apart from
``pilot status``/``pilot stop``, and recorded as no pilot's for a restarted hub."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
from parsl.jobs.states import JobState, JobStatus

from dlhub_hpc.errors import PilotError
from dlhub_hpc.pilot.pilots import PilotBlock
from dlhub_hpc.pilot.recovery import Journal
from dlhub_hpc.pilot.service import PilotService, WorkersSetup
from dlhub_hpc.registry.pilots import PilotRecords
from dlhub_hpc.registry.store import Registry
from tests.unit.test_pilot_edges import _FakeProvider

HUB = "tcp://127.0.0.1:5000"


class _Recording(_FakeProvider):
    """Records each command and its task count; every job reports ``state``."""

    state = JobState.RUNNING

    def __init__(self) -> None:
        super().__init__()
        self.commands: list[tuple[str, int]] = []

    def submit(self, command: str, tasks_per_node: int, job_name: str = "") -> str:
        self.commands.append((command, tasks_per_node))
        return super().submit(command, tasks_per_node, job_name)

    def status(self, job_ids: list[str]) -> list[object]:
        return [JobStatus(self.state) for _ in job_ids]


@pytest.fixture
def provider() -> _Recording:
    return _Recording()


@pytest.fixture
def service(provider: _Recording, tmp_path: Path) -> PilotService:
    return PilotService(dict, period=60, workers=WorkersSetup(
        provider, HUB, tmp_path, heartbeat_interval=1.0, hub_timeout=30.0))  # type: ignore[arg-type]


def test_a_block_of_n_workers_runs_the_bare_worker_command(
        service: PilotService, provider: _Recording) -> None:
    block = service.start_workers("demo/add", 3)
    assert (block.block_id, block.workers, block.job_id) == ("block-1", 3, "job1")
    [(command, tasks)] = provider.commands
    assert tasks == 3, "one submit: the launcher starts the three workers"
    assert shlex.split(command) == [
        sys.executable, "-m", "dlhub_hpc.worker", "--hub", HUB, "--servable", "demo/add",
        "--block", "block-1", "--heartbeat-interval", "1.0", "--hub-timeout", "30.0"]
    assert service.start_workers("demo/add", 1).block_id == "block-2"
    with pytest.raises(PilotError, match="at least one worker, not 0"):
        service.start_workers("demo/add", 0)
    assert service.start_workers("demo/add", 1).block_id == "block-3", "no id spent on it"


def test_fixed_blocks_are_not_pilots_and_are_never_scaled(
        service: PilotService, provider: _Recording) -> None:
    service.start_workers("demo/add@1", 1)
    assert service.all() == [] and service._thread is None
    assert not service.replaces(("demo/add", 1)), "a lost worker is not replaced"
    with pytest.raises(PilotError, match="no pilot 'block-1'"):
        service.get("block-1")
    assert service.stop() == [], "'pilot stop' leaves 'workers start' blocks alone"
    provider.state = JobState.FAILED  # its job died: nothing is resubmitted
    service.tick_all()
    assert [b.state for b in service.worker_blocks()] == ["FAILED"]
    assert len(provider.commands) == 1


def test_stop_by_servable_or_id_and_unknown_ids(
        service: PilotService, provider: _Recording) -> None:
    service.start_workers("demo/add", 1)
    service.start_workers("demo/other", 2)
    with pytest.raises(PilotError, match=r"no such blocks: \['block-9'\]"):
        service.stop_workers(["block-1", "block-9"])
    assert [b.block_id for b in service.worker_blocks()] == ["block-1", "block-2"]
    stopped = service.stop_workers(servable="demo/other")
    assert [(b.block_id, b.state) for b in stopped] == [("block-2", "CANCELLED")]
    assert provider.cancelled == ["job2"]
    assert [b.block_id for b in service.stop_workers()] == ["block-1"]
    assert service.worker_blocks() == []


def test_blocks_are_recorded_as_no_pilots_and_adopted_after_a_restart(
        provider: _Recording, tmp_path: Path) -> None:
    registry = Registry(tmp_path / "reg")
    try:
        records = PilotRecords(registry)
        first = PilotService(dict, workers=WorkersSetup(provider, HUB, tmp_path))  # type: ignore[arg-type]
        first.journal = Journal(records)
        first.start_workers("demo/add", 2)
        first.start_workers("demo/add", 1)
        first.stop_workers(["block-1"])
        assert records.pilots() == []
        [rec] = records.blocks("")
        assert (rec.block_id, rec.workers, rec.provider) == ("block-2", 1, "_Recording")

        again = PilotService(dict, workers=WorkersSetup(provider, HUB, tmp_path))  # type: ignore[arg-type]
        again.journal = Journal(records)
        again.adopt_workers(PilotBlock(rec.block_id, rec.job_id, rec.servable, rec.workers,
                                       rec.submitted_at, state="RUNNING"))
        assert again.start_workers("demo/add", 1).block_id == "block-3"
        assert [b.block_id for b in again.stop_workers(servable="demo/add")] == [
            "block-2", "block-3"]
        assert records.blocks() == []
    finally:
        registry.close()


def test_an_mpi_servable_is_refused_rather_than_run_on_one_rank(
        service: PilotService, provider: _Recording) -> None:
    with pytest.raises(PilotError, match=r"declares ranks: 2.*pilot start demo/ens"):
        service.start_workers("demo/ens", 1, ranks=2)
    assert provider.commands == [], "nothing was submitted"


def test_a_worker_alone_refuses_a_servable_of_two_ranks(tmp_path: Path) -> None:
    from dlhub_hpc.errors import ServableLoadError
    from dlhub_hpc.protocol import Assign
    from dlhub_hpc.worker.runner import LocalRunner

    spec = {"datacite": {"title": "t"}, "dlhub": {"owner": "demo", "name": "ens"},
            "servable": {"type": "python_function", "ranks": 2, "ensemble": "mean",
                         "methods": {"run": {"input": {"type": "any"}, "function": "m:f"}}}}
    with pytest.raises(ServableLoadError, match=r"declares ranks: 2 but this worker runs on 1"):
        LocalRunner(tmp_path).load(Assign("demo/ens", 1, "d" * 64, spec, b""))
