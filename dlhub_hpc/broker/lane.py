"""The large-message lane: decode and check big requests on a thread beside the hub's loop.

Decoding a 10^6-float list and checking it element by element takes over a second of
Python; on the loop that stalls every other caller and starves workers' heartbeats. The
loop hands such a request here with a continuation: the work runs on the lane's thread,
the continuation back on the loop's (``run_finished``, when the wake pipe fires), so only
the loop ever touches the broker's state.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import msgpack

from dlhub_hpc.broker.events import Checked, InputPlan
from dlhub_hpc.broker.memo import memo_key
from dlhub_hpc.errors import DlhubHpcError, PayloadTooLarge
from dlhub_hpc.protocol import Request
from dlhub_hpc.servable.types import check_value

logger = logging.getLogger(__name__)

T = TypeVar("T")
_PEEK_BYTES = 4096  # a request id is read from this much of the header, at most


def message_size(frames: Sequence[Any]) -> int:
    """Bytes in a received message's frames after the routing id."""
    return sum(len(f) for f in frames[1:])


def peek_request_id(header: Any) -> str | None:
    """The request id of a REQUEST or CONTROL header, read without decoding its payload."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(bytes(memoryview(getattr(header, "buffer", header))[:_PEEK_BYTES]))
    try:
        if unpacker.read_array_header() < 3:
            return None
        unpacker.skip()  # the protocol version
        unpacker.skip()  # the tag
        request_id = unpacker.unpack()
    except Exception:  # a header too odd to peek at: no reply can be addressed
        return None
    return request_id if isinstance(request_id, str) else None


def too_large(size: int, limit: int, setting: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the message is {size} bytes, over the limit of {limit} bytes; send a smaller "
        f"input (or a file path the servable can read), or raise {setting}",
        size=size, limit=limit, setting=setting,
    )


def check_input(plan: InputPlan, req: Request) -> Checked:
    """Check ``req``'s input against ``plan`` (and hash it for the memo cache if wanted)."""
    try:
        payload = check_value(plan.declared, req.payload)
    except DlhubHpcError as exc:
        return Checked(plan.declared, error=exc)
    key = None
    if plan.memoize:
        key = memo_key(plan.info.digest, plan.info.version, plan.method, payload)
    return Checked(plan.declared, payload, memo_key=key)


class LargeLane:
    """One thread for large messages, and a byte budget for those waiting on it."""

    def __init__(self, wake: Callable[[], None], backlog_bytes: int) -> None:
        self._wake = wake
        self._backlog = backlog_bytes
        self._pool: ThreadPoolExecutor | None = None  # made on first use
        self._done: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.pending_bytes = 0  # loop thread only

    def __repr__(self) -> str:
        return f"LargeLane(backlog_bytes={self._backlog}, pending_bytes={self.pending_bytes})"

    def has_room(self, size: int) -> bool:
        """One message always fits; more only within the budget."""
        return self.pending_bytes == 0 or self.pending_bytes + size <= self._backlog

    def reserve(self, size: int) -> None:
        self.pending_bytes += size

    def release(self, size: int) -> None:
        self.pending_bytes -= size

    def submit(self, work: Callable[[], T], then: Callable[[T | Exception], None]) -> None:
        """Run ``work`` on the lane; ``then`` gets its result (or exception) on the loop."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="hub-large-messages")

        def run() -> None:
            try:
                result: T | Exception = work()
            except Exception as exc:  # handed to the loop, which answers it
                logger.exception("a large message failed on the lane")
                result = exc
            self._done.put(lambda: then(result))
            self._wake()

        self._pool.submit(run)

    def run_finished(self) -> None:
        """Run the continuations of finished work (loop thread)."""
        while True:
            try:
                then = self._done.get_nowait()
            except queue.Empty:
                return
            then()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
