"""The warm worker: register with the hub, load the servable once, run batches until told to stop.

One poll loop owns the worker's socket and runs each batch in that same thread, so a call
to the model costs no thread hand-off. Liveness while a long batch runs comes from a small
heartbeat thread with its own socket (and its own identity), which only ever sends.

Draining (a pilot's walltime is near, or SIGTERM from the scheduler): the worker sends
``Drain``, finishes the batch it holds, sends its results, and exits when the hub answers
``Shutdown``; the hub gives it no new work meanwhile, so nothing is lost or retried.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, cast

import zmq
from pydantic import BaseModel, ConfigDict, Field

from dlhub_hpc.errors import (
    ConfigError,
    DlhubHpcError,
    ExecutionError,
    LocalPathRefused,
    PayloadTooLarge,
)
from dlhub_hpc.localpath.link import LocalLink, open_link, refused_batch
from dlhub_hpc.logging_setup import log_items, request_id_var
from dlhub_hpc.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Assign,
    Batch,
    BatchResult,
    Bye,
    Drain,
    Heartbeat,
    Hello,
    LoadFailed,
    LocalOffer,
    Message,
    Ready,
    Recall,
    Shutdown,
    Tag,
    check_carriable,
    decode,
    encode,
    peek,
)
from dlhub_hpc.protocol.constants import HEARTBEAT_NOTICE
from dlhub_hpc.security.keys import WorkerKey, read_worker_credential, secure_worker
from dlhub_hpc.servable.pools import PoolSpec
from dlhub_hpc.transfer.window import refs_in
from dlhub_hpc.worker.heap import settle_heap
from dlhub_hpc.worker.models import PoolRunner
from dlhub_hpc.worker.packages import installed_versions, pinned_packages
from dlhub_hpc.worker.runner import LocalRunner, Runner, WireResult, cached_bundle
from dlhub_hpc.worker.streams import Unread, WorkerStreams

logger = logging.getLogger(__name__)

_POLLIN = int(zmq.POLLIN)

__all__ = ["Worker", "WorkerOptions", "cached_bundle", "install_signal_handlers"]


class WorkerOptions(BaseModel):
    """One worker's settings, validated when made."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    hub: str = Field(min_length=1, description="the hub's worker address, tcp://host:port")
    servable: str = Field(min_length=1, description="owner/name")
    version: int | None = Field(default=None, ge=1)
    block: str | None = None
    heartbeat_interval: float = Field(default=1.0, gt=0)
    hub_timeout: float = Field(default=30.0, gt=0)
    drain_after: float | None = Field(
        default=None, gt=0, description="seconds after start to stop taking work (walltime)"
    )
    drain_grace: float = Field(
        default=10.0, gt=0, description="seconds to wait for the hub to release a draining worker"
    )
    cache_dir: Path = Field(default_factory=lambda: Path(tempfile.gettempdir()) / "dlhub-hpc")
    worker_id: str = Field(default_factory=lambda: f"w-{uuid.uuid4().hex[:12]}")
    binding: dict[str, Any] | None = Field(default=None, description="GPU binding, for Hello")
    pid: int = Field(default_factory=os.getpid, gt=0,
                     description="the pid to report: the node's view, outside any sandbox")
    max_message_bytes: int = Field(
        default=DEFAULT_MAX_MESSAGE_BYTES, ge=4096,
        description="largest result message to send (the hub's worker_max_message_bytes)")
    credential: Path | None = Field(
        default=None, description="the worker credential file (/dev/fd/N: read once, closed)")
    pool: PoolSpec | None = Field(
        default=None, description="serve this pool (servable is then its pool:SPEC name)")
    settle_heap: bool = Field(
        default=False, description="the worker owns its process: after each load, collect "
        "what earlier loads left and freeze what it holds (worker.heap)")

    def __repr__(self) -> str:
        extra = "".join(
            f", {k}={getattr(self, k)!r}" for k in ("version", "block", "drain_after", "pool")
            if getattr(self, k) is not None
        )
        return f"WorkerOptions(hub={self.hub!r}, servable={self.servable!r}{extra})"


