"""A worker skips a batch the hub took back (``Recall``) before it ran, against a hub
played by the test on a real ROUTER socket; whatever else came meanwhile keeps its order."""

from __future__ import annotations

import pytest

from dlhub_hpc.protocol import Batch, BatchResult, Recall
from dlhub_hpc.worker import Worker, WorkerOptions

from .test_worker_drain import FakeHub, GatedRunner, ManualClock, ready_worker
from .test_worker_drain import fake_hub as fake_hub


@pytest.fixture
def held(fake_hub: FakeHub) -> tuple[bytes, GatedRunner]:
    """A worker running batch 1, held until the test releases it."""
    opts = WorkerOptions(hub=fake_hub.address, servable="demo/add", heartbeat_interval=0.1,
                         hub_timeout=600.0)
    runner = GatedRunner(hold=True)
    identity, _ = ready_worker(fake_hub, Worker(opts, runner, clock=ManualClock()))
    fake_hub.send(identity, Batch(1, "run", [1]))
    assert runner.started.wait(30)
    return identity, runner


def test_a_batch_taken_back_before_it_ran_is_skipped(
        fake_hub: FakeHub, held: tuple[bytes, GatedRunner]) -> None:
    identity, runner = held
    fake_hub.send(identity, Batch(2, "run", [2, 3]))  # sent ahead
    fake_hub.send(identity, Recall(2))  # batch 1 ran too long: taken back
    fake_hub.send(identity, Batch(3, "run", [4]))  # what the hub sent once 1 was done
    runner.release.set()
    _, first = fake_hub.expect(BatchResult)
    _, then = fake_hub.expect(BatchResult)  # 2 never ran: its callers' answers come elsewhere
    assert (first.batch_id, first.results) == (1, [[True, 2]])
    assert (then.batch_id, then.results) == (3, [[True, 8]])


def test_a_recall_of_another_batch_or_of_one_already_run_changes_nothing(
        fake_hub: FakeHub, held: tuple[bytes, GatedRunner]) -> None:
    identity, runner = held
    fake_hub.send(identity, Batch(2, "run", [2]))
    fake_hub.send(identity, Recall(1))  # batch 1 runs already: it finishes and answers
    runner.release.set()
    ids = [fake_hub.expect(BatchResult)[1].batch_id for _ in range(2)]
    assert ids == [1, 2]
    fake_hub.send(identity, Recall(2))  # too late: it ran
    fake_hub.send(identity, Batch(3, "run", [5]))
    _, last = fake_hub.expect(BatchResult)
    assert (last.batch_id, last.results) == (3, [[True, 10]])


def test_a_recall_read_while_looking_past_an_earlier_batch_is_kept_for_its_own(
        fake_hub: FakeHub, held: tuple[bytes, GatedRunner]) -> None:
    identity, runner = held  # batch 1 runs; 2 and 3 queue behind it, and 3 is taken back
    fake_hub.send(identity, Batch(2, "run", [2]))
    fake_hub.send(identity, Batch(3, "run", [3]))
    fake_hub.send(identity, Recall(3))
    runner.release.set()  # before 2 runs, the worker reads 3 and its Recall together
    ids = [fake_hub.expect(BatchResult)[1].batch_id for _ in range(2)]
    fake_hub.send(identity, Batch(4, "run", [4]))
    ids.append(fake_hub.expect(BatchResult)[1].batch_id)
    assert ids == [1, 2, 4]
