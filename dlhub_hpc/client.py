"""The caller's side: ``Client().run(servable, inputs)`` and friends.

Three paths to the hub, each socket owned by one thread:

- ``run`` (blocking) sends from the calling thread on that thread's own DEALER socket and
  waits there for the reply: no hand-off between threads, the lowest latency. That socket
  (``client_sockets``) is closed when its thread ends, or by ``close()``;
- ``submit`` (futures) hands the request to one background thread that owns a DEALER
  socket and its poll loop, through a queue and a wake-up pipe, so any number of requests
  can be in flight from any thread;
- ``map`` (a stream of inputs) sends and reads on a socket of its own from the calling
  thread, a window of requests outstanding (``client_window``).

``Client`` and ``AsyncClient`` build and check requests in ``ClientCore``; every reply
becomes a value or a typed error in ``reply_value`` (both in ``client_core``). No socket is
made until the first call.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import Any, cast

import zmq

from dlhub_hpc.client_core import _SLICE as _SLICE
from dlhub_hpc.client_core import (
    USE_CLIENT_DEFAULT,
    ClientCore,
    UseClientDefault,
    asked_version,
    checked_parameters,
    client_closed,
    decode_reply,
    find_hub_address,
    hub_gone,
    no_reply,
    raise_load_failure,
    recorded_message_limit,
    reply_value,
    settle,
    workers_missing,
    workers_ready,
)
from dlhub_hpc.client_publication import AdminCalls, PublicationCalls
from dlhub_hpc.client_sockets import _ThreadSocket, _ThreadSockets
from dlhub_hpc.client_window import Call, WindowSocket
from dlhub_hpc.errors import ConfigError, DlhubHpcError
from dlhub_hpc.protocol import encode
from dlhub_hpc.protocol.bundle import HubBundles, bundled
from dlhub_hpc.references import ResultTo
from dlhub_hpc.security.client import ClientCurve
from dlhub_hpc.security.keys import KeyPair
from dlhub_hpc.transfer import call as streamed
from dlhub_hpc.transfer.pending import PendingTransfers
from dlhub_hpc.transfer.window import Outgoing

__all__ = [
    "USE_CLIENT_DEFAULT",
    "Client",
    "ClientCore",
    "RequestFuture",
    "UseClientDefault",
    "asked_version",
    "checked_parameters",
    "client_closed",
    "decode_reply",
    "find_hub_address",
    "hub_gone",
    "no_reply",
    "raise_load_failure",
    "recorded_message_limit",
    "reply_value",
    "settle",
    "workers_missing",
    "workers_ready",
]

_POLLIN = int(zmq.POLLIN)  # a plain int: enum flag arithmetic costs microseconds per call


class RequestFuture(Future[Any]):
    """The future ``submit`` returns; ``request_id`` names it to ``request_status``."""

    def __init__(self, request_id: str) -> None:
        super().__init__()
        self.request_id = request_id



class Client(ClientCore, AdminCalls[Any], PublicationCalls[Any]):
    """Talks to one hub. Thread-safe; use as a context manager or call ``close()``.

    Serving: ``run``, ``submit`` (futures), ``run_batch``, ``map``; ``publish`` and
    ``wait_for_workers``; every other hub operation is in ``AdminCalls`` and
    ``PublicationCalls`` (``client_publication``), through ``control``.
    """

    def __init__(
        self, address: str | None = None, *, timeout: float | None = 60.0,
        keys: KeyPair | None = None, server_key: str | None = None,
        context: zmq.Context[Any] | None = None, max_message_bytes: int | None = None,
    ) -> None:
        super().__init__(address, timeout=timeout, keys=keys, server_key=server_key,
                         context=context, max_message_bytes=max_message_bytes)
        self._outbox: queue.SimpleQueue[list[Any]] = queue.SimpleQueue()
        self._futures: dict[str, Future[Any]] = {}
        self._expiry: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._wake_r = self._wake_w = -1
        self._wake_armed = False  # a wake-up byte is in the pipe; no need for another
        self._gone: DlhubHpcError | None = None  # why the I/O thread ended, if it did
        self._sockets = _ThreadSockets()
        self._windows: set[WindowSocket] = set()  # the sockets of maps in progress
        self._transfers: PendingTransfers | None = None  # the I/O thread's, made there
        self._hub = HubBundles()  # whether the I/O thread's hub reads bundles
        self._fast.on_linked = lambda: self.control("local_path", linked=self._prefix)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- serving --

    def submit(
        self, servable: str, inputs: Any, *, method: str = "",
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT, cache: bool = True,
        parameters: dict[str, Any] | None = None, result_to: ResultTo = None,
    ) -> Future[Any]:
        """Send one request; the future holds the output or a ``DlhubHpcError``.

        ``servable`` is ``owner/name`` or ``owner/name@version``; ``method`` defaults to the
        servable's ``run`` (or its first method); ``timeout`` defaults to the client's;
        ``cache=False`` skips the hub's memo cache for this request; ``parameters``
        override the method's default keyword parameters (names it does not declare are
        ``InvalidInput``). Inputs may hold ``FileRef``/``URLRef`` values, which the hub
        reads for you; ``result_to`` (a path) has the hub write the output there (``.npy``
        for an array, else bytes) and return its ``FileRef``.
        """
        upload = None
        if not self._fast.ready_for(inputs, self.address, self._local_offer):  # opens a link
            inputs, upload = streamed.stream_input(inputs)  # a large array goes in chunks
        return self._send(*self._request(servable, inputs, method, timeout,
                                         cache and upload is None, parameters, result_to),
                          upload)

    def run(
        self, servable: str, inputs: Any, *, method: str = "",
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT, cache: bool = True,
        parameters: dict[str, Any] | None = None, result_to: ResultTo = None,
    ) -> Any:
        """Run ``servable`` on ``inputs`` and return its output (raises ``DlhubHpcError``);
        the arguments are ``submit``'s.

        Blocks the calling thread, which talks to the hub on a socket of its own.
        """
        upload = None
        if not self._fast.ready_for(inputs, self.address, self._local_offer):
            inputs, upload = streamed.stream_input(inputs)  # a large array goes in chunks
        request_id, frames, wait = self._request(servable, inputs, method, timeout,
                                                 cache and upload is None, parameters,
                                                 result_to)
        return self._thread_socket().call(request_id, frames, wait, self.address, upload)

    def run_batch(
        self, servable: str, inputs: list[Any], *, method: str = "",
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT, cache: bool = True,
        return_exceptions: bool = False, parameters: dict[str, Any] | None = None,
    ) -> list[Any]:
        """Run ``servable`` on each of ``inputs``; outputs come back in the same order.

        The requests leave together, so the hub batches them and may split them across
        workers. A failed item raises its error, or with ``return_exceptions=True`` (as in
        ``asyncio.gather``) stands in the list in place of its output.
        """
        futures = [
            self.submit(servable, x, method=method, timeout=timeout, cache=cache,
                        parameters=parameters) for x in inputs
        ]
        if not return_exceptions:
            return [f.result() for f in futures]
        return [f.exception() or f.result() for f in futures]

    def map(
        self, servable: str, inputs: Iterable[Any], *, method: str = "",
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT, cache: bool = True,
        parameters: dict[str, Any] | None = None, in_flight: int = 32,
        return_exceptions: bool = False,
    ) -> Iterator[Any]:
        """Run ``servable`` on each of ``inputs`` (any iterable, read as it goes), keeping
        ``in_flight`` requests outstanding; yields the outputs in the order of the inputs.

        For long input streams: the calling thread sends and reads on a socket of the
        map's own, so each call costs less than ``submit``'s, and at most ``in_flight``
        calls are sent and not yet taken at a time (the hub batches them as they come).
        A failed item raises its error where its output would be (the map ends there), or
        with ``return_exceptions=True`` stands in its place. Other arguments as ``run``.
        """
        if in_flight < 1:
            raise ConfigError(f"in_flight must be at least 1, not {in_flight}")
        if self._closing.is_set():
            raise client_closed()
        return self._map(servable, inputs, method, timeout, cache, parameters, in_flight,
                         return_exceptions)

    def _map(self, servable: str, inputs: Iterable[Any], method: str,
             timeout: float | UseClientDefault | None, cache: bool,
             parameters: dict[str, Any] | None, in_flight: int,
             return_exceptions: bool) -> Iterator[Any]:
        def calls() -> Iterator[Call]:
            for x in inputs:
                upload = None
                if not self._fast.ready_for(x, self.address, self._local_offer):
                    x, upload = streamed.stream_input(x)
                request_id, frames, wait = self._request(
                    servable, x, method, timeout, cache and upload is None, parameters)
                yield Call(request_id, frames, wait, upload)

        window = WindowSocket(self.address, self._curve, self._context, self._closing,
                              self._fast.fetch)
        with self._lock:
            self._windows.add(window)
        try:
            for outcome in window.outcomes(calls(), in_flight):
                try:
                    if isinstance(outcome, DlhubHpcError):
                        raise outcome
                    yield reply_value(outcome, stacklevel=3)
                except DlhubHpcError as exc:
                    if not return_exceptions:
                        raise
                    yield exc
        finally:
            with self._lock:
                self._windows.discard(window)
            window.close()

    def _thread_socket(self) -> _ThreadSocket:
        if self._closing.is_set():
            raise client_closed()
        return self._sockets.get(
            lambda: _ThreadSocket(self.address, self._curve, self._context, self._closing,
                                  self._fast.fetch))

    # -- administration --

    def control(self, op: str, timeout: float = 30.0, **args: Any) -> Any:
        """Run a hub operation; ``HubUnavailable`` if no answer comes within ``timeout``."""
        return self._send(*self._control(op, args), timeout).result()

    def _local_offer(self) -> Any:
        return self.control("local_path")

    def open_local_path(self) -> bool:
        """Open the same-node link now (the first large input opens it anyway), so that
        large outputs of calls with small inputs come by it too; False where the path does
        not apply (another node, the hub has it off, ``local_fast_path`` is False)."""
        return self._fast.open(self.address, self._local_offer)

    def publish(self, directory: str | Path) -> dict[str, Any]:
        """Publish a servable directory; returns its name, version and digest."""
        result: dict[str, Any] = self.control("publish", bundle=self._bundle(directory))
        return result

    def request_status(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """Where a request sent by ``submit`` (its future's ``request_id``) is: ``state``
        ``queued``, ``running`` or ``answered``, and ``stage``, how far its servable's start
        on demand got (``queued at scheduler``, ``job running``, ``model loading``; None
        when it serves)."""
        result: dict[str, Any] = self.control("request_status", timeout, request_id=request_id)
        return result

    def wait_for_workers(self, servable: str, count: int = 1, timeout: float = 60.0) -> None:
        """Block until ``count`` workers of ``servable`` (the version asked, else the latest)
        are loaded and serving; their load error at once if the workers failed to load it."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            ready = workers_ready(status, servable)
            if ready >= count:
                return
            raise_load_failure(status, servable)  # at once, with the worker's own error
            if time.monotonic() > deadline:
                raise workers_missing(servable, ready, count, timeout)
            time.sleep(0.1)

    # -- plumbing --

    def _send(self, request_id: str, frames: list[Any], wait: float | None,
              upload: Outgoing | None = None) -> Future[Any]:
        """Queue ``frames`` for the I/O thread; the future fails if ``wait`` s pass unanswered."""
        future: Future[Any] = RequestFuture(request_id)
        future.set_running_or_notify_cancel()
        with self._lock:
            if self._closing.is_set():
                raise client_closed()
            if self._gone is not None:
                raise self._gone
            self._ensure_thread()
            self._futures[request_id] = future
        self._outbox.put([request_id, wait, frames, upload])
        if not self._wake_armed:  # one byte wakes the I/O thread for everything queued
            self._wake_armed = True
            os.write(self._wake_w, b"x")
        return future

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            ready = threading.Event()
            self._thread = threading.Thread(
                target=self._loop, args=(ready,), name="dlhub-client", daemon=True
            )
            self._thread.start()
            ready.wait()
            if self._gone is not None:
                raise self._gone

    def _loop(self, ready: threading.Event) -> None:
        ctx = self._context or zmq.Context()
        sock: zmq.Socket[bytes] | None = None
        monitor = None
        gone: DlhubHpcError = DlhubHpcError("the client was closed")
        try:
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
            monitor = self._curve.secure(sock, self.address)
            sock.connect(self.address)
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            live = sock
            self._transfers = PendingTransfers(
                lambda msg: live.send_multipart(encode(msg), copy=False))
            poller.register(self._wake_r, zmq.POLLIN)
            if monitor is not None:
                poller.register(monitor, zmq.POLLIN)
            ready.set()
            while not self._closing.is_set():
                wait_ms = 1000
                if self._expiry:
                    wait_ms = max(0, int((self._expiry[0][0] - time.monotonic()) * 1000))
                events = dict(poller.poll(wait_ms))
                if self._wake_r in events:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self._wake_r, 4096):
                            pass
                    self._wake_armed = False  # before the flush: later sends wake us again
                    self._flush_outbox(sock)
                if sock in events:
                    self._drain_replies(sock)
                if monitor is not None and monitor in events:
                    refused = self._curve.refusal(monitor, self.address)
                    if refused is not None:
                        self._fail_all(refused)
                self._expire()
                if self._transfers.active:
                    self._transfers.expire()
        except zmq.ZMQError:
            if self._context is None:
                raise
            gone = hub_gone(self.address)  # an embedded hub stopped and took its context along
        finally:
            if sock is not None:
                ClientCurve.close(sock, monitor)
                sock.close(linger=0)
            if ctx is not self._context:
                ctx.term()
            # Not under self._lock: _ensure_thread holds it while it waits for ``ready``.
            self._gone = gone
            ready.set()  # also when the socket could not be made: the caller must not wait on
            self._fail_all(gone)

    def _flush_outbox(self, sock: zmq.Socket[bytes]) -> None:
        now = time.monotonic()
        outgoing = []
        while not self._outbox.empty():
            request_id, timeout, frames, upload = self._outbox.get()
            if upload is not None and self._transfers is not None:
                self._transfers.upload(request_id, upload)
            if timeout is not None:
                heapq.heappush(self._expiry, (now + timeout, request_id))
            outgoing.append(frames)
        # What queued up together leaves together, once the hub showed it reads bundles.
        for frames, _ in bundled(outgoing, self._hub.ok):
            sock.send_multipart(frames, copy=False)

    def _drain_replies(self, sock: zmq.Socket[bytes]) -> None:
        while cast(int, sock.get(zmq.EVENTS)) & _POLLIN:
            assert self._transfers is not None
            for message in self._hub.read(sock.recv_multipart(copy=False)):
                # A transfer's chunk or credit moves it; a reply whose output streams
                # waits for it.
                reply = self._transfers.take(message, self._fast.fetch)
                if reply is None:
                    continue
                with self._lock:
                    future = self._futures.pop(reply.request_id, None)
                # future None: answered already (expired here) or not ours
                self._transfers.settle(reply,
                                       None if future is None else partial(settle, future))

    def _expire(self) -> None:
        now = time.monotonic()
        while self._expiry and self._expiry[0][0] <= now:
            _, request_id = heapq.heappop(self._expiry)
            with self._lock:
                future = self._futures.pop(request_id, None)
            if future is not None:
                future.set_exception(no_reply(self.address, self._curve))

    def _fail_all(self, error: DlhubHpcError) -> None:
        with self._lock:
            futures, self._futures = self._futures, {}
        if self._transfers is not None:  # on the I/O thread, as it ends
            self._transfers.fail_all(error)
        for future in futures.values():
            if not future.done():
                future.set_exception(error)

    def close(self) -> None:
        """Close every socket of this client, in every thread, and stop its I/O thread;
        requests still open fail. A ``run`` waiting in another thread fails within a
        fraction of a second with ``DlhubHpcError('the client is closed')``."""
        with self._lock:
            self._closing.set()
            thread, self._thread = self._thread, None
        self._sockets.close_all()
        with self._lock:
            windows, self._windows = list(self._windows), set()
        for window in windows:
            window.close()
        self._fast.close()
        if thread is not None:
            os.write(self._wake_w, b"x")
            thread.join(timeout=5)
            os.close(self._wake_r)
            os.close(self._wake_w)
