"""Simulated workers: many worker loops speaking the real protocol in one process each.

Two cores cannot run 1,024 worker processes, so a worker host process opens up to
``--per-host`` DEALER sockets, each a separate worker identity (Hello -> Assign -> Ready, a
BatchResult echoing each Batch, Heartbeat from a socket of its own, Bye on exit), all served
by one epoll loop. ``Fleet`` grows and shrinks them a host at a time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import psutil
import zmq

from benchmarks.common import CTX, quiet_child, stop_process
from dlhub_hpc.errors import ProtocolError
from dlhub_hpc.protocol import (
    Assign,
    Batch,
    BatchResult,
    Bye,
    Heartbeat,
    Hello,
    Message,
    Ready,
    Shutdown,
    decode,
    encode,
)
from dlhub_hpc.security.keys import curve_client, hub_public_key, worker_credential

logger = logging.getLogger(__name__)

SERVABLE = "demo/noop"


def cpu_seconds(proc: psutil.Process) -> float:
    """CPU seconds of ``proc``'s live threads in nanoseconds resolution: the first field of
    ``/proc/PID/task/*/schedstat`` (the scheduler's on-CPU time). psutil's user + system
    (10 ms ticks) where schedstat is missing. Threads that exited are no longer counted:
    the hub's loop, its ZeroMQ I/O threads and the worker hosts' threads live throughout."""
    total, found = 0, False
    for stat in Path(f"/proc/{proc.pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[0])
            found = True
        except (OSError, ValueError, IndexError):  # the thread ended meanwhile
            continue
    if found:
        return total / 1e9
    times = proc.cpu_times()
    return float(times.user + times.system)


@dataclass(frozen=True)
class HostSpec:
    """What one worker host process runs: ``count`` workers named ``prefix-NNNN``."""

    prefix: str
    count: int
    servable: str
    heartbeat_interval: float
    heartbeat_socket: bool = True  # heartbeats from a second socket, as the real worker


class WorkerHost:
    """``spec.count`` worker identities, each its own DEALER socket, in one poll loop."""

    def __init__(self, address: str, spec: HostSpec) -> None:
        self.spec = spec
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.ctx.MAX_SOCKETS = max(1024, 2 * spec.count + 16)
        # epoll on each socket's ZMQ_FD: a wake-up costs O(ready sockets); zmq.Poller would
        # walk every socket on every wake-up (about 1 us each), which grows with the fleet
        self.selector = selectors.EpollSelector()
        # Every worker connection passes the hub's CurveZMQ check with the worker credential
        # the hub recorded for its address, as a real worker does.
        server, credential = hub_public_key(address), worker_credential(address)
        self.curve = None if server is None or credential is None else (server, credential)
        self.names: dict[zmq.Socket[bytes], str] = {}  # the live workers' main sockets
        self.interval = spec.heartbeat_interval  # until the hub says otherwise
        # per worker: its main socket, the socket its heartbeats go from, their frames
        self.beats: list[tuple[zmq.Socket[bytes], zmq.Socket[bytes], list[Any]]] = []
        for i in range(spec.count):
            worker_id = f"{spec.prefix}-{i:04d}"
            sock = self._socket(address, worker_id)
            self.names[sock] = worker_id
            self.selector.register(sock, selectors.EVENT_READ, sock)
            beat = self._socket(address, f"{worker_id}/hb") if spec.heartbeat_socket else sock
            self.beats.append((sock, beat, encode(Heartbeat(worker_id))))
            sock.send_multipart(encode(Hello(worker_id, spec.servable, None,
                                             socket.gethostname(), os.getpid(), spec.prefix)))
        for sock in list(self.names):  # arms ZMQ_FD: it signals only after a look found none
            self._drain(sock)
        # staggered, as independent workers would be: worker i beats at phase i / count
        start = time.monotonic()
        self.due: deque[tuple[float, int]] = deque(
            (start + spec.heartbeat_interval * (i + 1) / spec.count, i)
            for i in range(spec.count)
        )

    def _socket(self, address: str, identity: str) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, identity.encode())
        if self.curve is not None:
            curve_client(sock, *self.curve)
        sock.connect(address)
        return sock

    def run(self, stop: MpEvent) -> None:
        """Serve until ``stop`` is set or the hub has told every worker to leave."""
        next_check = 0.0
        while self.names:
            now = time.monotonic()
            if now >= next_check:
                if stop.is_set():
                    return
                next_check = now + 0.1
            wait = min(self.due[0][0] - now, next_check - now) if self.due else 0.1
            for key, _ in self.selector.select(max(0.0, wait)):
                self._drain(key.data)
            self._heartbeats(time.monotonic())

    def _drain(self, sock: zmq.Socket[bytes]) -> None:
        # ZMQ_FD only says "look": read EVENTS (which resets it) until no message is left
        while sock in self.names and cast(int, sock.get(zmq.EVENTS)) & zmq.POLLIN:
            frames = sock.recv_multipart(copy=False)
            try:
                self._answer(sock, decode(frames))
            except ProtocolError as exc:
                logger.warning("dropped a malformed message from the hub: %s", exc)

    def _answer(self, sock: zmq.Socket[bytes], msg: Message) -> None:
        if isinstance(msg, Batch):  # the echo servable: every item comes back as it went
            results = [[True, payload] for payload in msg.payloads]
            sock.send_multipart(encode(BatchResult(msg.batch_id, results, 0.0)), copy=False)
        elif isinstance(msg, Assign):  # nothing to load: an echo needs no bundle
            sock.send_multipart(encode(Ready(self.names[sock])))
        elif isinstance(msg, Shutdown):
            logger.warning("the hub told %s to leave: %s", self.names[sock], msg.reason)
            self.selector.unregister(sock)
            del self.names[sock]
        elif isinstance(msg, Heartbeat) and msg.interval is not None:
            self.interval = msg.interval  # the hub spaces beats out as its fleet grows

    def _heartbeats(self, now: float) -> None:
        interval = self.interval
        for _ in range(len(self.due)):
            if self.due[0][0] > now:
                return
            due, i = self.due.popleft()
            main, beat, frames = self.beats[i]
            if main in self.names:  # a worker the hub sent away beats no more
                beat.send_multipart(frames)
                if beat is main:  # a send may take the ZMQ_FD signal of a message
                    self._drain(main)
                self.due.append((max(due + interval, now), i))

    def close(self, reason: str) -> None:
        """Say goodbye for every worker still registered, then close every socket."""
        for sock, worker_id in self.names.items():
            with contextlib.suppress(zmq.ZMQError):
                sock.send_multipart(encode(Bye(worker_id, reason)))
        for sock in self.names:
            sock.close(linger=500)  # let the goodbyes reach the hub
        self.selector.close()
        self.ctx.destroy(linger=0)


def worker_host_main(address: str, spec: HostSpec, stop: MpEvent) -> None:
    """A worker host process: ``spec.count`` simulated workers until ``stop`` is set."""
    quiet_child()
    host = WorkerHost(address, spec)
    reason = "the benchmark stopped it"
    try:
        host.run(stop)
    finally:
        host.close(reason)


@dataclass
class Host:
    """One worker host process, its own stop event and how many workers it runs."""

    proc: SpawnProcess
    stop: MpEvent
    count: int


class Fleet:
    """Worker host processes attached to one hub, grown and shrunk a host at a time."""

    def __init__(self, address: str, per_host: int, heartbeat_interval: float) -> None:
        self.address = address
        self.per_host = per_host
        self.heartbeat_interval = heartbeat_interval
        self.hosts: list[Host] = []
        self.started = 0  # hosts ever started: names stay unique after a shrink

    @property
    def size(self) -> int:
        return sum(h.count for h in self.hosts)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(self.hosts)

    def resize(self, target: int) -> None:
        """Add hosts up to ``target`` workers, or stop the newest down to ``target``."""
        while self.hosts and self.size - self.hosts[-1].count >= target:
            self.close([self.hosts.pop()])
        if self.size > target:
            raise ValueError(f"cannot shrink to {target} workers: the newest host runs "
                             f"{self.hosts[-1].count}; use powers of two for --counts")
        while self.size < target:
            self._start(min(self.per_host, target - self.size))

    def _start(self, count: int) -> None:
        spec = HostSpec(f"sim{self.started:03d}", count, SERVABLE, self.heartbeat_interval)
        stop = CTX.Event()
        proc = CTX.Process(target=worker_host_main, args=(self.address, spec, stop),
                           name=f"worker-host-{self.started}")
        self.hosts.append(Host(proc, stop, count))
        self.started += 1
        proc.start()

    def cpu(self) -> float:
        """CPU seconds of the running worker hosts."""
        return sum(cpu_seconds(psutil.Process(h.proc.pid)) for h in self.hosts if h.proc.pid)

    def check(self) -> None:
        dead = [h.proc for h in self.hosts if not h.proc.is_alive()]
        if dead:
            raise RuntimeError(f"{dead[0].name} exited with status {dead[0].exitcode}")

    @staticmethod
    def close(hosts: Sequence[Host]) -> None:
        """Their workers say goodbye and exit; any host that does not is terminated."""
        for host in hosts:
            host.stop.set()
        deadline = time.monotonic() + 5.0
        for host in hosts:
            host.proc.join(max(0.0, deadline - time.monotonic()))
        for host in hosts:
            stop_process(host.proc)
