"""The chunked transfers of a client's concurrent calls (``submit``, ``run_batch``, asyncio),
moved by the one reader of its socket as messages come, never by a blocking loop.

The reader hands every received message to ``take``: chunks, credits and aborts move
their transfers here, and a ``Reply`` comes back to it. ``settle`` then resolves the call
at once, or, when its output is a ``StreamRef``, once the array has arrived in full. A
request's streamed input (``upload``) goes out as the hub grants credit. Nothing here
touches a socket but through ``send``, so one thread (or one event loop) owns it all.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dlhub_hpc.errors import (
    DlhubHpcError,
    ProtocolError,
    TransferFailed,
    TransferStalled,
    error_from_wire,
)
from dlhub_hpc.protocol import Abort, Chunk, Credit, Fetch, Message, Reply, StreamRef, decode
from dlhub_hpc.transfer import DEFAULT_TRANSFER_TIMEOUT
from dlhub_hpc.transfer.window import Incoming, Outgoing

logger = logging.getLogger(__name__)

Done = Callable[[Reply], None]  # resolves one call with its reply (value or error)
Send = Callable[[Message], object]  # sends one message on the socket (its result unused)


@dataclass(slots=True)
class _Download:
    reply: Reply
    end: Incoming
    done: Done
    moved: float  # when it last made progress


@dataclass(slots=True)
class _Upload:
    request_id: str
    end: Outgoing
    moved: float


class PendingTransfers:
    """Every transfer of the calls one socket carries; used by that socket's owner only."""

    def __init__(self, send: Send,
                 timeout: float = 2 * DEFAULT_TRANSFER_TIMEOUT, max_bytes: int = 2**62,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._send = send
        self.timeout = timeout  # longer than the hub's: its Abort then says why
        self.max_bytes = max_bytes
        self._clock = clock
        self._downloads: dict[str, _Download] = {}
        self._uploads: dict[str, _Upload] = {}  # by transfer id

    def __repr__(self) -> str:
        return (f"PendingTransfers(downloads={len(self._downloads)}, "
                f"uploads={len(self._uploads)})")

    @property
    def active(self) -> bool:
        return bool(self._downloads or self._uploads)

    def upload(self, request_id: str, end: Outgoing) -> None:
        """Send ``end``'s bytes (request ``request_id``'s input) as the hub grants credit."""
        self._uploads[end.ref.transfer_id] = _Upload(request_id, end, self._clock())

    def take(self, frames: list[Any], fetch: Fetch | None = None) -> Reply | None:
        """A received message: a ``Reply`` is returned; a transfer's step is done here."""
        try:
            msg = decode(frames, fetch=fetch)
        except ProtocolError as exc:
            logger.warning("dropped a malformed message from the hub: %s", exc)
            return None
        if isinstance(msg, Reply):
            return msg
        if isinstance(msg, Credit):
            self._on_credit(msg)
        elif isinstance(msg, Chunk):
            self._on_chunk(msg)
        elif isinstance(msg, Abort):
            self._on_abort(msg)
        return None

    def settle(self, reply: Reply, done: Done | None) -> None:
        """Resolve a call with ``reply`` now, or once its streamed output has arrived;
        ``done`` None: nobody waits for it any more (an output coming is given up)."""
        for tid in [t for t, u in self._uploads.items() if u.request_id == reply.request_id]:
            del self._uploads[tid]  # answered: the hub takes no more of it
        ref = reply.value
        if not reply.ok or type(ref) is not StreamRef:
            if done is not None:
                done(reply)
            return
        if done is None:
            self._send(Abort(ref.transfer_id, _gone(ref).to_wire()))
            return
        try:
            end = Incoming(ref, self.max_bytes)
        except DlhubHpcError as exc:
            self._send(Abort(ref.transfer_id, exc.to_wire()))
            done(_failed(reply, exc))
            return
        self._downloads[ref.transfer_id] = _Download(reply, end, done, self._clock())
        self._send(end.credit())

    def expire(self) -> None:
        """Give up transfers that made no progress for ``timeout`` seconds."""
        now = self._clock()
        for tid, d in list(self._downloads.items()):
            if now - d.moved >= self.timeout:
                self._fail_download(tid, _stalled(tid, self.timeout), tell=True)
        for tid, u in list(self._uploads.items()):
            if now - u.moved >= self.timeout:
                del self._uploads[tid]
                self._send(Abort(tid, _stalled(tid, self.timeout).to_wire()))

    def fail_all(self, error: DlhubHpcError) -> None:
        """The socket is going: every call still waiting for its output fails."""
        downloads, self._downloads = self._downloads, {}
        self._uploads = {}
        for d in downloads.values():
            d.done(_failed(d.reply, error))

    def _on_credit(self, credit: Credit) -> None:
        u = self._uploads.get(credit.transfer_id)
        if u is None:
            return
        try:
            u.end.grant(credit)
        except DlhubHpcError as exc:
            del self._uploads[credit.transfer_id]
            self._send(Abort(credit.transfer_id, exc.to_wire()))
            return
        u.moved = self._clock()
        for chunk in u.end.chunks():
            self._send(chunk)
        if u.end.done:  # all sent: the reply ends it
            del self._uploads[credit.transfer_id]

    def _on_chunk(self, chunk: Chunk) -> None:
        d = self._downloads.get(chunk.transfer_id)
        if d is None:
            return
        try:
            d.end.accept(chunk)
        except DlhubHpcError as exc:
            self._fail_download(chunk.transfer_id, exc, tell=True)
            return
        d.moved = self._clock()
        self._send(d.end.credit())
        if d.end.done:
            del self._downloads[chunk.transfer_id]
            d.done(dataclasses.replace(d.reply, value=d.end.array))

    def _on_abort(self, abort: Abort) -> None:
        if abort.transfer_id in self._downloads:
            self._fail_download(abort.transfer_id, error_from_wire(abort.error), tell=False)
        self._uploads.pop(abort.transfer_id, None)  # its reply says why

    def _fail_download(self, tid: str, error: DlhubHpcError, tell: bool) -> None:
        d = self._downloads.pop(tid)
        if tell:
            self._send(Abort(tid, error.to_wire()))
        d.done(_failed(d.reply, error))


def _failed(reply: Reply, error: DlhubHpcError) -> Reply:
    return dataclasses.replace(reply, ok=False, value=None, error=error.to_wire())


def _stalled(tid: str, timeout: float) -> TransferStalled:
    return TransferStalled(f"transfer {tid} made no progress for {timeout}s; the hub or its "
                           "other end stopped", transfer_id=tid)


def _gone(ref: StreamRef) -> DlhubHpcError:
    return TransferFailed(f"transfer {ref.transfer_id}: its call was given up before its "
                           "output came", transfer_id=ref.transfer_id)
