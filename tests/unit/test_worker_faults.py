"""Worker faults: a worker survives one bad batch, MPI ranks never hang on a
failing share, a draining worker does not spin, and unusual models fail or load cleanly."""

from __future__ import annotations

import pickle
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlhub_hpc.errors import ConfigError, ServableLoadError
from dlhub_hpc.protocol import Assign, Batch, BatchResult, Bye, Drain, Hello, Ready
from dlhub_hpc.servable.shims import Shim
from dlhub_hpc.servable.spec import ServableSpec
from dlhub_hpc.worker import Worker, WorkerOptions
from dlhub_hpc.worker import mpi as worker_mpi
from dlhub_hpc.worker import runner as worker_runner
from dlhub_hpc.worker.mpi import CMD, RESULT, MpiRunner, follow
from dlhub_hpc.worker.runner import Runner, WireResult, load_assigned
from tests.unit.test_worker_drain import SPEC, FakeHub, GatedRunner, ManualClock


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    hub = FakeHub()
    yield hub
    hub.close()


class BrokenRunner(Runner):
    def load(self, assign: Assign) -> ServableSpec:
        return SPEC

    def run(self, method: str, payloads: list[Any],
            parameters: list[Any] | None = None) -> list[WireResult]:
        raise RuntimeError("the runner itself broke")


def test_a_runner_that_raises_fails_that_batch_not_the_worker(fake_hub: FakeHub) -> None:
    opts = WorkerOptions(hub=fake_hub.address, servable="demo/add", heartbeat_interval=0.1)
    worker = Worker(opts, BrokenRunner())
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    identity, _ = fake_hub.expect(Hello)
    fake_hub.send(identity, Assign("demo/add", 1, "d" * 64, {}, b""))
    fake_hub.expect(Ready)
    fake_hub.send(identity, Batch(1, "run", [1, 2]))
    _, result = fake_hub.expect(BatchResult)
    assert [r[0] for r in result.results] == [False, False]
    assert result.results[0][1]["type"] == "ExecutionError"
    assert "the runner itself broke" in result.results[0][1]["message"]
    assert thread.is_alive(), "one bad batch must not kill the worker"
    worker.request_stop("test over")
    fake_hub.expect(Bye)
    thread.join(5)


class CountingWorker(Worker):
    checks = 0

    def _check_drain(self, sock: Any) -> None:
        self.checks += 1
        super()._check_drain(sock)


def test_a_worker_waiting_to_be_released_does_not_spin(fake_hub: FakeHub) -> None:
    clock = ManualClock()
    opts = WorkerOptions(hub=fake_hub.address, servable="demo/add", heartbeat_interval=0.1,
                         drain_after=60.0, drain_grace=30.0, hub_timeout=600.0)
    worker = CountingWorker(opts, GatedRunner(), clock=clock)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    fake_hub.expect(Hello)
    clock.advance(60.0)
    fake_hub.expect(Drain)
    before = worker.checks
    fake_hub.heartbeats(10)  # the heartbeat thread's pace: one per heartbeat_interval
    turns = worker.checks - before
    # The loop polls for one heartbeat interval per turn, ~10 turns; a busy loop makes
    # thousands.
    assert turns < 100, f"{turns} loop turns while 10 heartbeats went out"
    clock.advance(31.0)
    _, bye = fake_hub.expect(Bye)  # the hub stays silent: released by the grace
    assert "did not release it in 30.0s" in bye.reason
    thread.join(30)
    assert not thread.is_alive()


# -- MPI, on a fake communicator: rank 0 with helpers that answer at once --


class OneShim(Shim):
    """Doubles each input; raises (as a shim's bug would) when ``explode`` is set."""

    def __init__(self, explode: bool = False, output: Any = None) -> None:
        self.explode, self.output = explode, output

    @classmethod
    def load(cls, spec: ServableSpec, root: Path) -> Shim:
        raise NotImplementedError

    def run(self, method: str, inputs: list[Any],
            parameters: dict[str, Any] | None = None) -> list[Any]:
        if self.explode:
            raise KeyError(method)
        return [2 * x if self.output is None else self.output for x in inputs]


class RankZeroComm:
    """Ranks 1.. run their share with a good shim as soon as rank 0 sends it."""

    def __init__(self, ranks: int) -> None:
        self.ranks = ranks
        self.inbox: dict[int, deque[Any]] = {r: deque() for r in range(ranks)}

    def Get_size(self) -> int:
        return self.ranks

    def send(self, obj: Any, dest: int, tag: int) -> None:
        assert tag == CMD and obj[0] == "run"
        self.inbox[dest].append(worker_mpi._run_share(OneShim(), obj[1], obj[2], dest))

    def iprobe(self, source: int, tag: int) -> bool:
        return bool(self.inbox[source])

    def recv(self, source: int, tag: int) -> Any:
        return self.inbox[source].popleft()


