"""The caller's side: ``Client().run(servable, inputs)`` and friends.

Two paths to the hub, each socket owned by one thread:

- ``run`` (blocking) sends from the calling thread on that thread's own DEALER socket and
  waits there for the reply: no hand-off between threads, the lowest latency. That socket
  is closed when its thread ends, or by ``close()``;
- ``submit`` (futures) hands the request to one background thread that owns a DEALER
  socket and its poll loop, through a queue and a wake-up pipe, so any number of requests
  can be in flight from any thread.

``Client`` and ``AsyncClient`` build and check requests in ``ClientCore``; every reply
becomes a value or a typed error in ``reply_value``. No socket is made until the first call.
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
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import Any, cast

import zmq

from dlhub_hpc.client_publication import AdminCalls, PublicationCalls
from dlhub_hpc.errors import (
    ConfigError,
    DlhubHpcError,
    HubUnavailable,
    InvalidInput,
    PayloadTooLarge,
    ProtocolError,
    ServableDeprecated,
    error_from_wire,
)
from dlhub_hpc.hubfile import default_home, read_hub_file
from dlhub_hpc.localpath.caller import CallerPath
from dlhub_hpc.protocol import (
    DEFAULT_CLIENT_PORT,
    DEFAULT_MAX_MESSAGE_BYTES,
    Control,
    Fetch,
    Reply,
    Request,
    check_carriable,
    decode,
    encode,
)
from dlhub_hpc.references import ResultTo, result_path
from dlhub_hpc.security.client import ClientCurve, hint
from dlhub_hpc.security.keys import KeyPair
from dlhub_hpc.servable.bundle import make_bundle
from dlhub_hpc.servable.spec import parse_ref
from dlhub_hpc.transfer import call as streamed
from dlhub_hpc.transfer.pending import PendingTransfers
from dlhub_hpc.transfer.window import Outgoing

logger = logging.getLogger(__name__)

_POLLIN = int(zmq.POLLIN)  # a plain int: enum flag arithmetic costs microseconds per call
_SLICE = 0.25  # seconds a waiting call sleeps between looks at a refused handshake or close()
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


# -- the one reply path, and the errors of a reply that never comes --

def reply_value(reply: Reply, stacklevel: int = 2) -> Any:
    """The value a ``Reply`` carries, or its error raised as the typed ``DlhubHpcError``.

    A deprecation notice on the reply becomes a ``ServableDeprecated`` warning.
    """
    if reply.warning:
        warnings.warn(reply.warning, ServableDeprecated, stacklevel=stacklevel + 1)
    if reply.ok:
        return streamed.plain(reply.value)  # a streamed output no call here received
    raise error_from_wire(reply.error or {})


def settle(future: Any, reply: Reply) -> None:
    """Resolve ``future`` (concurrent or asyncio) with what ``reply`` says."""
    try:
        value = reply_value(reply, stacklevel=1)
    except DlhubHpcError as exc:
        future.set_exception(exc)
    else:
        future.set_result(value)


def decode_reply(frames: list[Any], fetch: Fetch | None = None) -> Reply | None:
    """``frames`` as a ``Reply``; None (logged) for anything else the socket received.
    ``fetch`` takes arrays that came by the same-node fast path."""
    try:
        reply = decode(frames, fetch=fetch)
    except ProtocolError as exc:
        logger.warning("dropped a malformed reply: %s", exc)
        return None
    return reply if isinstance(reply, Reply) else None


def no_reply(address: str, curve: ClientCurve) -> DlhubHpcError:
    """Why a request went unanswered: a refused handshake if one was seen, else no hub."""
    return curve.last_refusal or HubUnavailable(
        f"no reply from the hub at {address}; is it running? "
        f"Start one with 'dlhub-hpc hub start'{hint(address, curve)}",
        address=address,
    )


def hub_gone(address: str) -> HubUnavailable:
    return HubUnavailable(f"the hub at {address} has stopped; its in-process address went with "
                          "it", address=address)


def client_closed() -> DlhubHpcError:
    return DlhubHpcError("the client is closed")


def asked_version(status: dict[str, Any], servable: str) -> str:
    """``name@version`` as asked, or with the latest published version when none is."""
    name, version = parse_ref(servable)
    if version is None:
        versions = [int(p["version"]) for p in status.get("published", []) if p["name"] == name]
        version = max(versions, default=None)
    return name if version is None else f"{name}@{version}"


def workers_ready(status: dict[str, Any], servable: str) -> int:
    """How many workers of ``servable`` (the version asked, else the latest) are serving."""
    ref = asked_version(status, servable)
    return sum(1 for w in status["workers"]
               if (w["servable"] == ref or w["servable"].split("@")[0] == ref)
               and w["state"] != "loading")


def raise_load_failure(status: dict[str, Any], servable: str) -> None:
    """Raise the load error the hub holds for the asked version, if its workers all failed."""
    error = status.get("load_failures", {}).get(asked_version(status, servable))
    if error is not None:
        raise error_from_wire(error)


def workers_missing(servable: str, ready: int, count: int, timeout: float) -> HubUnavailable:
    return HubUnavailable(f"{ready} of {count} workers for {servable} are ready after "
                          f"{timeout}s; see 'dlhub-hpc status' and the pilot logs",
                          servable=servable)


def checked_parameters(parameters: Any) -> dict[str, Any] | None:
    """``parameters`` as a request carries them: None when there are none to override
    (so such requests batch and memoize with the plain ones); ``InvalidInput`` unless a
    dict keyed by the method's parameter names."""
    if parameters is None:
        return None
    if not isinstance(parameters, dict) or not all(isinstance(k, str) for k in parameters):
        raise InvalidInput("parameters should be a dict of the method's parameter names to "
                           f"values, not {type(parameters).__name__}", path="parameters")
    return dict(parameters) or None


