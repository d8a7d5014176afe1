"""The worker's side of a drain, against a hub played by the test on a real ROUTER socket."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from dlhub_hpc.errors import ConfigError
from dlhub_hpc.examples import example_dir
from dlhub_hpc.protocol import (
    Assign,
    Batch,
    BatchResult,
    Bye,
    Drain,
    Heartbeat,
    Hello,
    Message,
    Ready,
    Shutdown,
    decode,
    encode,
)
from dlhub_hpc.servable.spec import ServableSpec
from dlhub_hpc.worker import Worker, WorkerOptions
from dlhub_hpc.worker.runner import Runner, WireResult

SPEC = ServableSpec.from_file(example_dir("add") / "servable.yaml")


class GatedRunner(Runner):
    """Doubles each payload; a batch holds until ``release`` is set (at once by default).
    ``started`` is set when a batch begins, ``finished`` when one ends."""

    def __init__(self, hold: bool = False) -> None:
        self.started = threading.Event()
        self.finished = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def load(self, assign: Assign) -> ServableSpec:
        return SPEC

    def run(self, method: str, payloads: list[Any],
            parameters: list[Any] | None = None) -> list[WireResult]:
        self.started.set()
        assert self.release.wait(60), "the test never released the batch"
        self.finished.set()
        return [[True, 2 * p] for p in payloads]


class ManualClock:
    """The worker's clock, moved only by the test: deadlines come due when it says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeHub:
    """A ROUTER the worker connects to; ``expect`` skips heartbeats."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"

    def expect(self, kind: type[Message], timeout: float = 30.0,
               heartbeat_socket: bool = False) -> tuple[bytes, Any]:
        """The next ``kind`` from the worker's main socket (or its heartbeat socket)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.poll(100):
                identity, *frames = self.sock.recv_multipart()
                msg = decode(frames)
                if identity.endswith(b"/hb") == heartbeat_socket and not isinstance(
                        msg, Heartbeat):
                    assert isinstance(msg, kind), f"expected {kind.__name__}, got {msg!r}"
                    return identity, msg
        raise AssertionError(f"no {kind.__name__} within {timeout}s")

    def heartbeats(self, count: int, timeout: float = 30.0) -> None:
        """Wait for ``count`` heartbeats; what else arrives meanwhile is dropped."""
        seen = 0
        deadline = time.monotonic() + timeout
        while seen < count:
            assert time.monotonic() < deadline, f"{seen} of {count} heartbeats in {timeout}s"
            if self.sock.poll(100):
                _, *frames = self.sock.recv_multipart()
                seen += isinstance(decode(frames), Heartbeat)

    def send(self, identity: bytes, msg: Message) -> None:
        self.sock.send_multipart([identity, *encode(msg)])

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def fake_hub(keys_dir: Path) -> Iterator[FakeHub]:
    # Keys of their own: a real hub of another test may have recorded a credential for
    # this port in the user's key directory, and the worker would then speak CurveZMQ to
    # this plain socket, which never answers.
    hub = FakeHub()
    yield hub
    hub.close()


