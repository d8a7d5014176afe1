"""The broker's thin ZMQ shell: ROUTER sockets and one poll loop around ``BrokerState``.

Clients connect to ``client_address``, workers to ``worker_address``, and callers in the
hub's own process to ``local_endpoint`` (inproc; they act as the hub's admin). Every socket is made,
used and closed in the loop's own thread; other threads reach the loop only through
``stop()`` and finished control futures, both of which wake it through a pipe.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, cast

import zmq

from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.broker.pipeline import PIPELINE_IDENTITY
from dlhub_hpc.broker.state import (
    Action,
    BrokerState,
    FromClient,
    FromWorker,
    LoadServable,
    Tick,
    ToClient,
    ToWorker,
    ToWorkers,
)
from dlhub_hpc.errors import DlhubHpcError, ProtocolError
from dlhub_hpc.protocol import (
    Assign,
    Bye,
    Control,
    Message,
    Reply,
    Request,
    Shutdown,
    decode,
    encode,
)
from dlhub_hpc.security.zap import (
    CLIENT_DOMAIN,
    WORKER_DOMAIN,
    ServerAuth,
    ZapHandler,
    make_curve_server,
    user_id,
)

logger = logging.getLogger(__name__)

ControlHandler = Callable[[dict[str, Any]], Any]  # returns a value, or a Future of one
ServableSource = Callable[[str, int], tuple[dict[str, Any], bytes]]  # -> (spec, bundle)

_POLLIN = int(zmq.POLLIN)  # a plain int: enum flag arithmetic costs microseconds per call
_DRAIN_LIMIT = 512  # messages taken from one socket per loop turn, so neither starves
# How the state knows inproc callers: ZeroMQ's own routing ids are 5 bytes starting with a
# zero byte, so no id it makes for a remote peer starts with this.
LOCAL_PREFIX = b"\x00local:"


class BrokerServer:
    """Serves one ``BrokerState``; ``run()`` is the loop, in the thread that calls it."""

    def __init__(
        self,
        state: BrokerState,
        config: HubConfig,
        servables: ServableSource,
        control: dict[str, ControlHandler],
    ) -> None:
        self.state = state
        self.config = config
        self._servables = servables
        self._control = control
        self._stopping = threading.Event()
        self._stop_reason = "stopped"
        self._bound = threading.Event()
        self._finished: queue.SimpleQueue[tuple[bytes, str, Future[Any]]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self.client_endpoint = ""
        self.worker_endpoint = ""
        # Callers in this process (``Hub.client()``) connect here: no TCP stack, no
        # encryption, no I/O thread hop. inproc needs the same context, hence it is public.
        self.context: zmq.Context[Any] = zmq.Context()
        self.local_endpoint = f"inproc://dlhub-hpc-hub-{uuid.uuid4().hex[:12]}"
        self._clients: zmq.Socket[bytes] | None = None
        self._local: zmq.Socket[bytes] | None = None  # inproc callers, on a socket of their own
        self._workers: zmq.Socket[bytes] | None = None
        self.auth: ServerAuth | None = None  # CurveZMQ on both sockets; set before run()

    def __repr__(self) -> str:
        return f"BrokerServer(client={self.client_endpoint!r}, worker={self.worker_endpoint!r})"

    # -- called from other threads --

    def wait_bound(self, timeout: float) -> bool:
        return self._bound.wait(timeout)

    def stop(self, reason: str = "stopped") -> None:
        self._stop_reason = reason
        self._stopping.set()
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # a closed pipe: the loop is gone already
            os.write(self._wake_w, b"x")

    # -- the loop --

    def run(self) -> None:
        ctx = self.context
        zap = None if self.auth is None else ZapHandler(ctx, self.auth.lookup)
        try:
            clients = self._clients = self._router(ctx, self.config.client_address,
                                                   self.auth, CLIENT_DOMAIN)
            workers = self._workers = self._router(ctx, self.config.worker_address,
                                                   self.auth, WORKER_DOMAIN)
            local = self._local = self._router(ctx, self.local_endpoint)
        except DlhubHpcError:
            for sock in (self._clients, self._workers):
                if sock is not None:
                    sock.close(linger=0)
            if zap is not None:
                zap.close()
            _term_later(ctx)
            raise
        self.client_endpoint = clients.getsockopt_string(zmq.LAST_ENDPOINT)
        self.worker_endpoint = workers.getsockopt_string(zmq.LAST_ENDPOINT)
        poller = zmq.Poller()
        poller.register(clients, zmq.POLLIN)
        poller.register(local, zmq.POLLIN)
        poller.register(workers, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        if zap is not None:
            poller.register(zap.sock, zmq.POLLIN)
        logger.info("hub listening: clients %s, workers %s",
                    self.client_endpoint, self.worker_endpoint)
        self._bound.set()
        try:
            wait = 0.0
            while not self._stopping.is_set():
                ready = dict(poller.poll(math.ceil(wait * 1000)))
                if clients in ready:
                    self._drain(clients, self._on_client_frames)
                if local in ready:
                    self._drain(local, self._on_local_frames)
                if workers in ready:
                    self._drain(workers, self._on_worker_frames)
                if zap is not None and zap.sock in ready:
                    zap.handle()
                if self._wake_r in ready:
                    self._on_wake()
                now = time.monotonic()
                wait = self.state.next_wakeup(now)
                if wait == 0:
                    self._apply(self.state.handle(Tick(), now))
                    wait = self.state.next_wakeup(now)
            self._drain_shutdown(poller)
        finally:
            clients.close(linger=0)
            local.close(linger=0)
            workers.close(linger=0)
            if zap is not None:
                zap.close()
            _term_later(ctx)
            os.close(self._wake_r)
            os.close(self._wake_w)
            logger.info("hub stopped: %s", self._stop_reason)

    @staticmethod
    def _router(ctx: zmq.Context[Any], address: str, auth: ServerAuth | None = None,
                domain: str = "") -> zmq.Socket[bytes]:
        sock = ctx.socket(zmq.ROUTER)
        if auth is not None:
            make_curve_server(sock, auth.credentials.server, domain)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        try:
            sock.bind(address)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise DlhubHpcError(
                f"cannot listen on {address}: {exc}; is another hub running there?",
                address=address,
            ) from exc
        return sock

    def _drain(self, sock: zmq.Socket[bytes], handle: Callable[[list[Any]], None]) -> None:
        # Asking EVENTS is cheaper than the zmq.Again a last empty recv would raise.
        for _ in range(_DRAIN_LIMIT):
            if not cast(int, sock.get(zmq.EVENTS)) & _POLLIN:
                return
            handle(sock.recv_multipart(copy=False))

    def _decode(self, frames: list[Any]) -> tuple[bytes, Message] | None:
        try:
            if len(frames) < 2:
                raise ProtocolError("no identity or no header frame")
            return frames[0].bytes, decode(frames[1:])
        except ProtocolError as exc:
            self.state.stats["malformed_frames"] += 1
            logger.warning("dropped a malformed message: %s", exc.message)
            return None

    def _on_client_frames(self, frames: list[Any]) -> None:
        self._on_caller_frames(frames, None)

    def _on_local_frames(self, frames: list[Any]) -> None:
        # Only code in this process reaches the inproc socket: it acts as the hub's admin.
        self._on_caller_frames(frames, self.auth.local_user if self.auth is not None else "")

    def _on_caller_frames(self, frames: list[Any], local_user: str | None) -> None:
        decoded = self._decode(frames)
        if decoded is None:
            return
        identity, msg = decoded
        if local_user is not None:
            identity = LOCAL_PREFIX + identity  # one namespace for both sockets' callers
        elif identity == PIPELINE_IDENTITY or identity.startswith(LOCAL_PREFIX):
            # A peer may choose its own routing id: never let one pose as the hub's pipeline
            # runner, whose step answers would feed other callers' pipelines, or as a
            # caller in the hub's own process.
            self.state.stats["malformed_frames"] += 1
            logger.warning("dropped a message from a client posing as the hub itself")
            return
        user = local_user
        if user is None:
            user = user_id(frames[1]) if self.auth is not None else ""
        if isinstance(msg, Request):
            self._apply(self.state.handle(FromClient(identity, msg, user), time.monotonic()))
        elif isinstance(msg, Control):
            self._on_control(identity, msg, user)
        else:
            self.state.stats["unexpected_messages"] += 1

    def _on_worker_frames(self, frames: list[Any]) -> None:
        decoded = self._decode(frames)
        if decoded is not None:
            identity, msg = decoded
            self._apply(self.state.handle(FromWorker(identity, msg), time.monotonic()))

    # -- control operations --

    def _on_control(self, identity: bytes, msg: Control, user: str = "") -> None:
        handler = self._control.get(msg.op)
        if handler is None:
            self._reply_error(identity, msg.request_id, DlhubHpcError(
                f"unknown operation {msg.op!r}; known: {sorted(self._control)}"))
            return
        try:
            # The caller's identity comes from the connection, never from what it sent.
            result = handler({**msg.args, "caller": user})
        except DlhubHpcError as exc:
            self._reply_error(identity, msg.request_id, exc)
            return
        except Exception as exc:
            logger.exception("control operation %s failed", msg.op)
            self._reply_error(identity, msg.request_id, DlhubHpcError(
                f"{msg.op} failed inside the hub: {type(exc).__name__}: {exc}"))
            return
        if isinstance(result, Future):
            def done(fut: Future[Any], rid: str = msg.request_id) -> None:
                self._finished.put((identity, rid, fut))
                self._wake()
            result.add_done_callback(done)
        else:
            self._to_client(identity, Reply(msg.request_id, True, result, None))

    def _on_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while not self._finished.empty():
            identity, rid, fut = self._finished.get()
            exc = fut.exception()
            if exc is None:
                self._to_client(identity, Reply(rid, True, fut.result(), None))
            elif isinstance(exc, DlhubHpcError):
                self._reply_error(identity, rid, exc)
            else:
                self._reply_error(identity, rid, DlhubHpcError(f"{type(exc).__name__}: {exc}"))

    def _reply_error(self, identity: bytes, request_id: str, exc: DlhubHpcError) -> None:
        self._to_client(identity, Reply(request_id, False, None, exc.to_wire()))

    # -- actions --

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, ToClient):
                self._to_client(action.identity, action.message)
            elif isinstance(action, ToWorker):
                self._send(self._workers, action.identity, action.message)
            elif isinstance(action, ToWorkers):
                assert self._workers is not None
                frames = encode(action.message)
                for identity in action.identities:
                    self._workers.send_multipart([identity, *frames], copy=False)
            elif isinstance(action, LoadServable):
                self._assign(action)

    def _assign(self, action: LoadServable) -> None:
        info = action.servable
        try:
            spec, bundle = self._servables(info.name, info.version)
        except DlhubHpcError as exc:
            logger.error("cannot send %s@%s to a worker: %s", info.name, info.version, exc)
            self._send(self._workers, action.identity, Shutdown(str(exc)))
            return
        msg = Assign(info.name, info.version, info.digest, spec, bundle)
        self._send(self._workers, action.identity, msg)

    def _to_client(self, identity: bytes, msg: Message) -> None:
        if identity.startswith(LOCAL_PREFIX):
            self._send(self._local, identity[len(LOCAL_PREFIX):], msg)
        else:
            self._send(self._clients, identity, msg)

    def _send(self, sock: zmq.Socket[bytes] | None, identity: bytes, msg: Message) -> None:
        assert sock is not None
        try:
            frames = encode(msg)
        except DlhubHpcError as exc:  # a value the wire cannot carry
            if not isinstance(msg, Reply):
                raise
            frames = encode(Reply(msg.request_id, False, None, exc.to_wire()))
        sock.send_multipart([identity, *frames], copy=False)

    def _drain_shutdown(self, poller: zmq.Poller) -> None:
        """Tell workers to exit and fail what is left, then wait briefly for their goodbyes."""
        self._apply(self.state.shutdown(self._stop_reason))
        assert self._workers is not None
        deadline = time.monotonic() + 2.0
        while self.state.snapshot()["workers"] and time.monotonic() < deadline:
            ready = dict(poller.poll(50))
            if self._workers in ready:
                self._drain(self._workers, self._on_bye_only)

    def _on_bye_only(self, frames: list[Any]) -> None:
        decoded = self._decode(frames)
        if decoded is not None and isinstance(decoded[1], Bye):
            self._apply(self.state.handle(FromWorker(*decoded), time.monotonic()))


def _term_later(ctx: zmq.Context[Any]) -> None:
    """Terminate ``ctx`` once in-process clients have closed their sockets on it too; the
    loop's own sockets are closed already, so the hub never waits for its callers."""
    threading.Thread(target=ctx.term, name="hub-context-term", daemon=True).start()
