"""The warm worker: register with the hub, load the servable once, run batches until told to stop.

One poll loop owns the worker's socket and runs each batch in that same thread, so a call
to the model costs no thread hand-off. Liveness while a long batch runs comes from a small
heartbeat thread with its own socket (and its own identity), which only ever sends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import zmq

from dlhub_hpc.errors import DlhubHpcError, ServableLoadError
from dlhub_hpc.protocol import (
    Assign,
    Batch,
    BatchResult,
    Bye,
    Heartbeat,
    Hello,
    LoadFailed,
    Message,
    Ready,
    Shutdown,
    decode,
    encode,
)
from dlhub_hpc.servable.bundle import unpack_bundle
from dlhub_hpc.servable.shims import Shim, load_servable
from dlhub_hpc.servable.spec import ServableSpec

logger = logging.getLogger(__name__)


@dataclass
class WorkerOptions:
    hub: str
    servable: str
    version: int | None = None
    block: str | None = None
    heartbeat_interval: float = 1.0
    hub_timeout: float = 30.0
    cache_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "dlhub-hpc")
    worker_id: str = field(default_factory=lambda: f"w-{uuid.uuid4().hex[:12]}")


def cached_bundle(cache_dir: Path, digest: str, data: bytes) -> Path:
    """Unpack a bundle once per digest; concurrent workers race safely via rename."""
    target = cache_dir / digest
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{digest[:12]}-"))
    try:
        unpack_bundle(data, scratch)
        scratch.rename(target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _heartbeats(
    ctx: zmq.Context[Any], opts: WorkerOptions, stop: threading.Event,
    last_sent: Callable[[], float],
) -> None:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, f"{opts.worker_id}/hb".encode())
    sock.connect(opts.hub)
    frames = encode(Heartbeat(opts.worker_id))
    try:
        while not stop.wait(opts.heartbeat_interval):
            # A result sent within the interval already told the hub this worker lives.
            if time.monotonic() - last_sent() >= opts.heartbeat_interval:
                sock.send_multipart(frames)
    finally:
        sock.close(linger=0)


class Worker:
    """One warm worker process for one servable."""

    def __init__(self, opts: WorkerOptions) -> None:
        self.opts = opts
        self.shim: Shim | None = None
        self._stop = threading.Event()
        self._last_heard = time.monotonic()
        self._last_sent = 0.0
        self.exit_reason = ""

    def __repr__(self) -> str:
        return f"Worker(hub={self.opts.hub!r}, servable={self.opts.servable!r})"

    def request_stop(self, reason: str) -> None:
        self.exit_reason = reason
        self._stop.set()

    def run(self) -> int:
        """Serve until shutdown; the exit status is 0 unless the servable failed to load."""
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, self.opts.worker_id.encode())
        sock.connect(self.opts.hub)
        beat = threading.Thread(
            target=_heartbeats, args=(ctx, self.opts, self._stop, lambda: self._last_sent),
            name="heartbeat", daemon=True,
        )
        status = 0
        try:
            sock.send_multipart(encode(Hello(
                self.opts.worker_id, self.opts.servable, self.opts.version,
                socket.gethostname(), os.getpid(), self.opts.block,
            )))
            beat.start()
            status = self._loop(sock)
        finally:
            self._stop.set()
            with contextlib.suppress(zmq.ZMQError):
                sock.send_multipart(encode(Bye(self.opts.worker_id, self.exit_reason)))
            sock.close(linger=500)  # let the goodbye reach the hub
            if beat.is_alive():
                beat.join(timeout=2)
            ctx.term()
        logger.info("worker %s exits: %s", self.opts.worker_id, self.exit_reason)
        return status

    def _loop(self, sock: zmq.Socket[bytes]) -> int:
        poll_ms = int(min(self.opts.heartbeat_interval, 0.25) * 1000)
        while not self._stop.is_set():
            if not sock.poll(poll_ms, zmq.POLLIN):
                if time.monotonic() - self._last_heard > self.opts.hub_timeout:
                    self.request_stop(f"no word from the hub for {self.opts.hub_timeout}s")
                continue
            frames = sock.recv_multipart(copy=False)
            self._last_heard = time.monotonic()
            try:
                msg = decode(frames)
            except DlhubHpcError as exc:
                logger.warning("dropped a malformed message from the hub: %s", exc)
                continue
            status = self._handle(sock, msg)
            if status is not None:
                return status
        return 0

    def _handle(self, sock: zmq.Socket[bytes], msg: Message) -> int | None:
        if isinstance(msg, Batch):
            sock.send_multipart(self._run_batch(msg), copy=False)
            self._last_sent = time.monotonic()
        elif isinstance(msg, Assign):
            try:
                self._load(msg)
            except DlhubHpcError as exc:
                logger.error("cannot load %s@%s: %s", msg.servable, msg.version, exc)
                sock.send_multipart(encode(LoadFailed(self.opts.worker_id, exc.to_wire())))
                self.request_stop(f"load failed: {exc}")
                return 1
            sock.send_multipart(encode(Ready(self.opts.worker_id)))
        elif isinstance(msg, Shutdown):
            self.request_stop(f"the hub said: {msg.reason}")
        return None

    def _load(self, msg: Assign) -> None:
        spec = ServableSpec.from_data(msg.spec, f"{msg.servable}@{msg.version}")
        try:
            root = cached_bundle(self.opts.cache_dir, msg.digest, msg.bundle)
        except OSError as exc:
            raise ServableLoadError(f"cannot unpack the bundle: {exc}") from exc
        self.shim = load_servable(spec, root)
        logger.info("worker %s loaded %s@%s", self.opts.worker_id, msg.servable, msg.version)

    def _run_batch(self, batch: Batch) -> list[Any]:
        assert self.shim is not None, "the hub sent a batch before the servable was loaded"
        started = time.perf_counter()
        outcomes = self.shim.run(batch.method, batch.payloads)
        elapsed = time.perf_counter() - started
        results = [
            [False, o.to_wire()] if isinstance(o, DlhubHpcError) else [True, o] for o in outcomes
        ]
        try:
            return encode(BatchResult(batch.batch_id, results, elapsed))
        except DlhubHpcError:
            # Some output cannot travel: send an error for those items, the rest as they are.
            return encode(BatchResult(batch.batch_id, [_sendable(r) for r in results], elapsed))


def _sendable(result: list[Any]) -> list[Any]:
    try:
        encode(BatchResult(0, [result]))
        return result
    except DlhubHpcError as exc:
        return [False, DlhubHpcError(f"the output cannot be sent: {exc.message}").to_wire()]


def install_signal_handlers(worker: Worker) -> None:
    """SIGTERM (a pilot's cancel) and SIGINT stop the worker cleanly."""

    def handler(signum: int, frame: FrameType | None) -> None:
        worker.request_stop(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