class RequestFuture(Future[Any]):
    """The future ``submit`` returns; ``request_id`` names it to ``request_status``."""

    def __init__(self, request_id: str) -> None:
        super().__init__()
        self.request_id = request_id


class ClientCore:
    """What a client is before it has sockets: where the hub is, its keys and limits, and
    the building and checking of requests (``Client`` and ``AsyncClient`` share it)."""

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
        self._ids = itertools.count()
        self._prefix = uuid.uuid4().hex[:8]
        # Large arrays to and from a hub on this node: sealed memfds, not CurveZMQ.
        self._fast = CallerPath()

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
        return f"{type(self).__name__}(address={self._address!r}, timeout={self.timeout!r})"

    def _request(self, servable: str, inputs: Any, method: str,
                 timeout: float | UseClientDefault | None, cache: bool,
                 parameters: dict[str, Any] | None = None,
                 result_to: ResultTo = None,
                 ) -> tuple[str, list[Any], float | None]:
        """A request's id, its checked frames, and how long to wait for its reply."""
        name, version = parse_ref(servable)
        seconds = self.timeout if isinstance(timeout, UseClientDefault) else timeout
        request_id = self._new_id()
        frames = self._frames(Request(request_id, name, version, method, inputs, seconds, cache,
                                      checked_parameters(parameters),
                                      result_to=result_path(result_to)))
        # The hub answers Timeout at the deadline; past it plus a grace, the hub is gone.
        return request_id, frames, None if seconds is None else seconds + _GRACE

    def _control(self, op: str, args: dict[str, Any]) -> tuple[str, list[Any]]:
        request_id = self._new_id()
        return request_id, self._frames(Control(request_id, op, args))

    def _new_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    def _frames(self, msg: Request | Control) -> list[Any]:
        """``msg`` encoded, after refusing what the hub could not carry (``InvalidInput``)
        or would refuse for its size (``PayloadTooLarge``): before anything is sent."""
        if isinstance(msg, Request):
            check_carriable(msg.payload, "the input")
            if msg.parameters:
                check_carriable(msg.parameters, "the parameters")
        else:
            check_carriable(msg.args, f"the arguments of {msg.op}")
        frames = encode(msg, self._fast.share() if isinstance(msg, Request) else None)
        size = sum(memoryview(f).nbytes for f in frames)
        limit = self.max_message_bytes
        if size > limit:
            raise PayloadTooLarge(
                f"the request is {size} bytes, over the limit of {limit} bytes; send a "
                "smaller input (or a file path the servable can read), or raise the hub's "
                "HubConfig.max_message_bytes (and Client(max_message_bytes=...) to match)",
                size=size, limit=limit, setting="HubConfig.max_message_bytes",
            )
        return frames

    @staticmethod
    def _bundle(directory: str | Path) -> bytes:
        return make_bundle(Path(directory)).data