def _heartbeats(
    ctx: zmq.Context[Any], opts: WorkerOptions, stop: threading.Event,
    last_sent: Callable[[], float], drain_due: Callable[[], str],
    credential: WorkerKey | None = None, clock: Callable[[], float] = time.monotonic,
    beat: Callable[[], float] | None = None,
) -> None:
    """Beat every ``beat()`` seconds (the hub's word, else ``opts.heartbeat_interval``)."""
    every = beat or (lambda: opts.heartbeat_interval)
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, f"{opts.worker_id}/hb".encode())
    secure_worker(sock, opts.hub, credential)
    sock.connect(opts.hub)
    frames = encode(Heartbeat(opts.worker_id))
    drain_told = False
    try:
        waited = 0.0  # since the last beat came due, in the waits actually done
        while True:
            # Look every HEARTBEAT_NOTICE seconds at most: a shorter beat the hub names
            # holds soon.
            interval = every()
            step = max(min(interval - waited, HEARTBEAT_NOTICE), 0.0)
            if stop.wait(step):
                break
            waited += step
            if waited >= interval - 1e-9:
                waited = 0.0
                # A result sent within the interval already told the hub this worker lives.
                if clock() - last_sent() >= interval:
                    sock.send_multipart(frames)
            # A drain that comes due mid-batch is told at once (the hub's status shows it);
            # the loop tells it again, just before the batch's result, on its own socket.
            reason = drain_due()
            if reason and not drain_told:
                sock.send_multipart(encode(Drain(opts.worker_id, reason)))
                drain_told = True
    finally:
        sock.close(linger=0)


_MIN_BEAT, _MAX_BEAT = 0.01, 3600.0  # a beat the hub names is kept within these


