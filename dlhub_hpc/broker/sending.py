"""Sending from the hub's loop (``BrokerServer`` inherits it): the state's actions applied,
messages encoded and sent to clients, in-process callers and workers.

A reply to a client that does not read (past ``client_send_hwm``) or has gone is dropped
and counted; one whose value the wire cannot carry becomes an error reply.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from typing import Any

import zmq

from dlhub_hpc.broker.bundles import ReplyBundles
from dlhub_hpc.broker.events import (
    Action,
    LoadServable,
    ReleaseServable,
    StartServable,
    ToClient,
    ToWorker,
    ToWorkers,
)
from dlhub_hpc.broker.reference_routing import ReferenceRouting
from dlhub_hpc.broker.state import BrokerState
from dlhub_hpc.broker.streams import HubStreams
from dlhub_hpc.broker.tracing import to_client as tracing_to_client
from dlhub_hpc.broker.tracing import to_worker as tracing_to_worker
from dlhub_hpc.broker.tracing import tracing
from dlhub_hpc.errors import DlhubHpcError
from dlhub_hpc.localpath.hubside import HubLocalPath, Share
from dlhub_hpc.metrics.recorder import LoopMetrics, frames_bytes
from dlhub_hpc.protocol import Assign, Message, Reply, Shutdown, encode
from dlhub_hpc.protocol.bundle import bundle

logger = logging.getLogger(__name__)

ServableSource = Callable[[str, int], tuple[dict[str, Any], bytes]]  # -> (spec, bundle)

_SNDMORE = int(zmq.SNDMORE)
_COPY_BELOW = 65536  # smaller frames are copied anyway: a zero-copy Frame only adds cost
# How the state knows inproc callers: ZeroMQ's own routing ids are 5 bytes starting with a
# zero byte, so no id it makes for a remote peer starts with this.
LOCAL_PREFIX = b"\x00local:"


class ActionSender:
    """The loop's sending side: what the state decided, onto the sockets."""

    state: BrokerState
    fast: HubLocalPath
    on_demand: Callable[[StartServable | ReleaseServable], None] | None
    loop_metrics: LoopMetrics | None
    _servables: ServableSource
    _clients: zmq.Socket[bytes] | None
    _local: zmq.Socket[bytes] | None
    _workers: zmq.Socket[bytes] | None
    _streams: HubStreams
    _references: ReferenceRouting
    _bundles: ReplyBundles

    # -- what the server provides --

    def _survive(self, step: Callable[..., Any], *args: Any) -> None:
        raise NotImplementedError

    # -- actions --

    def _reply_error(self, identity: bytes, request_id: str, exc: DlhubHpcError) -> None:
        self._to_client(identity, Reply(request_id, False, None, exc.to_wire()))

    def _apply(self, actions: list[Action]) -> None:
        if not actions:  # most requests of a burst: batched when the read ends
            return
        self._bundles.begin()
        try:
            self._apply_each(actions)
        finally:
            for identity, held in self._bundles.end():
                self._send_held(identity, held)

    def _apply_each(self, actions: list[Action]) -> None:
        self._streams.before(actions, self._send_to)  # a streamed value's receiver
        for action in actions:
            if isinstance(action, ToClient):
                self._to_client(action.identity, action.message)
            elif isinstance(action, ToWorker):
                if tracing():
                    tracing_to_worker(action.identity, action.message)
                self._send(self._workers, action.identity, action.message,
                           share=self.fast.batch_share(action.identity, action.message))
            elif isinstance(action, ToWorkers):
                assert self._workers is not None
                frames = encode(action.message)
                if self.loop_metrics is not None:
                    self.loop_metrics.sent_bytes += frames_bytes(frames) * len(action.identities)
                for identity in action.identities:
                    _send_frames(self._workers, identity, frames, 0)
            elif isinstance(action, LoadServable):
                self._assign(action)
            elif self.on_demand is not None:  # StartServable or ReleaseServable
                self._survive(self.on_demand, action)

    def _assign(self, action: LoadServable) -> None:
        info = action.servable
        try:
            spec, bundle = self._servables(info.name, info.version)
        except DlhubHpcError as exc:
            logger.error("cannot send %s@%s to a worker: %s", info.name, info.version, exc)
            # A failed load, as if the worker had reported it: its callers get this error.
            self._apply(self.state.assign_failed(action.identity, exc, time.monotonic()))
            self._send(self._workers, action.identity, Shutdown(str(exc)))
            return
        msg = Assign(info.name, info.version, info.digest, spec, bundle)
        self._send(self._workers, action.identity, msg)

    def _send_to(self, worker: bool, identity: bytes, msg: Message) -> None:
        if worker:
            self._send(self._workers, identity, msg)
        else:
            self._to_client(identity, msg)

    def _to_client(self, identity: bytes, msg: Message) -> None:
        if self._references.takes_reply(identity, msg):
            return  # sent once its value is written to its result_to
        if tracing():
            tracing_to_client(msg)
        if identity.startswith(LOCAL_PREFIX):
            self._send(self._local, identity[len(LOCAL_PREFIX):], msg)
            return
        share = self.fast.reply_share(identity, msg)
        frames = self._encoded(msg, share)
        before = self._bundles.hold(identity, frames) if share is None else []
        if before is None:
            return  # held: it goes in a bundle when this step ends
        if before:
            self._send_held(identity, before)
        self._to_client_frames(identity, frames)

    def _send_held(self, identity: bytes, held: list[bytes]) -> None:
        """Messages held for a client: one as it is, several as one bundle."""
        if len(held) == 1:
            self._to_client_frames(identity, held)
            return
        self.state.count("bundles_out")
        self._to_client_frames(identity, [bundle(held)], len(held))

    def _to_client_frames(self, identity: bytes, frames: list[Any], count: int = 1) -> None:
        """Send one message (``count`` bundled in it) to a client."""
        assert self._clients is not None
        try:
            _send_frames(self._clients, identity, frames, zmq.NOBLOCK)
        except zmq.Again:  # the client has client_send_hwm replies unread: it does not read
            self.state.count("replies_dropped_hwm", count)
            return
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                raise
            self.state.count("replies_unroutable", count)  # the client has gone
            return
        if self.loop_metrics is not None:
            self.loop_metrics.sent_bytes += frames_bytes(frames)

    def _encoded(self, msg: Message, share: Share | None = None) -> list[Any]:
        try:
            frames = encode(msg, share)
            if share is not None and share.used:
                self.state.count("local_path_out", share.used)
        except DlhubHpcError as exc:  # a value the wire cannot carry
            if not isinstance(msg, Reply):
                raise
            frames = encode(Reply(msg.request_id, False, None, exc.to_wire()))
        return frames

    def _send(self, sock: zmq.Socket[bytes] | None, identity: bytes, msg: Message,
              flags: int = 0, share: Share | None = None) -> None:
        assert sock is not None
        frames = self._encoded(msg, share)
        _send_frames(sock, identity, frames, flags)
        if self.loop_metrics is not None:
            self.loop_metrics.sent_bytes += frames_bytes(frames)


def _send_frames(sock: zmq.Socket[bytes], identity: bytes, frames: list[Any],
                 flags: int) -> None:
    """Send one message; a lone small header (most replies) by two plain sends, which
    cost a third of ``send_multipart(copy=False)`` per message. A ROUTER refuses (HWM,
    unroutable) on the identity frame, so the message goes whole or not at all."""
    if len(frames) == 1 and type(frames[0]) is bytes and len(frames[0]) < _COPY_BELOW:
        sock.send(identity, flags | _SNDMORE)
        sock.send(frames[0], flags)
    else:
        sock.send_multipart([identity, *frames], flags=flags, copy=False)
