"""The hub's book of chunked transfers: pure logic, driven by the broker's loop.

A transfer is opened by the message that names it (a caller's ``Request`` whose input is a
``StreamRef``, a worker's ``BatchResult`` with one), and bound to its receiver when the
hub sends that very ref object on (the ``Batch`` to a worker, the ``Reply`` to a caller).
Then the relay forwards the sender's chunks as they come, one per loop step, and grants
the sender credit only ``window`` bytes past what the receiver says it holds: the hub
never holds more than a window of any one transfer. Anything off (a chunk from anyone but
the sender, out of order, too large, past its credit; a stall) drops the transfer, with
``Abort`` to both ends; a message naming another identity's transfer is only refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from dlhub_hpc.errors import DlhubHpcError, TransferFailed, TransferStalled
from dlhub_hpc.protocol import Abort, Chunk, Credit, Message, StreamRef

logger = logging.getLogger(__name__)

Side = Literal["client", "worker"]


@dataclass(frozen=True, slots=True)
class Peer:
    """One end of a transfer: which socket, its routing id, and its authenticated user."""

    side: Side
    identity: bytes
    user: str = field(default="", compare=False)  # the routing id alone names the peer


@dataclass(frozen=True, slots=True)
class Send:
    """What the relay asks the loop to send."""

    to: Peer
    message: Message


@dataclass(slots=True)
class Transfer:
    ref: StreamRef
    sender: Peer
    request_id: str  # the request it belongs to ("" for a result's transfer)
    expires: float  # unbound: when it is given up; bound: when a stall drops it
    receiver: Peer | None = None
    forwarded: int = 0  # bytes passed on to the receiver
    held: int = 0  # bytes the receiver says it holds
    allowed: int = 0  # bytes the sender may send
    counts: dict[str, int] = field(default_factory=dict)


class Relay:
    """Every open transfer through this hub, and the rules they follow."""

    def __init__(self, *, window_bytes: int, chunk_bytes: int, timeout: float,
                 max_bytes: int) -> None:
        self.window = max(window_bytes, chunk_bytes)
        self.chunk = chunk_bytes
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._open: dict[str, Transfer] = {}
        self._by_request: dict[tuple[bytes, str], str] = {}
        self._ended: list[bytes] = []  # workers whose output transfers ended: take_ended
        self.stats: dict[str, int] = {"transfers": 0, "transfers_done": 0,
                                      "transfers_dropped": 0, "chunks_forwarded": 0,
                                      "foreign_transfer_messages": 0, "transfers_refused": 0}

    def __repr__(self) -> str:
        return f"Relay(window={self.window}, chunk={self.chunk}, open={len(self._open)})"

    def __len__(self) -> int:
        return len(self._open)

    def held_bytes(self) -> int:
        """At most how many bytes of open transfers the hub may hold now."""
        return sum(t.forwarded - t.held for t in self._open.values())

    # -- opening and binding --

    def open(self, ref: StreamRef, sender: Peer, now: float, request_id: str = "",
             wait: float | None = None) -> DlhubHpcError | None:
        """Record a transfer ``sender`` named; the error that refuses it, or None."""
        if ref.transfer_id in self._open:
            return TransferFailed(f"transfer {ref.transfer_id} is in use; name a fresh one",
                                  transfer_id=ref.transfer_id)
        if ref.nbytes > self.max_bytes:
            return TransferFailed(
                f"the array is {ref.nbytes} bytes, over the hub's {self.max_bytes}; send a "
                "smaller one, a file reference, or raise HubConfig.max_transfer_bytes",
                transfer_id=ref.transfer_id, size=ref.nbytes, limit=self.max_bytes)
        self._open[ref.transfer_id] = Transfer(ref, sender, request_id,
                                               now + max(wait or 0.0, self.timeout))
        if request_id:
            self._by_request[(sender.identity, request_id)] = ref.transfer_id
        self.stats["transfers"] += 1
        return None

    def bind(self, ref: StreamRef, receiver: Peer, now: float) -> list[Send]:
        """``ref`` goes to ``receiver``: from now on its chunks flow there. A transfer bound
        already (a batch sent again after its worker died) cannot restart: it is dropped."""
        t = self._open.get(ref.transfer_id)
        if t is None or t.ref is not ref:  # not one this hub opened for this very message
            return [Send(receiver, _abort(ref.transfer_id, "the hub holds no such transfer"))]
        if t.receiver is not None:  # a result shared by joined requests goes to one caller
            refused = [Send(receiver, _abort(ref.transfer_id, "it was sent on once already"))]
            if t.sender.side == "worker":
                return refused
            return [*refused, *self._drop(t, "its receiver was replaced midway")]
        t.receiver = receiver
        t.expires = now + self.timeout
        return []

    def replied(self, client: bytes, request_id: str) -> list[Send]:
        """The hub answered ``request_id``: an upload it left unfinished is dropped."""
        tid = self._by_request.pop((client, request_id), None)
        t = self._open.get(tid) if tid is not None else None
        if t is None:
            return []
        if t.forwarded >= t.ref.nbytes:
            return self._close(t)
        return self._drop(t, "the request was answered before its input arrived")

    # -- messages from either end --

    def on_message(self, peer: Peer, msg: Message, now: float) -> list[Send]:
        """A ``Chunk``, ``Credit`` or ``Abort`` from ``peer``."""
        tid = getattr(msg, "transfer_id", "")
        t = self._open.get(tid)
        if t is None or peer not in (t.sender, t.receiver):
            self.stats["foreign_transfer_messages"] += 1
            logger.warning("refused a %s for a transfer %s does not hold",
                           type(msg).__name__, peer.user or peer.side)
            if isinstance(msg, Abort):
                return []
            # Only the one who asked hears of it; another's transfer goes on untouched.
            return [Send(peer, _abort(tid, "this connection holds no such transfer"))]
        if isinstance(msg, Abort):
            return self._drop(t, "its other end gave it up", notify=peer)
        if isinstance(msg, Credit):
            return self._on_credit(t, peer, msg, now) if peer == t.receiver else []
        if isinstance(msg, Chunk) and peer == t.sender:
            return self._on_chunk(t, msg, now)
        return self._drop(t, f"a {type(msg).__name__} came from the wrong end")

    def _on_chunk(self, t: Transfer, chunk: Chunk, now: float) -> list[Send]:
        data = chunk.data
        size = data.size if data.dtype.str == "|u1" and data.ndim == 1 else -1
        if t.receiver is None:
            return self._drop(t, "a chunk came before its receiver asked for any")
        if chunk.offset != t.forwarded:
            return self._drop(t, f"a chunk came at offset {chunk.offset}, expected "
                                 f"{t.forwarded}")
        if not 0 < size <= self.chunk:
            return self._drop(t, f"a chunk of {data.nbytes} bytes is not 1 to {self.chunk} "
                                 "bytes")
        if t.forwarded + size > t.allowed:
            return self._drop(t, f"a chunk runs to byte {t.forwarded + size}, past the "
                                 f"{t.allowed} granted")
        t.forwarded += size
        t.expires = now + self.timeout
        self.stats["chunks_forwarded"] += 1
        return [Send(t.receiver, chunk)]

    def _on_credit(self, t: Transfer, peer: Peer, credit: Credit, now: float) -> list[Send]:
        if not t.held <= credit.offset <= t.forwarded:
            return self._drop(t, f"the receiver says it holds {credit.offset} bytes of the "
                                 f"{t.forwarded} sent")
        t.held = credit.offset
        t.expires = now + self.timeout
        if t.held >= t.ref.nbytes:
            return self._close(t)
        allowed = min(t.ref.nbytes, t.held + self.window)
        if allowed <= t.allowed:
            return []
        t.allowed = allowed
        return [Send(t.sender, Credit(t.ref.transfer_id, allowed, self.chunk))]

    # -- time --

    def next_deadline(self) -> float | None:
        return min((t.expires for t in self._open.values()), default=None)

    def expire(self, now: float) -> list[Send]:
        out: list[Send] = []
        for t in [t for t in self._open.values() if t.expires <= now]:
            stalled = TransferStalled(
                f"transfer {t.ref.transfer_id} made no progress for {self.timeout}s; its "
                "peer stopped sending or reading (retry, or raise HubConfig.transfer_timeout)",
                transfer_id=t.ref.transfer_id)
            out += self._drop(t, "", error=stalled)
        return out

    def gone(self, peer: Peer) -> list[Send]:
        """``peer`` left: its transfers are dropped."""
        out: list[Send] = []
        for t in [t for t in self._open.values() if peer in (t.sender, t.receiver)]:
            out += self._drop(t, "its other end left", notify=peer)
        return out

    # -- ending --

    def _close(self, t: Transfer) -> list[Send]:
        self._forget(t)
        self.stats["transfers_done"] += 1
        return []

    def _drop(self, t: Transfer, why: str, notify: Peer | None = None,
              error: DlhubHpcError | None = None) -> list[Send]:
        """Forget ``t`` and tell both ends (but ``notify``, which gave it up itself)."""
        self._forget(t)
        self.stats["transfers_dropped"] += 1
        tid = t.ref.transfer_id
        logger.warning("dropped transfer %s: %s", tid, why or (error and error.message))
        abort = Abort(tid, (error or _failed(tid, why)).to_wire())
        return [Send(p, abort) for p in (t.sender, t.receiver)
                if p is not None and p != notify]

    def refuse(self, tid: str, sender: Peer, why: str) -> list[Send]:
        """Tell ``sender`` that transfer ``tid``, never opened, has no receiver."""
        self.stats["transfers_refused"] += 1
        return [Send(sender, _abort(tid, why))]

    def sending(self, worker: bytes) -> bool:
        """Has ``worker`` an output transfer still open?"""
        return any(t.sender.side == "worker" and t.sender.identity == worker
                   for t in self._open.values())

    def take_ended(self) -> list[bytes]:
        """The workers whose output transfers ended since the last call."""
        ended, self._ended = self._ended, []
        return ended

    def _forget(self, t: Transfer) -> None:
        if t.sender.side == "worker":
            self._ended.append(t.sender.identity)
        self._open.pop(t.ref.transfer_id, None)
        if t.request_id:
            self._by_request.pop((t.sender.identity, t.request_id), None)


def _failed(tid: str, why: str) -> TransferFailed:
    return TransferFailed(f"transfer {tid} was dropped: {why}", transfer_id=tid)


def _abort(tid: str, why: str) -> Abort:
    return Abort(tid, _failed(tid, why).to_wire())
