"""``Client.map``'s calls: many requests from the calling thread, at most a window of them
outstanding, on a DEALER socket that thread alone reads.

No hand-off to the client's I/O thread and no future per call: a stream of small calls
costs about what one thread talking to the hub straight costs. Outputs come in the order of
the inputs; the window counts calls sent and outputs not yet taken, so memory stays bounded
however long the input. Large arrays in either direction move in chunks on the same socket
(``PendingTransfers``), beside the other calls.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import zmq

from dlhub_hpc.client_core import _SLICE, client_closed, connect_dealer, hub_gone, no_reply
from dlhub_hpc.errors import DlhubHpcError
from dlhub_hpc.protocol import Fetch, Reply, encode
from dlhub_hpc.protocol.bundle import HubBundles, bundled
from dlhub_hpc.security.client import ClientCurve
from dlhub_hpc.transfer.pending import PendingTransfers
from dlhub_hpc.transfer.window import Outgoing

_POLLIN = int(zmq.POLLIN)

Outcome = Reply | DlhubHpcError  # a call's reply, or why none came


@dataclass(slots=True)
class Call:
    """One input, ready to send."""

    request_id: str
    frames: list[Any]
    wait: float | None  # seconds until the call is given up (None: never)
    upload: Outgoing | None = None  # a large array input, sent in chunks


class WindowSocket:
    """The socket of one ``map``. Its lock is held while the map's thread uses it (never
    while the map waits for its caller to take an output), so ``close`` from another
    thread waits for the step in progress, as ``_ThreadSocket`` does."""

    def __init__(self, address: str, curve: ClientCurve, context: zmq.Context[Any] | None,
                 closing: threading.Event, fetch: Fetch | None) -> None:
        self.sock, self.monitor = connect_dealer(address, curve, context)
        self.sock.setsockopt(zmq.RCVTIMEO, math.ceil(_SLICE * 1000))
        self.address = address
        self.curve = curve
        self.lock = threading.Lock()
        self._closing = closing
        self._fetch = fetch
        self._hub = HubBundles()  # bundles go once a reply showed the hub reads them
        self._transfers = PendingTransfers(
            lambda msg: self.sock.send_multipart(encode(msg), copy=False))

    def outcomes(self, calls: Iterator[Call], in_flight: int) -> Iterator[Outcome]:
        """Each call's outcome, in the order of ``calls``, with at most ``in_flight`` calls
        sent and not yet taken at any time."""
        order: deque[str] = deque()  # ids in input order, not yet taken
        done: dict[str, Outcome] = {}
        waiting: set[str] = set()  # sent, no reply yet
        expiry: list[tuple[float, str]] = []
        more = True
        while order or more:
            with self.lock:
                self._check_open()
                burst = []
                while more and len(order) < in_flight:
                    call = next(calls, None)
                    if call is None:
                        more = False
                        break
                    burst.append(call)
                    order.append(call.request_id)
                    waiting.add(call.request_id)
                self._send(burst, expiry)
                if order and order[0] not in done:
                    self._step(done, waiting, expiry)
            while order and order[0] in done:
                yield done.pop(order.popleft())

    def _send(self, calls: list[Call], expiry: list[tuple[float, str]]) -> None:
        """Send ``calls``, the small ones together as bundles."""
        now = time.monotonic()
        for call in calls:
            if call.upload is not None:
                self._transfers.upload(call.request_id, call.upload)
            if call.wait is not None:
                heapq.heappush(expiry, (now + call.wait, call.request_id))
        try:
            for frames, _ in bundled((call.frames for call in calls), self._hub.ok):
                self.sock.send_multipart(frames, copy=False)
        except zmq.ContextTerminated:
            self._shut()
            raise hub_gone(self.address) from None

    def _step(self, done: dict[str, Outcome], waiting: set[str],
              expiry: list[tuple[float, str]]) -> None:
        """Wait up to a slice for replies and take every one that has come."""
        try:
            frames = self.sock.recv_multipart(copy=False)
            while True:
                self._take(frames, done, waiting)
                if not cast(int, self.sock.get(zmq.EVENTS)) & _POLLIN:
                    break
                frames = self.sock.recv_multipart(copy=False)
        except zmq.ContextTerminated:
            self._shut()
            raise hub_gone(self.address) from None
        except zmq.Again:
            refused = self.curve.refusal(self.monitor, self.address)
            if refused is not None:
                raise refused from None
        now = time.monotonic()
        while expiry and expiry[0][0] <= now:
            _, request_id = heapq.heappop(expiry)
            if request_id in waiting:
                waiting.discard(request_id)
                done[request_id] = no_reply(self.address, self.curve)
        if self._transfers.active:
            self._transfers.expire()

    def _take(self, frames: list[Any], done: dict[str, Outcome], waiting: set[str]) -> None:
        for message in self._hub.read(frames):
            reply = self._transfers.take(message, self._fetch)
            if reply is None or reply.request_id not in waiting:
                continue  # a transfer's step, or the late answer to a call given up
            waiting.discard(reply.request_id)
            self._transfers.settle(reply, lambda r: done.__setitem__(r.request_id, r))

    def _check_open(self) -> None:
        if self.sock.closed or self._closing.is_set():
            raise client_closed()

    def close(self) -> None:
        with self.lock:
            self._shut()

    def _shut(self) -> None:
        if not self.sock.closed:
            self._transfers.fail_all(client_closed())
            ClientCurve.close(self.sock, self.monitor)
            self.sock.close(linger=0)