def start(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return thread


def ready_worker(hub: FakeHub, worker: Worker) -> tuple[bytes, threading.Thread]:
    thread = start(worker)
    identity, hello = hub.expect(Hello)
    assert hello.ranks == 1 and hello.binding == worker.opts.binding
    hub.send(identity, Assign("demo/add", 1, "d" * 64, {}, b""))
    hub.expect(Ready)
    return identity, thread


def test_drain_after_sends_drain_and_exits_when_released(fake_hub: FakeHub) -> None:
    clock = ManualClock()
    opts = WorkerOptions(hub=fake_hub.address, servable="demo/add", drain_after=60.0,
                         hub_timeout=600.0, heartbeat_interval=0.1,
                         binding={"env": "CUDA_VISIBLE_DEVICES"})
    worker = Worker(opts, GatedRunner(), clock=clock)
    identity, thread = ready_worker(fake_hub, worker)
    fake_hub.send(identity, Batch(1, "run", [1, 2]))
    _, result = fake_hub.expect(BatchResult)
    assert result.results == [[True, 2], [True, 4]]
    assert not worker.draining, "the walltime is not up yet"
    clock.advance(60.0)
    _, drain = fake_hub.expect(Drain)
    assert "drain after 60.0s" in drain.reason
    assert thread.is_alive(), "it waits for the hub to release it"
    fake_hub.send(identity, Shutdown("drained"))
    _, bye = fake_hub.expect(Bye)
    assert bye.reason == "drained"
    thread.join(30)
    assert not thread.is_alive(), "released, it exits without waiting on its clock"


def test_a_drain_mid_batch_is_announced_before_the_result(fake_hub: FakeHub) -> None:
    opts = WorkerOptions(hub=fake_hub.address, servable="demo/add", heartbeat_interval=0.1)
    runner = GatedRunner(hold=True)
    worker = Worker(opts, runner, clock=ManualClock())
    identity, thread = ready_worker(fake_hub, worker)
    fake_hub.send(identity, Batch(7, "run", [5]))
    assert runner.started.wait(30)
    worker.request_drain("signal SIGTERM")  # what the SIGTERM handler does
    runner.release.set()
    fake_hub.expect(Drain)  # first, so the hub holds back the next batch
    _, result = fake_hub.expect(BatchResult)
    assert result.batch_id == 7 and result.results == [[True, 10]]
    fake_hub.send(identity, Shutdown("drained"))
    fake_hub.expect(Bye)
    thread.join(30)
    assert not thread.is_alive()


def test_a_drain_due_mid_batch_is_told_at_once_from_the_heartbeat_socket(
    fake_hub: FakeHub
) -> None:
    clock = ManualClock()
    opts = WorkerOptions(hub=fake_hub.address, servable="demo/add", heartbeat_interval=0.1,
                         drain_after=60.0, hub_timeout=600.0)
    runner = GatedRunner(hold=True)
    worker = Worker(opts, runner, clock=clock)
    identity, thread = ready_worker(fake_hub, worker)
    fake_hub.send(identity, Batch(1, "run", [1]))
    assert runner.started.wait(30)
    clock.advance(60.0)  # the walltime comes up while the batch runs
    hb, drain = fake_hub.expect(Drain, heartbeat_socket=True)
    assert hb == identity + b"/hb" and drain.worker_id == opts.worker_id
    assert not runner.finished.is_set(), "told while the batch still runs"
    runner.release.set()
    fake_hub.expect(Drain)  # and again on the main socket, just before the result
    _, result = fake_hub.expect(BatchResult)
    assert result.results == [[True, 2]]
    fake_hub.send(identity, Shutdown("drained"))
    fake_hub.expect(Bye)
    thread.join(30)
    assert not thread.is_alive()


def test_a_batch_that_crossed_the_drain_is_still_run(fake_hub: FakeHub) -> None:
    opts = WorkerOptions(hub=fake_hub.address, servable="demo/add", heartbeat_interval=0.1)
    worker = Worker(opts, GatedRunner(), clock=ManualClock())
    identity, thread = ready_worker(fake_hub, worker)
    worker.request_drain("walltime")
    fake_hub.expect(Drain)
    fake_hub.send(identity, Batch(3, "run", [1]))  # sent before the hub saw the Drain
    _, result = fake_hub.expect(BatchResult)
    assert result.results == [[True, 2]]
    fake_hub.send(identity, Shutdown("drained"))
    fake_hub.expect(Bye)
    thread.join(30)
    assert not thread.is_alive()


def test_a_silent_hub_releases_a_draining_worker_after_the_grace(fake_hub: FakeHub) -> None:
    clock = ManualClock()
    opts = WorkerOptions(hub=fake_hub.address, servable="demo/add", heartbeat_interval=0.1,
                         drain_after=60.0, drain_grace=30.0, hub_timeout=600.0)
    worker = Worker(opts, GatedRunner(), clock=clock)
    identity, thread = ready_worker(fake_hub, worker)
    clock.advance(60.0)
    fake_hub.expect(Drain)
    clock.advance(29.0)
    fake_hub.send(identity, Batch(2, "run", [1]))  # the grace is checked before its result
    fake_hub.expect(BatchResult)
    assert not worker.exit_reason, "still within the grace"
    clock.advance(2.0)
    _, bye = fake_hub.expect(Bye)
    assert "did not release it in 30.0s" in bye.reason
    thread.join(30)
    assert not thread.is_alive()


def test_a_worker_stops_after_the_hub_is_silent_past_hub_timeout(fake_hub: FakeHub) -> None:
    clock = ManualClock()
    opts = WorkerOptions(hub=fake_hub.address, servable="demo/add", heartbeat_interval=0.1,
                         hub_timeout=30.0)
    worker = Worker(opts, GatedRunner(), clock=clock)
    _, thread = ready_worker(fake_hub, worker)
    clock.advance(31.0)
    _, bye = fake_hub.expect(Bye)
    assert bye.reason == "no word from the hub for 30.0s"
    thread.join(30)
    assert not thread.is_alive()


def test_options_are_validated_and_read_like_the_call() -> None:
    opts = WorkerOptions(hub="tcp://h:1", servable="demo/add", drain_after=60.0)
    assert repr(opts) == "WorkerOptions(hub='tcp://h:1', servable='demo/add', drain_after=60.0)"
    with pytest.raises(ValueError, match="drain_after"):
        WorkerOptions(hub="tcp://h:1", servable="demo/add", drain_after=-1)
    with pytest.raises(ValueError, match="heartbeat_interval"):
        WorkerOptions(hub="tcp://h:1", servable="demo/add", heartbeat_interval=0)


def test_the_command_line_refuses_a_bad_gpu_binding() -> None:
    from dlhub_hpc.worker.__main__ import _parser, _serve

    args = _parser().parse_args(["--hub", "tcp://h:1", "--servable", "demo/add",
                                 "--gpus", "0,1", "--local-rank", "2"])
    with pytest.raises(ConfigError, match="local rank 2 has no GPU"):
        _serve(args)


def test_an_older_workers_hello_without_the_new_fields_still_decodes() -> None:
    import msgpack

    from dlhub_hpc.errors import ProtocolError
    from dlhub_hpc.protocol import PROTOCOL_VERSION, Tag

    old = [PROTOCOL_VERSION, int(Tag.HELLO), "w1", "demo/add", None, "node", 7, "block-1"]
    hello = decode([msgpack.packb(old)])
    assert isinstance(hello, Hello) and hello.ranks == 1 and hello.binding is None
    with pytest.raises(ProtocolError, match="Hello has 9 fields, got 4"):
        decode([msgpack.packb(old[:6])])  # required fields may not be left off
    with pytest.raises(ProtocolError, match=r"Hello\.ranks has type str"):
        decode([msgpack.packb([*old, "two", None])])


def test_a_worker_beats_at_the_pace_the_hub_names(fake_hub: FakeHub) -> None:
    opts = WorkerOptions(hub=fake_hub.address, servable="demo/add", heartbeat_interval=3600.0,
                         hub_timeout=600.0)
    worker = Worker(opts, GatedRunner(), clock=ManualClock())
    identity, thread = ready_worker(fake_hub, worker)
    fake_hub.send(identity, Heartbeat("hub", 0.05))  # a beat an hour apart, until told so
    fake_hub.heartbeats(3)
    worker.request_stop("test over")
    thread.join(30)


def test_a_hub_that_spaces_its_pings_out_is_waited_for_four_of_them(
        fake_hub: FakeHub) -> None:
    clock = ManualClock()
    opts = WorkerOptions(hub=fake_hub.address, servable="demo/add", heartbeat_interval=0.1,
                         hub_timeout=1.0)
    worker = Worker(opts, GatedRunner(), clock=clock)
    identity, thread = ready_worker(fake_hub, worker)
    fake_hub.send(identity, Heartbeat("hub", 10.0))  # a large fleet: a ping each 10 s
    fake_hub.send(identity, Assign("demo/add", 1, "d" * 64, {}, b""))
    fake_hub.expect(Ready)  # taken in order: the heartbeat was read first
    clock.advance(39.0)
    fake_hub.expect(Hello)  # silent long enough to register again, not to give up
    clock.advance(2.0)
    _, bye = fake_hub.expect(Bye)
    assert bye.reason == "no word from the hub for 40.0s"
    thread.join(30)
    assert not thread.is_alive()
