"""Moves the chunked transfers of one client call, or one worker batch, on a DEALER socket.

The socket's owner hands its transfers to a ``Pump`` and lets it read the socket until
they are done: chunks go out as the hub grants credit, chunks that come in are written
into their preallocated arrays and acknowledged with a credit each. Any other message
that arrives meanwhile is kept in ``stash`` for the owner, in order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import zmq

from dlhub_hpc.errors import DlhubHpcError, ProtocolError, TransferStalled, error_from_wire
from dlhub_hpc.protocol import Abort, Chunk, Credit, Message, StreamRef, decode, encode
from dlhub_hpc.transfer.window import Incoming, Outgoing

logger = logging.getLogger(__name__)

_POLL_MS = 250  # between looks at the clock while nothing comes


class Pump:
    """The transfers of one call or batch, and the socket they move on."""

    def __init__(self, sock: zmq.Socket[Any], timeout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sock = sock
        self.timeout = timeout
        self._clock = clock
        self.incoming: dict[str, Incoming] = {}
        self.outgoing: dict[str, Outgoing] = {}
        self.failures: dict[str, DlhubHpcError] = {}
        self.stash: list[Message] = []

    def __repr__(self) -> str:
        return (f"Pump(incoming={len(self.incoming)}, outgoing={len(self.outgoing)}, "
                f"failures={len(self.failures)})")

    def receive(self, ref: StreamRef, max_bytes: int) -> None:
        """Preallocate ``ref``'s array and ask for its first chunks."""
        try:
            self.incoming[ref.transfer_id] = end = Incoming(ref, max_bytes)
        except DlhubHpcError as exc:
            self._fail(ref.transfer_id, exc, tell=True)
            return
        self._send(end.credit())

    def send(self, end: Outgoing) -> None:
        """Send ``end``'s bytes as the hub grants credit for them."""
        self.outgoing[end.ref.transfer_id] = end

    def array(self, ref: StreamRef) -> Any:
        """The array ``ref`` brought; its ``TransferFailed`` if it did not come."""
        failure = self.failures.get(ref.transfer_id)
        if failure is not None:
            raise failure
        return self.incoming[ref.transfer_id].array

    @property
    def active(self) -> bool:
        return any(not e.done for e in self.incoming.values()) or any(
            not e.done for e in self.outgoing.values())

    def run(self, until: Callable[[], bool] | None = None,
            deadline: float | None = None) -> None:
        """Move the transfers until none is active (or ``until()`` says stop); a transfer
        with no progress for ``timeout`` seconds fails with ``TransferStalled``."""
        stall_at = self._clock() + self.timeout
        while self.active or (until is not None and not until()):
            if until is not None and until():
                return
            now = self._clock()
            if deadline is not None and now >= deadline:
                return
            if self.active and now >= stall_at:
                self._stalled()
                continue
            if not self.sock.poll(_POLL_MS, zmq.POLLIN):
                continue
            if self._step(self.sock.recv_multipart(copy=False)):
                stall_at = self._clock() + self.timeout

    def _step(self, frames: list[Any]) -> bool:
        """Handle one received message; whether it moved a transfer of this pump."""
        try:
            msg = decode(frames)
        except ProtocolError as exc:
            logger.warning("dropped a malformed message from the hub: %s", exc)
            return False
        if isinstance(msg, Credit):
            end = self.outgoing.get(msg.transfer_id)
            if end is None or msg.transfer_id in self.failures:
                return False
            try:
                end.grant(msg)
            except DlhubHpcError as exc:
                self._fail(msg.transfer_id, exc, tell=True)
                return True
            for chunk in end.chunks():
                self._send(chunk)
            return True
        if isinstance(msg, Chunk):
            return self._on_chunk(msg)
        if isinstance(msg, Abort):
            if msg.transfer_id in self.incoming or msg.transfer_id in self.outgoing:
                self._fail(msg.transfer_id, error_from_wire(msg.error), tell=False)
                return True
            return False
        self.stash.append(msg)
        return False

    def _on_chunk(self, chunk: Chunk) -> bool:
        end = self.incoming.get(chunk.transfer_id)
        if end is None or chunk.transfer_id in self.failures:
            return False
        try:
            end.accept(chunk)
        except DlhubHpcError as exc:
            self._fail(chunk.transfer_id, exc, tell=True)
            return True
        self._send(end.credit())
        return True

    def _stalled(self) -> None:
        ends: list[tuple[str, Incoming | Outgoing]] = [*self.incoming.items(),
                                                      *self.outgoing.items()]
        for tid, end in ends:
            if not end.done and tid not in self.failures:
                self._fail(tid, TransferStalled(
                    f"transfer {tid} made no progress for {self.timeout}s; the hub or its "
                    "other end stopped", transfer_id=tid), tell=True)

    def _fail(self, tid: str, error: DlhubHpcError, tell: bool) -> None:
        """Give up ``tid`` (its memory goes with it); ``tell`` the hub unless it told us."""
        self.failures[tid] = error
        incoming = self.incoming.pop(tid, None)
        outgoing = self.outgoing.pop(tid, None)
        del incoming, outgoing
        if tell:
            self._send(Abort(tid, error.to_wire()))

    def _send(self, msg: Message) -> None:
        self.sock.send_multipart(encode(msg), copy=False)