class Worker:
    """One warm worker process for one servable.

    ``clock`` gives every deadline it keeps (drain, grace, hub silence, heartbeats), as
    ``now`` does for the broker's state, so tests move time instead of waiting for it.
    """

    def __init__(self, opts: WorkerOptions, runner: Runner | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.opts = opts
        self.runner = runner or (LocalRunner(opts.cache_dir) if opts.pool is None
                                 else PoolRunner(opts.cache_dir, opts.pool.budget))
        self._clock = clock
        self._stop = threading.Event()
        self._beat_stop = threading.Event()  # heartbeats go on while a draining batch ends
        self._last_heard = clock()
        self._beat = opts.heartbeat_interval  # as the hub says, once it has (Heartbeat)
        self._rehello_after = opts.hub_timeout / 3  # silence after which Hello is sent again
        self._hello: list[Any] = []
        self._last_sent = 0.0
        self._drain_at = float("inf")
        self._drain_reason = ""  # set (by a signal, or the clock) when the worker must drain
        self._drain_sent_at: float | None = None
        self.exit_reason = ""
        self._streams = WorkerStreams()  # large inputs and outputs, in chunks
        self._link: LocalLink | None = None  # the same-node fast path, if the hub offers it

    def __repr__(self) -> str:
        return f"Worker(hub={self.opts.hub!r}, servable={self.opts.servable!r})"

    def request_stop(self, reason: str) -> None:
        self.exit_reason = reason
        self._stop.set()

    def request_drain(self, reason: str) -> None:
        """Stop taking work, finish what is held, then exit (safe from a signal handler)."""
        if not self._drain_reason:
            self._drain_reason = reason

    @property
    def draining(self) -> bool:
        return self._drain_sent_at is not None

    def run(self) -> int:
        """Serve until shutdown; the exit status is 0 unless the servable failed to load."""
        if self.opts.drain_after is not None:
            self._drain_at = self._clock() + self.opts.drain_after
        try:
            # Read before any servable code runs here (a descriptor is closed after), and
            # before ZeroMQ opens descriptors of its own.
            credential = (read_worker_credential(self.opts.credential)
                          if self.opts.credential is not None else None)
        except DlhubHpcError:
            self.runner.close()  # MPI: the other ranks would wait for a stop forever
            raise
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, self.opts.worker_id.encode())
        try:
            secure_worker(sock, self.opts.hub, credential)  # CurveZMQ
            sock.connect(self.opts.hub)
        except (zmq.ZMQError, DlhubHpcError) as exc:
            sock.close(linger=0)
            ctx.term()
            self.runner.close()  # MPI: the other ranks would wait for a stop forever
            if isinstance(exc, DlhubHpcError):
                raise
            raise ConfigError(
                f"cannot connect to the hub at {self.opts.hub!r} ({exc}); give the hub's "
                "worker address as tcp://host:port", hub=self.opts.hub,
            ) from None
        beat = threading.Thread(
            target=_heartbeats, name="heartbeat", daemon=True,
            args=(ctx, self.opts, self._beat_stop, lambda: self._last_sent, self._drain_due,
                  credential),
            kwargs={"clock": self._clock, "beat": lambda: self._beat},
        )
        status = 0
        try:
            pool = self.opts.pool
            self._hello = encode(Hello(
                self.opts.worker_id, "" if pool else self.opts.servable, self.opts.version,
                socket.gethostname(), self.opts.pid, self.opts.block,
                self.runner.ranks, self.opts.binding, pool.to_wire() if pool else None,
            ))
            sock.send_multipart(self._hello)
            beat.start()
            status = self._loop(sock)
        finally:
            self._stop.set()
            self._beat_stop.set()
            with contextlib.suppress(zmq.ZMQError):
                sock.send_multipart(encode(Bye(self.opts.worker_id, self.exit_reason)))
            sock.close(linger=500)  # let the goodbye reach the hub
            if beat.is_alive():
                beat.join(timeout=2)
            ctx.term()
            self.runner.close()
            if self._link is not None:
                self._link.close()
        logger.info("worker %s exits: %s", self.opts.worker_id, self.exit_reason)
        return status

    def _loop(self, sock: zmq.Socket[bytes]) -> int:
        poll_s = min(self.opts.heartbeat_interval, 0.25)
        while not self._stop.is_set():
            self._check_drain(sock)
            if self._streams.stash:  # what came while a batch's arrays moved, or ahead
                self._last_heard = self._clock()  # from the hub, while they moved
                item = self._streams.stash.pop(0)
                msg = self._decoded(sock, item.frames) if isinstance(item, Unread) else item
                status = None if msg is None else self._handle(sock, msg)
                if status is not None:
                    return status
                continue
            wait = poll_s
            if self._drain_sent_at is None:  # wake when the drain comes due, not after it
                wait = min(poll_s, max(0.0, self._drain_at - self._clock()))
            if not sock.poll(int(wait * 1000), zmq.POLLIN):
                silent = self._clock() - self._last_heard
                if silent > self._hub_timeout:
                    self.request_stop(f"no word from the hub for {self._hub_timeout}s")
                elif silent > self._rehello_after and self._drain_sent_at is None:
                    # A hub restarted on this address after a crash knows no worker: tell
                    # it again who this one is, well before giving up on it.
                    self._rehello_after = silent + self._hub_timeout / 3
                    logger.info("worker %s: no word from the hub for %.1fs; registering again",
                                self.opts.worker_id, silent)
                    sock.send_multipart(self._hello)
                continue
            msg = self._read(sock)
            self._rehello_after = self._hub_timeout / 3
            if msg is None:
                continue
            status = self._handle(sock, msg)
            if status is not None:
                return status
        return 0

    def _read(self, sock: zmq.Socket[bytes]) -> Message | None:
        """The hub's next message (one is waiting); None for one that cannot be read."""
        frames = sock.recv_multipart(copy=False)
        self._last_heard = self._clock()
        return self._decoded(sock, frames)

    def _decoded(self, sock: zmq.Socket[bytes], frames: list[Any]) -> Message | None:
        try:
            return decode(frames, fetch=None if self._link is None else self._link.fetch)
        except DlhubHpcError as exc:
            logger.warning("dropped a malformed message from the hub: %s", exc)
            if isinstance(exc, LocalPathRefused):  # its callers get why, not a timeout
                refused_batch(sock, frames, exc)
            return None

    def _recalled(self, sock: zmq.Socket[bytes], batch: Batch) -> bool:
        """Whether the hub took ``batch`` back before it ran (a ``Recall`` behind it: it was
        sent ahead, and the batch before it ran too long). What waits on the socket is
        taken into the stash as it is, unread (decoded in its turn, in order); a Recall of
        another batch stays there, for that batch's turn. A batch whose inputs come in
        chunks is never sent ahead, and its chunks are for the pump: nothing is taken."""
        if refs_in(batch.payloads):
            return False
        stash = self._streams.stash
        while cast(int, sock.get(zmq.EVENTS)) & _POLLIN:  # no poller made per batch
            stash.append(Unread(sock.recv_multipart(copy=False)))
            self._last_heard = self._clock()
        wanted = (int(Tag.RECALL), batch.batch_id)
        for i, item in enumerate(stash):
            if (isinstance(item, Unread) and peek(item.frames) == wanted) or (
                    isinstance(item, Recall) and item.batch_id == batch.batch_id):
                del stash[i]
                return True
        return False

    def _drain_due(self) -> str:
        """Why the worker must drain now, or "" (read by the heartbeat thread too)."""
        if not self._drain_reason and self._clock() >= self._drain_at:
            return f"drain after {self.opts.drain_after}s (walltime)"
        return self._drain_reason

    def _check_drain(self, sock: zmq.Socket[bytes]) -> None:
        """Send Drain once it is due; give up waiting for the hub after ``drain_grace``."""
        now = self._clock()
        self._drain_reason = self._drain_due()
        if self._drain_reason and self._drain_sent_at is None:
            logger.info("worker %s drains: %s", self.opts.worker_id, self._drain_reason)
            sock.send_multipart(encode(Drain(self.opts.worker_id, self._drain_reason)))
            self._drain_sent_at = now
        elif self._drain_sent_at is not None and now - self._drain_sent_at > self.opts.drain_grace:
            self.request_stop(f"{self._drain_reason}; the hub did not release it in "
                              f"{self.opts.drain_grace}s")

    def _handle(self, sock: zmq.Socket[bytes], msg: Message) -> int | None:
        if isinstance(msg, Batch):
            if self._recalled(sock, msg):
                logger.info("worker %s: batch %s was taken back before it ran",
                            self.opts.worker_id, msg.batch_id)
                return None
            if isinstance(self.runner, PoolRunner):
                self.runner.select(msg.servable)
            frames = self._run_batch(self._streams.receive(sock, msg))
            self._check_drain(sock)  # a drain that came up mid-batch goes before the result
            sock.send_multipart(frames, copy=False)
            self._last_sent = self._clock()
            self._streams.send(sock)  # its streamed outputs, as the callers take them
            self._last_heard = self._clock()  # the hub relayed their credit meanwhile
        elif isinstance(msg, Assign):
            try:
                self.runner.load(msg)
            except DlhubHpcError as exc:
                logger.error("cannot load %s@%s: %s", msg.servable, msg.version, exc)
                sock.send_multipart(encode(LoadFailed(self.opts.worker_id, exc.to_wire())))
                if isinstance(self.runner, PoolRunner):
                    return None  # a pooled worker serves the others it may load
                self.request_stop(f"load failed: {exc}")
                return 1
            if self.opts.settle_heap:
                settle_heap()
            logger.info("worker %s loaded %s@%s", self.opts.worker_id, msg.servable, msg.version)
            report = None
            if isinstance(self.runner, PoolRunner):  # with the versions its pins meet here
                installed = installed_versions(pinned_packages(msg.spec))
                report = {**self.runner.last_report, "installed": installed}
            sock.send_multipart(encode(Ready(self.opts.worker_id, report)))
        elif isinstance(msg, Shutdown):
            self.request_stop(msg.reason if self.draining else f"the hub said: {msg.reason}")
        elif isinstance(msg, LocalOffer) and self._link is None:
            self._link = open_link(msg.offer)
        elif isinstance(msg, Heartbeat) and msg.interval is not None:
            self._beat = min(max(float(msg.interval), _MIN_BEAT), _MAX_BEAT)
        return None

    @property
    def _hub_timeout(self) -> float:
        """Silence after which the hub is given up: as configured, or four of the hub's
        pings where it spaces them further apart (a large fleet)."""
        return max(self.opts.hub_timeout, 4 * self._beat)

    def _run_batch(self, batch: Batch) -> list[Any]:
        started = time.perf_counter()
        traced = request_id_var.set(batch.request_ids)  # the servable's records carry them
        try:
            results = self._streams.run(self.runner, batch)
        except Exception as exc:  # a runner's own bug must not kill the worker
            logger.exception("batch %s of %s failed as a whole", batch.batch_id, batch.method)
            error = ExecutionError(
                f"the worker failed the whole batch: {type(exc).__name__}: {exc}"
            ).to_wire()
            results = [[False, error] for _ in batch.payloads]
        elapsed = time.perf_counter() - started
        request_id_var.reset(traced)
        log_items(logger, batch.request_ids, results, f"batch {batch.batch_id} ({batch.method})")
        results = [_carriable(r) for r in results]
        if self._link is None:  # linked: large outputs go as memfds, not in chunks
            results = self._streams.split(results)
        try:
            frames = encode(BatchResult(batch.batch_id, results, elapsed),
                            None if self._link is None else self._link.share)
        except DlhubHpcError:
            # Some output cannot travel: send an error for those items, the rest as they are.
            results = [_sendable(r) for r in results]
            frames = encode(BatchResult(batch.batch_id, results, elapsed))
        if _nbytes(frames) <= self.opts.max_message_bytes:
            return frames
        return _fit(batch.batch_id, results, elapsed, self.opts.max_message_bytes)