def test_rank_zero_failing_its_share_fails_those_items_and_reads_the_helpers() -> None:
    comm = RankZeroComm(3)
    runner = MpiRunner(comm, Path("."))
    runner.shim = OneShim(explode=True)
    out = runner.run("run", [1, 2, 3, 4, 5, 6])
    assert [r[0] for r in out] == [False, False, True, True, True, True]
    assert [r[1] for r in out[2:]] == [6, 8, 10, 12]
    assert not any(comm.inbox.values()), "a helper's result left unread answers the next batch"


class FollowerComm:
    """Rank 1: receives the commands given, and sends as mpi4py does (pickling first)."""

    def __init__(self, commands: list[Any]) -> None:
        self.commands = deque(commands)
        self.sent: list[Any] = []

    def Get_rank(self) -> int:
        return 1

    def iprobe(self, source: int, tag: int) -> bool:
        return bool(self.commands)

    def recv(self, source: int, tag: int) -> Any:
        return self.commands.popleft()

    def send(self, obj: Any, dest: int, tag: int) -> None:
        assert tag == RESULT
        self.sent.append(pickle.loads(pickle.dumps(obj)))


def test_a_rank_whose_output_cannot_be_pickled_still_answers_rank_zero(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    shim = OneShim(output=threading.Lock())  # a model output pickle cannot carry
    monkeypatch.setattr(worker_mpi, "load_assigned", lambda assign, cache: (SPEC, shim))
    monkeypatch.setattr(worker_mpi.signal, "signal", lambda *a: None)
    comm = FollowerComm([("load", "demo/add", 1, "d" * 64, {}, b""),
                         ("run", "run", [1, 2]), ("stop",)])
    assert follow(comm, Path(".")) == 0
    assert comm.sent[0] is None  # loaded
    assert [r[0] for r in comm.sent[1]] == [False, False]
    assert "cannot send its results" in comm.sent[1][0][1]["message"]


def test_a_framework_error_while_loading_is_a_load_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(spec: ServableSpec, root: Path) -> Shim:
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(worker_runner, "load_servable", broken)
    monkeypatch.setattr(worker_runner, "cached_bundle", lambda *a: Path("."))
    with pytest.raises(ServableLoadError, match="CUDA error: out of memory"):
        load_assigned(Assign("demo/add", 1, "d" * 64, SPEC.model_dump(mode="json"), b""),
                      Path("."))


def test_a_bfloat16_torch_model_loads_and_answers_in_numpy(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from dlhub_hpc.servable.shims import load_servable

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3).to(torch.bfloat16).eval()
    torch.jit.script(net).save(str(tmp_path / "bf16.pt"))
    spec = ServableSpec.from_data({
        "datacite": {"title": "a bf16 model"},
        "dlhub": {"owner": "test", "name": "bf16"},
        "servable": {"type": "torch", "model": "bf16.pt", "methods": {"run": {"input": {
            "type": "ndarray", "shape": [None, 4], "dtype": "float"}}}},
    })
    shim = load_servable(spec, tmp_path)
    x = np.ones((2, 4))
    out = shim.run("run", [x, x])
    assert all(isinstance(o, np.ndarray) and o.shape == (2, 3) for o in out), out
    with torch.inference_mode():
        expected = net(torch.ones(2, 4, dtype=torch.bfloat16)).float().numpy()
    np.testing.assert_allclose(out[0], expected)


class ClosingRunner(GatedRunner):
    closed = False

    def close(self) -> None:
        self.closed = True


def test_a_bad_hub_address_says_what_to_fix_and_releases_the_runner() -> None:
    runner = ClosingRunner()
    worker = Worker(WorkerOptions(hub="localhost:5555", servable="demo/add"), runner)
    with pytest.raises(ConfigError, match="tcp://host:port"):
        worker.run()
    assert runner.closed, "an MPI runner's other ranks would wait for their stop forever"


def test_a_bundle_planted_in_a_world_writable_cache_is_never_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from dlhub_hpc.examples import example_dir
    from dlhub_hpc.servable.bundle import make_bundle
    from dlhub_hpc.worker.runner import cached_bundle

    bundle = make_bundle(example_dir("add"))
    shared = tmp_path / "shared"
    planted = shared / bundle.digest
    planted.mkdir(parents=True)
    (planted / "arith.py").write_text("raise SystemExit('planted by another user')\n")
    shared.chmod(0o777)  # like a cache dir in /tmp that anyone could write into
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    root = cached_bundle(shared, bundle.digest, bundle.data)
    assert root != planted
    assert "planted" not in (root / "arith.py").read_text()
    assert (tmp_path / "tmp" / "dlhub-hpc").stat().st_mode & 0o777 == 0o700
