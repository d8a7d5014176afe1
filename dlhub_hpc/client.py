"""The caller's side: ``Client().run(servable, inputs)`` and friends.

Two paths to the hub, each socket owned by one thread:

- ``run`` (blocking) sends from the calling thread on that thread's own DEALER socket and
  waits there for the reply: no hand-off between threads, the lowest latency;
- ``submit`` (futures) hands the request to one background thread that owns a DEALER
  socket and its poll loop, through a queue and a wake-up pipe, so any number of requests
  can be in flight from any thread.

No socket is made until the first call.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
import os
import queue
import threading
import time
import uuid
import warnings
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, cast

import zmq

from dlhub_hpc.client_publication import PublicationMixin
from dlhub_hpc.errors import (
    ConfigError,
    DlhubHpcError,
    HubUnavailable,
    PayloadTooLarge,
    ProtocolError,
    ServableDeprecated,
    error_from_wire,
)
from dlhub_hpc.hubfile import default_home, read_hub_file
from dlhub_hpc.protocol import (
    DEFAULT_CLIENT_PORT,
    DEFAULT_MAX_MESSAGE_BYTES,
    Control,
    Reply,
    Request,
    check_carriable,
    decode,
    encode,
)
from dlhub_hpc.security.client import ClientCurve, hint
from dlhub_hpc.security.keys import KeyPair
from dlhub_hpc.servable.bundle import make_bundle
from dlhub_hpc.servable.spec import parse_ref

logger = logging.getLogger(__name__)

_POLLIN = int(zmq.POLLIN)  # a plain int: enum flag arithmetic costs microseconds per call
_AUTH_CHECK = 0.25  # seconds between looks for a refused handshake while waiting
_GRACE = 5.0  # seconds past a request's own timeout before the client gives up on the hub


class UseClientDefault:
    """The type of ``USE_CLIENT_DEFAULT``: take the client's own setting (as httpx does)."""

    def __repr__(self) -> str:
        return "USE_CLIENT_DEFAULT"


USE_CLIENT_DEFAULT = UseClientDefault()


def find_hub_address(home: Path | None = None) -> str:
    """``$DLHUB_HPC_HUB``, else the address a running hub wrote in its home, else the default."""
    env = os.environ.get("DLHUB_HPC_HUB")
    if env:
        return env
    state = read_hub_file(home or default_home())
    if state and state.get("client_address"):
        return str(state["client_address"])
    return f"tcp://127.0.0.1:{DEFAULT_CLIENT_PORT}"


def recorded_message_limit(address: str, home: Path | None = None) -> int | None:
    """The request size limit the hub at ``address`` recorded in its ``hub.json``, if any."""
    state = read_hub_file(home or default_home())
    if not state or state.get("client_address") != address:
        return None
    limit = state.get("max_message_bytes")
    return limit if isinstance(limit, int) and limit > 0 else None


def _frames(msg: Request | Control) -> list[Any]:
    """``msg`` encoded, after refusing (``InvalidInput``) what the hub could not carry."""
    if isinstance(msg, Request):
        check_carriable(msg.payload, "the input")
    else:
        check_carriable(msg.args, f"the arguments of {msg.op}")
    return encode(msg)


def _hub_gone(address: str) -> HubUnavailable:
    return HubUnavailable(f"the hub at {address} has stopped; its in-process address went with "
                          "it", address=address)


