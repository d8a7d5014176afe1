"""The broker's thin ZMQ shell: ROUTER sockets and one poll loop around ``BrokerState``.

Clients connect to ``client_address``, workers to ``worker_address``, and callers in the
hub's own process to ``local_endpoint`` (inproc; they act as the hub's admin). Every socket is made,
used and closed in the loop's own thread; other threads reach the loop only through
``stop()`` and finished control futures, both of which wake it through a pipe.

The loop owns the ``BrokerState``: no other thread reads or writes it. Other threads read
a frozen ``Snapshot`` in ``published``; the loop builds one only when a reader asks for
it and the state changed, at most every ``PUBLISH_INTERVAL`` seconds, so a hub with a
thousand workers does not copy all of them twenty times a second for nobody.
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

import msgpack
import zmq

from dlhub_hpc.broker.bundles import ReplyBundles
from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.broker.events import ReleaseServable, StartServable
from dlhub_hpc.broker.intake import CallerIntake
from dlhub_hpc.broker.lane import LargeLane
from dlhub_hpc.broker.reference_routing import ReferenceRouting
from dlhub_hpc.broker.sending import LOCAL_PREFIX, ServableSource, _send_frames
from dlhub_hpc.broker.snapshot import Snapshot
from dlhub_hpc.broker.state import BrokerState, FromWorker, Tick
from dlhub_hpc.broker.streams import HubStreams
from dlhub_hpc.errors import DlhubHpcError, ExecutionError, ProtocolError
from dlhub_hpc.localpath.hubside import Fetch, HubLocalPath
from dlhub_hpc.metrics.recorder import LoopMetrics, frames_bytes
from dlhub_hpc.protocol import (
    INT64_MAX,
    INT64_MIN,
    MAX_DEPTH,
    PROTOCOL_VERSION,
    BatchResult,
    Bye,
    Control,
    Message,
    Reply,
    Shutdown,
    Tag,
    decode,
    peek,
)
from dlhub_hpc.protocol.bundle import BUNDLES_METADATA
from dlhub_hpc.security.tokens import TokenStore
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

_POLLIN = int(zmq.POLLIN)  # a plain int: enum flag arithmetic costs microseconds per call
# A Heartbeat's header starts [version, HEARTBEAT, (msgpack fixarray of 3, two fixints)
_HEARTBEAT = bytes((0x93, PROTOCOL_VERSION, int(Tag.HEARTBEAT)))
_HEARTBEAT_BYTES = 256  # larger: not one of ours; the general path reads it
_DRAIN_LIMIT = 512  # messages taken from one socket per loop turn, so neither starves
# How stale the published snapshot may be while the state changes: it is rebuilt at most
# this often, so a busy loop spends little on it and a reader waits at most this long.
PUBLISH_INTERVAL = 0.05
_PUBLISH_WAIT = 4 * PUBLISH_INTERVAL  # a reader's wait for a fresh one, at most


__all__ = ["LOCAL_PREFIX", "PUBLISH_INTERVAL", "BrokerServer", "ControlHandler",
           "ServableSource", "_send_frames"]


class BrokerServer(CallerIntake):
    """Serves one ``BrokerState``; ``run()`` is the loop, in the thread that calls it.

    Callers' messages come in through ``CallerIntake`` (intake.py); the state's actions go
    out through ``ActionSender`` (sending.py), which it inherits."""

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
        # The same-node fast path: large arrays as sealed memfds (dlhub_hpc.localpath).
        self.fast = HubLocalPath(config.local_fast_path, config.local_min_bytes)
        self._control = {**control, "local_path": self.fast.caller_offer}
        self._stopping = threading.Event()
        self._stop_reason = "stopped"
        self._bound = threading.Event()
        self._finished: queue.SimpleQueue[tuple[bytes, str, Future[Any]]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._lane = LargeLane(self._wake, config.large_backlog_bytes)
        self._streams = HubStreams(config)  # chunked transfers of large arrays
        self._bundles = ReplyBundles()  # replies to a caller that bundles, one frame a step
        # Inputs by reference and result_to: read, fetched and written on threads of their own.
        self._references = ReferenceRouting(
            config, self._wake, lambda: self.auth.local_user if self.auth is not None else "",
            self.state.input_plan, self._on_caller_message, self._to_client)
        self._references.prepare = self.fast.sealed_for_workers  # by memfd to local workers
        # Messages past this go by the lane (or, past the size limit, are refused there).
        self._large_bytes = min(config.large_message_bytes, config.max_message_bytes)
        self.client_endpoint = ""
        self.worker_endpoint = ""
        # Callers in this process (``Hub.client()``) connect here: no TCP stack, no
        # encryption, no I/O thread hop. inproc needs the same context, hence it is public.
        self.context: zmq.Context[Any] = zmq.Context(io_threads=config.io_threads)
        self.local_endpoint = f"inproc://dlhub-hpc-hub-{uuid.uuid4().hex[:12]}"
        self._clients: zmq.Socket[bytes] | None = None
        self._local: zmq.Socket[bytes] | None = None  # inproc callers, on a socket of their own
        self._workers: zmq.Socket[bytes] | None = None
        self.auth: ServerAuth | None = None  # CurveZMQ on both sockets; set before run()
        # Who callers and workers are when auth is None (a loopback benchmark hub).
        self.unauthenticated: tuple[str, str] = ("", "")
        # Starts and stops pilots for servables started on demand (hubops/ondemand.py).
        self.on_demand: Callable[[StartServable | ReleaseServable], None] | None = None
        # Bearer tokens: a request that carries one acts as its identity (set before run()).
        self.tokens: TokenStore | None = None
        # The state as other threads may see it: replaced (never changed) by the loop.
        self._published: Snapshot = Snapshot()
        self._publish_due = 0.0
        self._wanted = False  # a reader found the snapshot stale and waits for a fresh one
        self._fresh = threading.Event()  # set when the loop has answered that wish
        self._loop_thread: threading.Thread | None = None
        self.loop_metrics: LoopMetrics | None = None  # set when the hub serves metrics

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

    @property
    def published(self) -> Snapshot:
        """The state as of its last publication. When the state changed since, a reader
        (off the loop thread) asks the loop for a fresh one and waits for it briefly."""
        snapshot = self._published
        serving = self._bound.is_set() and not self._stopping.is_set()
        if (snapshot.changes == self.state.changes or not serving
                or threading.current_thread() is self._loop_thread):
            return snapshot
        self._fresh.clear()
        self._wanted = True
        self._wake()
        self._fresh.wait(_PUBLISH_WAIT)
        return self._published

    # -- the loop --

    def run(self) -> None:
        self._loop_thread = threading.current_thread()
        ctx = self.context
        zap = None if self.auth is None else ZapHandler(ctx, self.auth.lookup)
        try:
            cfg = self.config
            # A client that stops reading costs at most client_send_hwm replies; larger
            # messages than a socket's limit are refused by ZeroMQ before they are buffered.
            clients = self._clients = self._router(
                ctx, cfg.client_address, self.auth, CLIENT_DOMAIN,
                max_bytes=cfg.max_message_bytes, send_hwm=cfg.client_send_hwm,
                metadata=BUNDLES_METADATA)  # in each handshake: callers may send bundles
            workers = self._workers = self._router(
                ctx, cfg.worker_address, self.auth, WORKER_DOMAIN,
                max_bytes=cfg.worker_max_message_bytes)
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
        self.fast.start()
        self._bound.set()
        try:
            wait = 0.0
            mark = time.monotonic()  # metrics: when the loop last went to poll, or woke
            while not self._stopping.is_set():
                ready = dict(poller.poll(math.ceil(wait * 1000)))
                if self.loop_metrics is not None:
                    mark = _woke(self.loop_metrics, wait, mark)
                if workers in ready:  # first: heartbeats never wait behind callers
                    self._drain(workers, self._on_worker_frames)
                if clients in ready:
                    self._drain_callers(clients, self._on_client_frames)
                if local in ready:
                    self._drain_callers(local, self._on_local_frames)
                if zap is not None and zap.sock in ready:
                    self._survive(zap.handle)
                if self._wake_r in ready:
                    self._survive(self._on_wake)  # finished controls and large messages
                self._survive(self._free_senders)
                now = time.monotonic()
                wait = self.state.next_wakeup(now)
                if wait == 0:
                    # Heartbeats that came while this turn ran count before liveness is judged.
                    self._drain(workers, self._on_worker_frames)
                    now = time.monotonic()
                    self._survive(self._tick, now)
                    wait = self.state.next_wakeup(now)
                wait = min(wait, self._publish(now))
                if self.loop_metrics is not None:
                    mark = _turned(self.loop_metrics, mark)
            self._drain_shutdown(poller)
            self._wanted = True  # the last state, for whoever reads after the loop ends
            self._publish(math.inf)
        finally:
            self._lane.close()
            self._references.close()
            self.fast.close()
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
                domain: str = "", *, max_bytes: int = -1, send_hwm: int = 0,
                metadata: bytes = b"") -> zmq.Socket[bytes]:
        sock = ctx.socket(zmq.ROUTER)
        if metadata:
            sock.setsockopt(zmq.METADATA, metadata)
        if auth is not None:
            make_curve_server(sock, auth.credentials.server, domain)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, send_hwm)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)  # per message part; the loop checks the sum
        if send_hwm:  # a send past the HWM raises (and is counted) instead of vanishing
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
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
            frames = sock.recv_multipart(copy=False)
            if self.loop_metrics is not None:
                self.loop_metrics.received_bytes += frames_bytes(frames)
            try:
                handle(frames)
            except Exception as exc:  # the one boundary: no message may end the loop
                self._on_bad_message(sock, frames, exc)

    def _drain_callers(self, sock: zmq.Socket[bytes],
                       handle: Callable[[list[Any]], None]) -> None:
        """Read all a caller socket holds, then form batches: requests that arrived
        together go to a free worker together, not one by one as they are read."""
        self.state.begin_round()
        try:
            self._drain(sock, handle)
        finally:
            self._survive(lambda: self._apply(self.state.end_round(time.monotonic())))

    def _publish(self, now: float) -> float:
        """Publish the state's snapshot if a reader wants it, it changed and the last is
        old enough; return the seconds until the next is due (inf when none is)."""
        if not self._wanted:
            return math.inf
        if self.state.changes != self._published.changes:
            if now < self._publish_due:
                return self._publish_due - now
            self._published = self.state.view()
            self._publish_due = now + PUBLISH_INTERVAL
        self._wanted = False
        self._fresh.set()
        return math.inf

    def _tick(self, now: float) -> None:
        self._streams.expire(now, self._send_to)
        self._apply(self.state.handle(Tick(), now))

    def _survive(self, step: Callable[..., Any], *args: Any) -> None:
        """Run a loop step that is not one received message; a fault in it is counted and
        logged, and the loop goes on."""
        try:
            step(*args)
        except Exception:
            self.state.count("handler_errors")
            logger.exception("a step of the hub's loop failed")

    def _on_bad_message(self, sock: zmq.Socket[bytes], frames: list[Any],
                        exc: Exception) -> None:
        """Count and log a message that could not be decoded or handled, and answer its
        sender where the message names what to answer (``_answer_bad``)."""
        if isinstance(exc, ProtocolError):
            self.state.count("malformed_frames")
            logger.warning("malformed message: %s", exc.message)
            error: DlhubHpcError = exc
        else:  # a fault of the hub's own, found by this message: it must not end the loop
            self.state.count("handler_errors")
            logger.error("a message failed inside the hub", exc_info=exc)
            error = exc if isinstance(exc, DlhubHpcError) else DlhubHpcError(
                f"the hub failed on this message ({type(exc).__name__}: {exc}); "
                "please report it with the hub's log")
        try:
            answered = self._answer_bad(sock, frames, error)
        except Exception:
            logger.exception("could not answer the sender of a bad message")
            answered = False
        self.state.count("bad_answered" if answered else "bad_dropped")

    def _answer_bad(self, sock: zmq.Socket[bytes], frames: list[Any],
                    error: DlhubHpcError) -> bool:
        """Answer the sender of a bad message, read as far as its tag and first field: a
        caller's request or control gets ``error``; a worker's batch result answers the
        batch's callers (``ExecutionError``) and frees the worker; a hello is refused."""
        peeked = peek(frames[1:]) if len(frames) >= 2 else None
        if peeked is None:
            return False
        tag, first = peeked
        identity = frames[0].bytes
        if sock is not self._workers:
            if tag not in (Tag.REQUEST, Tag.CONTROL) or not isinstance(first, str):
                return False
            self._send(sock, identity, Reply(first, False, None, error.to_wire()), zmq.NOBLOCK)
            return True
        if tag == Tag.HELLO:
            self._send(sock, identity, Shutdown(f"cannot register: {error.message}"))
            return True
        if tag != Tag.BATCH_RESULT or type(first) is not int or not INT64_MIN <= first <= INT64_MAX:
            return False
        failed = ExecutionError(
            f"the worker's result could not be read ({error.message}); a servable must "
            "return plain data: numbers, strings, bytes, numpy arrays, and lists and "
            f"string-keyed dicts of them nested at most {MAX_DEPTH} deep",
        ).to_wire()
        self._from_worker(frames, BatchResult(first, [[False, failed]]))
        return True

    def _decode(self, frames: list[Any], fetch: Fetch | None = None) -> tuple[bytes, Message]:
        if len(frames) < 2:
            raise ProtocolError("no identity or no header frame")
        return frames[0].bytes, decode(frames[1:], fetch=fetch)

    def _on_worker_frames(self, frames: list[Any]) -> None:
        if len(frames) == 2 and self._on_heartbeat(frames):
            return
        fetch = self.fast.worker_fetch(
            frames[0].bytes, lambda: user_id(frames[1]) if self.auth is not None else "")
        msg = self._decode(frames, fetch)[1]
        if fetch is not None and fetch.used:
            self.state.count("local_path_in", fetch.used)
        self._from_worker(frames, msg)


    def _on_heartbeat(self, frames: list[Any]) -> bool:
        """Take a Heartbeat without the general decode (a hub of 1,024 workers reads one
        a millisecond); False for anything else, which the general path reads and judges."""
        header = frames[1]
        if len(header) > _HEARTBEAT_BYTES:
            return False
        raw = header.bytes
        if not raw.startswith(_HEARTBEAT):
            return False
        try:
            values = msgpack.unpackb(raw, raw=False)
        except Exception:  # the general path says what is wrong with it
            return False
        if type(values) is not list or len(values) != 3 or type(values[2]) is not str:
            return False
        user = user_id(header) if self.auth is not None else self.unauthenticated[1]
        actions = self.state.heartbeat(frames[0].bytes, values[2], user, time.monotonic())
        if actions:
            self._apply(actions)
        return True

    def _from_worker(self, frames: list[Any], msg: Message) -> None:
        user = (user_id(frames[1]) if self.auth is not None  # worker:OWNER:KEY
                else self.unauthenticated[1])
        stale = isinstance(msg, BatchResult) and not self.state.runs(frames[0].bytes,
                                                                    msg.batch_id)
        if self._streams.from_worker(frames[0].bytes, user, msg, self._send_to, stale):
            return  # a transfer's step: relayed
        offer = self.fast.on_worker_message(frames[0].bytes, user, msg)
        if offer is not None:  # before its Assign: a worker on this node links first
            self._send(self._workers, frames[0].bytes, offer)
        identity = frames[0].bytes
        self._apply(self.state.handle(FromWorker(identity, msg, user), time.monotonic()))
        if isinstance(msg, BatchResult) and not self._streams.relay.sending(identity):
            # Its streamed outputs were refused, or it had none: it takes work again now.
            self._apply(self.state.outputs_sent(identity, time.monotonic()))

    def _free_senders(self) -> None:
        """Workers whose last output transfer ended take work again."""
        relay = self._streams.relay
        for identity in relay.take_ended():
            if not relay.sending(identity):
                self._apply(self.state.outputs_sent(identity, time.monotonic()))

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
        self._lane.run_finished()
        self._references.run_finished()
        while not self._finished.empty():
            identity, rid, fut = self._finished.get()
            exc = fut.exception()
            if exc is None:
                self._to_client(identity, Reply(rid, True, fut.result(), None))
            elif isinstance(exc, DlhubHpcError):
                self._reply_error(identity, rid, exc)
            else:
                self._reply_error(identity, rid, DlhubHpcError(f"{type(exc).__name__}: {exc}"))

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
        msg = self._decode(frames)[1]
        if isinstance(msg, Bye):
            self._from_worker(frames, msg)


def _woke(loop: LoopMetrics, asked: float, since: float) -> float:
    """Record how late a timed poll came back (poll rounds up to milliseconds)."""
    now = time.monotonic()
    loop.woke(math.ceil(asked * 1000) / 1000, now - since, now)
    return now


def _turned(loop: LoopMetrics, since: float) -> float:
    now = time.monotonic()
    loop.turn(now - since)
    return now


def _term_later(ctx: zmq.Context[Any]) -> None:
    """Terminate ``ctx`` once in-process clients have closed their sockets on it too; the
    loop's own sockets are closed already, so the hub never waits for its callers."""
    threading.Thread(target=ctx.term, name="hub-context-term", daemon=True).start()