class _ThreadSocket:
    """A DEALER socket one caller thread uses for ``run``; its lock is held for a call, so
    another thread closes it only between calls (ZeroMQ sockets are not thread-safe)."""

    def __init__(self, address: str, curve: ClientCurve, context: zmq.Context[Any] | None,
                 closing: threading.Event, fetch: Fetch | None = None) -> None:
        try:
            self.sock: zmq.Socket[bytes] = (context or zmq.Context.instance()).socket(zmq.DEALER)
        except zmq.ZMQError:  # the context of an embedded hub that has stopped
            raise hub_gone(address) from None
        self.sock.setsockopt(zmq.LINGER, 0)
        self.curve = curve
        self.monitor = curve.secure(self.sock, address)
        self.sock.connect(address)
        self.lock = threading.Lock()
        self._closing = closing
        self._fetch = fetch  # arrays that come by the same-node fast path
        self._wait: float | None = None  # the receive timeout now set on the socket

    def call(self, request_id: str, frames: list[Any], wait: float | None, address: str,
             upload: Outgoing | None = None) -> Any:
        with self.lock:
            if self.sock.closed:
                raise client_closed()
            if upload is None:
                reply = self._exchange(request_id, frames, wait, address)
            else:  # a large array input, in chunks (dlhub_hpc.transfer)
                reply = streamed.exchange(self.sock, request_id, frames, upload, wait, address)
            reply = streamed.fetch(self.sock, reply)  # a large array output, in chunks
        return reply_value(reply, stacklevel=3)

    def _exchange(self, request_id: str, frames: list[Any], wait: float | None,
                  address: str) -> Reply:
        # A blocking receive with RCVTIMEO: cheaper per call than a poller. The wait is cut
        # in slices, to notice a refused handshake or close() between them.
        step = min(wait, _SLICE) if wait is not None else _SLICE
        if step != self._wait:
            self.sock.setsockopt(zmq.RCVTIMEO, math.ceil(step * 1000))
            self._wait = step
        try:
            self.sock.send_multipart(frames, copy=False)
        except zmq.ContextTerminated:
            self._shut()  # so that the stopped hub's context can finish terminating
            raise hub_gone(address) from None
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            try:
                reply = decode_reply(self.sock.recv_multipart(copy=False), self._fetch)
            except zmq.ContextTerminated:
                self._shut()
                raise hub_gone(address) from None
            except zmq.Again:
                if self._closing.is_set():
                    raise client_closed() from None
                refused = self.curve.refusal(self.monitor, address)
                if refused is not None:
                    raise refused from None
                if deadline is None or time.monotonic() < deadline:
                    continue
                raise no_reply(address, self.curve) from None
            if deadline is not None and time.monotonic() >= deadline:
                raise no_reply(address, self.curve)
            if reply is not None and reply.request_id == request_id:
                return reply
            # else: the late answer to an earlier call that gave up; drop it

    def close(self) -> None:
        with self.lock:  # waits for a call in progress: it stops within a slice
            self._shut()

    def _shut(self) -> None:
        if not self.sock.closed:
            ClientCurve.close(self.sock, self.monitor)
            self.sock.close(linger=0)