class _ThreadSocket:
    """A DEALER socket owned by one caller thread; closed in that thread when it ends."""

    def __init__(self, address: str, curve: ClientCurve | None = None,
                 context: zmq.Context[Any] | None = None) -> None:
        try:
            self.sock: zmq.Socket[bytes] = (context or zmq.Context.instance()).socket(zmq.DEALER)
        except zmq.ZMQError:  # the context of an embedded hub that has stopped
            raise _hub_gone(address) from None
        self.sock.setsockopt(zmq.LINGER, 0)
        self.curve = curve or ClientCurve()
        self.monitor = self.curve.secure(self.sock, address)
        self.sock.connect(address)
        self._wait: float | None = None  # the receive timeout now set on the socket

    def call(self, request_id: str, frames: list[Any], wait: float | None, address: str) -> Any:
        # A blocking receive with RCVTIMEO: cheaper per call than a poller. With CurveZMQ
        # the wait is cut in slices, to notice a refused handshake between them.
        step = wait if self.monitor is None else min(wait or _AUTH_CHECK, _AUTH_CHECK)
        if step != self._wait:
            self.sock.setsockopt(zmq.RCVTIMEO, -1 if step is None else math.ceil(step * 1000))
            self._wait = step
        try:
            self.sock.send_multipart(frames, copy=False)
        except zmq.ContextTerminated:
            self.close()  # so that the stopped hub's context can finish terminating
            raise _hub_gone(address) from None
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            try:
                received = self.sock.recv_multipart(copy=False)
            except zmq.ContextTerminated:
                self.close()
                raise _hub_gone(address) from None
            except zmq.Again:
                refused = self.curve.refusal(self.monitor, address)
                if refused is not None:
                    raise refused from None
                if self.monitor is not None and (deadline is None
                                                 or time.monotonic() < deadline):
                    continue
                received = None
            if received is None or (deadline is not None and time.monotonic() >= deadline):
                raise self.curve.last_refusal or HubUnavailable(
                    f"no reply from the hub at {address}; is it running? "
                    f"Start one with 'dlhub-hpc hub start'{hint(address, self.curve)}",
                    address=address,
                )
            try:
                reply = decode(received)
            except ProtocolError as exc:
                logger.warning("dropped a malformed reply: %s", exc)
                continue
            if isinstance(reply, Reply) and reply.request_id == request_id:
                if reply.warning:
                    warnings.warn(reply.warning, ServableDeprecated, stacklevel=3)
                if reply.ok:
                    return reply.value
                raise error_from_wire(reply.error or {})
            # else: the late answer to an earlier call that gave up; drop it

    def close(self) -> None:
        ClientCurve.close(self.sock, self.monitor)
        self.sock.close(linger=0)

    def __del__(self) -> None:
        # Runs in the owning thread when its thread-local storage is cleared at exit.
        if getattr(self, "sock", None) is not None and not self.sock.closed:
            ClientCurve.close(self.sock, self.monitor)
            self.sock.close(linger=0)


