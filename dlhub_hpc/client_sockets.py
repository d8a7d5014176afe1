"""The sockets ``Client.run`` uses: one DEALER socket per caller thread, closed when the
thread ends or the client closes, on which that thread sends and waits for its own replies.
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import zmq

from dlhub_hpc.client_core import (
    _SLICE,
    client_closed,
    connect_dealer,
    decode_reply,
    hub_gone,
    no_reply,
    reply_value,
)
from dlhub_hpc.protocol import Fetch, Reply
from dlhub_hpc.security.client import ClientCurve
from dlhub_hpc.transfer import call as streamed
from dlhub_hpc.transfer.window import Outgoing


class _ThreadSocket:
    """A DEALER socket one caller thread uses for ``run``; its lock is held for a call, so
    another thread closes it only between calls (ZeroMQ sockets are not thread-safe)."""

    def __init__(self, address: str, curve: ClientCurve, context: zmq.Context[Any] | None,
                 closing: threading.Event, fetch: Fetch | None = None) -> None:
        self.sock, self.monitor = connect_dealer(address, curve, context)
        self.curve = curve
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