class _ThreadSockets:
    """The per-thread sockets of one client. Each is closed when its thread ends (a
    finalizer on a token only that thread's local storage holds, which the interpreter drops
    as the thread exits), when a new thread finds its thread dead, or by ``close_all``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[threading.Thread, tuple[_ThreadSocket, weakref.finalize]] = {}
        self._local = threading.local()
        self._pid = os.getpid()

    def get(self, make: Callable[[], _ThreadSocket]) -> _ThreadSocket:
        channel: _ThreadSocket | None = getattr(self._local, "channel", None)
        if channel is not None and not channel.sock.closed:
            return channel
        self._sweep()
        channel = make()
        thread, token = threading.current_thread(), _Token()
        done = weakref.finalize(token, self._release, thread)
        done.atexit = False  # at exit the process's sockets go with it
        with self._lock:
            self._open[thread] = (channel, done)
        self._local.channel, self._local.token = channel, token
        return channel

    def sockets(self) -> list[zmq.Socket[bytes]]:
        """The sockets open now, one per thread that called and has not ended."""
        with self._lock:
            return [channel.sock for channel, _ in self._open.values()]

    def _release(self, thread: threading.Thread) -> None:
        if os.getpid() != self._pid:
            # A forked child (a provider's subprocess) drops other threads' locals: their
            # sockets are the parent's, and a call in progress holds the lock for good.
            return
        with self._lock:
            entry = self._open.pop(thread, None)
        if entry is not None:
            entry[0].close()

    def _sweep(self) -> None:
        with self._lock:
            dead = [t for t in self._open if not t.is_alive()]
        for thread in dead:
            self._release(thread)

    def close_all(self) -> None:
        with self._lock:
            entries, self._open = list(self._open.values()), {}
        for channel, done in entries:
            done.detach()
            channel.close()


class _Token:  # held only by one thread's local storage: it dies with the thread
    pass


class Client(ClientCore, AdminCalls[Any], PublicationCalls[Any]):
    """Talks to one hub. Thread-safe; use as a context manager or call ``close()``.

    Serving: ``run``, ``submit`` (futures), ``run_batch``; ``publish`` and
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
        self._transfers: PendingTransfers | None = None  # the I/O thread's, made there
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

    @property
    def local_fast_path(self) -> bool:
        """Whether large arrays go as sealed memfds when the hub runs on this node (the
        default); False sends them through the hub's encrypted connection."""
        return self._fast.enabled

    @local_fast_path.setter
    def local_fast_path(self, on: bool) -> None:
        self._fast.enabled = on

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
        while not self._outbox.empty():
            request_id, timeout, frames, upload = self._outbox.get()
            if upload is not None and self._transfers is not None:
                self._transfers.upload(request_id, upload)
            if timeout is not None:
                heapq.heappush(self._expiry, (now + timeout, request_id))
            sock.send_multipart(frames, copy=False)

    def _drain_replies(self, sock: zmq.Socket[bytes]) -> None:
        while cast(int, sock.get(zmq.EVENTS)) & _POLLIN:
            assert self._transfers is not None
            # A transfer's chunk or credit moves it; a reply whose output streams waits for it.
            reply = self._transfers.take(sock.recv_multipart(copy=False), self._fast.fetch)
            if reply is None:
                continue
            with self._lock:
                future = self._futures.pop(reply.request_id, None)
            # future None: answered already (expired here) or not ours
            self._transfers.settle(reply, None if future is None else partial(settle, future))

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
        self._fast.close()
        if thread is not None:
            os.write(self._wake_w, b"x")
            thread.join(timeout=5)
            os.close(self._wake_r)
            os.close(self._wake_w)