def _nbytes(frames: list[Any]) -> int:
    return sum(memoryview(f).nbytes for f in frames)


def _fit(batch_id: int, results: list[WireResult], elapsed: float, limit: int) -> list[Any]:
    """The results within ``limit`` bytes: the largest outputs become per-item
    ``PayloadTooLarge`` errors until the rest fit (the hub cuts off a larger message)."""
    sizes = sorted(((_nbytes(encode(BatchResult(0, [r]))), i) for i, r in enumerate(results)),
                   reverse=True)
    fitted = list(results)
    total = sum(size for size, _ in sizes)
    budget = limit - 1024 * (len(results) + 1)  # room for the error records and envelope
    for size, i in sizes:
        if total <= budget:
            break
        fitted[i] = [False, PayloadTooLarge(
            f"the output is {size} bytes, over the {limit} bytes a worker may send at once; "
            "return less (or write it to a file and return the path), or raise the hub's "
            "HubConfig.worker_max_message_bytes and the workers' --max-message-bytes",
            size=size, limit=limit, setting="HubConfig.worker_max_message_bytes",
        ).to_wire()]
        total -= size
    logger.warning("batch %s: %s outputs too large to send, sent as errors", batch_id,
                   sum(1 for a, b in zip(fitted, results, strict=True) if a is not b))
    return encode(BatchResult(batch_id, fitted, elapsed))


def _carriable(result: WireResult) -> WireResult:
    """An output the hub could not carry (a dict key that is not a string, nesting deeper
    than MAX_DEPTH) becomes this item's ExecutionError; its neighbours are sent as they are."""
    try:
        check_carriable(result[1], "the output")
        return result
    except DlhubHpcError as exc:
        return _unsendable(exc)


def _sendable(result: WireResult) -> WireResult:
    try:
        encode(BatchResult(0, [result]))
        return result
    except DlhubHpcError as exc:
        return _unsendable(exc)


def _unsendable(exc: DlhubHpcError) -> WireResult:
    return [False, ExecutionError(
        f"the servable's output cannot be sent back: {exc.message}", **exc.details,
    ).to_wire()]


def install_signal_handlers(worker: Worker) -> None:
    """SIGTERM (scancel, walltime, a pilot's cancel) drains the worker; a second one, or
    SIGINT, stops it at once (a batch it holds is then retried by the hub elsewhere)."""

    def drain(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if worker._drain_reason:
            worker.request_stop(f"signal {name} again")
        else:
            worker.request_drain(f"signal {name}")

    def stop(signum: int, frame: FrameType | None) -> None:
        worker.request_stop(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, drain)
    signal.signal(signal.SIGINT, stop)