class Client(PublicationMixin):
    """Talks to one hub. Thread-safe; use as a context manager or call ``close()``."""

    def __init__(
        self, address: str | None = None, *, timeout: float | None = 60.0,
        keys: KeyPair | None = None, server_key: str | None = None,
        context: zmq.Context[Any] | None = None, max_message_bytes: int | None = None,
    ) -> None:
        """``keys``: this caller's CurveZMQ key pair (default: the user's own, made on
        first use); ``server_key``: the hub's public key (default: as the hub recorded it);
        ``context``: the ZeroMQ context of an ``inproc://`` hub in this process (what
        ``Hub.client()`` passes); ``max_message_bytes``: the largest request to send
        (default: the limit the hub recorded in its ``hub.json``, else the hubs' default)."""
        if max_message_bytes is not None and max_message_bytes < 1:
            raise ConfigError(f"max_message_bytes must be positive, not {max_message_bytes}")
        if address is not None and address.startswith("inproc://") and context is None:
            raise ConfigError(f"{address} is reachable only with the context of the hub that "
                              "bound it: use Hub.client()", address=address)
        self._address = address
        self._context = context
        self.timeout = timeout
        self._max_message_bytes = max_message_bytes
        self._curve = ClientCurve(keys, server_key)
        self._outbox: queue.SimpleQueue[list[Any]] = queue.SimpleQueue()
        self._futures: dict[str, Future[Any]] = {}
        self._expiry: list[tuple[float, str]] = []
        self._ids = itertools.count()
        self._prefix = uuid.uuid4().hex[:8]
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._wake_r = self._wake_w = -1
        self._wake_armed = False  # a wake-up byte is in the pipe; no need for another
        self._gone: DlhubHpcError | None = None  # why the I/O thread ended, if it did
        self._local = threading.local()

    @property
    def address(self) -> str:
        if self._address is None:
            self._address = find_hub_address()
        return self._address

    @property
    def max_message_bytes(self) -> int:
        """The largest request this client sends; larger ones raise ``PayloadTooLarge``."""
        if self._max_message_bytes is None:
            self._max_message_bytes = (recorded_message_limit(self.address)
                                       or DEFAULT_MAX_MESSAGE_BYTES)
        return self._max_message_bytes

    def __repr__(self) -> str:
        return f"Client(address={self._address!r}, timeout={self.timeout!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- serving --

    def submit(
        self,
        servable: str,
        inputs: Any,
        *,
        method: str = "",
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
        cache: bool = True,
    ) -> Future[Any]:
        """Send one request; the future holds the output or a ``DlhubHpcError``.

        ``servable`` is ``owner/name`` or ``owner/name@version``; ``method`` defaults to the
        servable's ``run`` (or its first method); ``timeout`` defaults to the client's;
        ``cache=False`` skips the hub's memo cache for this request.
        """
        name, version = parse_ref(servable)
        seconds = self.timeout if isinstance(timeout, UseClientDefault) else timeout
        request_id = self._new_id()
        msg = Request(request_id, name, version, method, inputs, seconds, cache)
        # The hub answers Timeout at the deadline; past it plus a grace, the hub is gone.
        return self._send(request_id, msg, None if seconds is None else seconds + _GRACE)

    def run(
        self,
        servable: str,
        inputs: Any,
        *,
        method: str = "",
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
        cache: bool = True,
    ) -> Any:
        """Run ``servable`` on ``inputs`` and return its output (raises ``DlhubHpcError``).

        Blocks the calling thread, which talks to the hub on a socket of its own.
        """
        name, version = parse_ref(servable)
        seconds = self.timeout if isinstance(timeout, UseClientDefault) else timeout
        request_id = self._new_id()
        frames = _frames(Request(request_id, name, version, method, inputs, seconds, cache))
        self._check_size(frames)
        wait = None if seconds is None else seconds + _GRACE
        return self._thread_socket().call(request_id, frames, wait, self.address)

    def run_batch(
        self,
        servable: str,
        inputs: list[Any],
        *,
        method: str = "",
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
        cache: bool = True,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Run ``servable`` on each of ``inputs``; outputs come back in the same order.

        The requests leave together, so the hub batches them and may split them across
        workers. A failed item raises its error, or with ``return_exceptions=True`` (as in
        ``asyncio.gather``) stands in the list in place of its output.
        """
        futures = [
            self.submit(servable, x, method=method, timeout=timeout, cache=cache) for x in inputs
        ]
        if not return_exceptions:
            return [f.result() for f in futures]
        return [f.exception() or f.result() for f in futures]

    def _thread_socket(self) -> _ThreadSocket:
        if self._closing.is_set():
            raise DlhubHpcError("the client is closed")
        channel: _ThreadSocket | None = getattr(self._local, "channel", None)
        if channel is None or channel.sock.closed:
            channel = self._local.channel = _ThreadSocket(self.address, self._curve,
                                                          self._context)
        return channel

    # -- administration --

    def control(self, op: str, timeout: float = 30.0, **args: Any) -> Any:
        """Run a hub operation; ``HubUnavailable`` if no answer comes within ``timeout``."""
        request_id = self._new_id()
        return self._send(request_id, Control(request_id, op, args), timeout).result()

    def publish(self, directory: str | Path) -> dict[str, Any]:
        """Publish a servable directory; returns its name, version and digest."""
        bundle = make_bundle(Path(directory))
        result: dict[str, Any] = self.control("publish", bundle=bundle.data)
        return result

    def status(self, timeout: float = 10.0) -> dict[str, Any]:
        result: dict[str, Any] = self.control("status", timeout=timeout)
        return result

    def start_workers(self, servable: str, workers: int = 1) -> dict[str, Any]:
        result: dict[str, Any] = self.control(
            "start_workers", timeout=120.0, servable=servable, workers=workers)
        return result

    def stop_workers(
        self, servable: str | None = None, blocks: list[str] | None = None
    ) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.control(
            "stop_workers", timeout=120.0, servable=servable, blocks=blocks)
        return result

    def start_pilot(
        self, servable: str, profile: str | Path | Mapping[str, Any] = "local",
        nodes: int | None = None,
    ) -> dict[str, Any]:
        """Start a pilot for ``servable`` from a site profile (a name, a YAML path, or data)."""
        if hasattr(profile, "model_dump"):
            profile = profile.model_dump(mode="json")
        sent = dict(profile) if isinstance(profile, Mapping) else str(profile)
        result: dict[str, Any] = self.control(
            "pilot_start", timeout=180.0, servable=servable, profile=sent, nodes=nodes)
        return result

    def pilot_status(self) -> list[dict[str, Any]]:
        """Every pilot: profile, servable, limits, and its blocks with their states."""
        result: list[dict[str, Any]] = self.control("pilot_status", timeout=60.0)
        return result

    def stop_pilot(
        self, pilots: list[str] | None = None, servable: str | None = None
    ) -> list[dict[str, Any]]:
        """Stop the named pilots, or those of ``servable``, or (with neither) all."""
        result: list[dict[str, Any]] = self.control(
            "pilot_stop", timeout=120.0, pilots=pilots, servable=servable)
        return result

    def shutdown_hub(self) -> None:
        self.control("shutdown")

    def wait_for_workers(self, servable: str, count: int = 1, timeout: float = 60.0) -> None:
        """Block until ``count`` workers of ``servable`` are loaded and serving."""
        name, _ = parse_ref(servable)
        deadline = time.monotonic() + timeout
        while True:
            workers = [
                w for w in self.status()["workers"]
                if w["servable"].split("@")[0] == name and w["state"] != "loading"
            ]
            if len(workers) >= count:
                return
            if time.monotonic() > deadline:
                raise HubUnavailable(
                    f"{len(workers)} of {count} workers for {servable} are ready after "
                    f"{timeout}s; see 'dlhub-hpc status' and the pilot logs",
                    servable=servable,
                )
            time.sleep(0.1)

    # -- plumbing --

    def _new_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    def _check_size(self, frames: list[Any]) -> None:
        """Refuse, before sending, a request the hub would refuse (and cut the line for)."""
        size = sum(memoryview(f).nbytes for f in frames)
        limit = self.max_message_bytes
        if size > limit:
            raise PayloadTooLarge(
                f"the request is {size} bytes, over the limit of {limit} bytes; send a "
                "smaller input (or a file path the servable can read), or raise the hub's "
                "HubConfig.max_message_bytes (and Client(max_message_bytes=...) to match)",
                size=size, limit=limit, setting="HubConfig.max_message_bytes",
            )

    def _send(self, request_id: str, msg: Any, wait: float | None) -> Future[Any]:
        """Queue ``msg`` for the I/O thread; its future fails after ``wait`` seconds unanswered."""
        frames = _frames(msg)  # fails here, in the caller's thread, for values that cannot travel
        self._check_size(frames)
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        with self._lock:
            if self._closing.is_set():
                raise DlhubHpcError("the client is closed")
            if self._gone is not None:
                raise self._gone
            self._ensure_thread()
            self._futures[request_id] = future
        self._outbox.put([request_id, wait, frames])
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
        except zmq.ZMQError:
            if self._context is None:
                raise
            gone = _hub_gone(self.address)  # an embedded hub stopped and took its context along
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
        while not self._outbox.empty():
            request_id, timeout, frames = self._outbox.get()
            if timeout is not None:
                heapq.heappush(self._expiry, (now + timeout, request_id))
            sock.send_multipart(frames, copy=False)

    def _drain_replies(self, sock: zmq.Socket[bytes]) -> None:
        while cast(int, sock.get(zmq.EVENTS)) & _POLLIN:
            frames = sock.recv_multipart(copy=False)
            try:
                reply = decode(frames)
            except ProtocolError as exc:
                logger.warning("dropped a malformed reply: %s", exc)
                continue
            if not isinstance(reply, Reply):
                continue
            with self._lock:
                future = self._futures.pop(reply.request_id, None)
            if future is None:
                continue  # answered already (expired here) or not ours
            if reply.warning:
                warnings.warn(reply.warning, ServableDeprecated, stacklevel=1)
            if reply.ok:
                future.set_result(reply.value)
            else:
                future.set_exception(error_from_wire(reply.error or {}))

    def _expire(self) -> None:
        now = time.monotonic()
        while self._expiry and self._expiry[0][0] <= now:
            _, request_id = heapq.heappop(self._expiry)
            with self._lock:
                future = self._futures.pop(request_id, None)
            if future is not None:
                future.set_exception(self._curve.last_refusal or HubUnavailable(
                    f"no reply from the hub at {self.address}; is it running? "
                    f"Start one with 'dlhub-hpc hub start'{hint(self.address, self._curve)}",
                    address=self.address,
                ))

    def _fail_all(self, error: DlhubHpcError) -> None:
        with self._lock:
            futures, self._futures = self._futures, {}
        for future in futures.values():
            if not future.done():
                future.set_exception(error)

    def close(self) -> None:
        """Stop the client's thread; requests still open fail.

        The calling thread's own socket closes now; other threads' close when they end.
        """
        channel = getattr(self._local, "channel", None)
        if channel is not None:
            channel.close()
            self._local.channel = None
        with self._lock:
            self._closing.set()
            thread, self._thread = self._thread, None
        if thread is not None:
            os.write(self._wake_w, b"x")
            thread.join(timeout=5)
            os.close(self._wake_r)
            os.close(self._wake_w)
