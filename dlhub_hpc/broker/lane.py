"""The large-message lane: decode and check big requests on a thread beside the hub's loop.

Decoding a 10^6-float list and checking it element by element takes over a second of
Python; on the loop that stalls every other caller and starves workers' heartbeats. The
loop hands such a request here with a continuation: the work runs on the lane's thread,
the continuation back on the loop's (``run_finished``, when the wake pipe fires), so only
the loop ever touches the broker's state.

The lane's own work is cut in slices of about a millisecond with a pause between them, so
the loop never waits long for the GIL. A request's payload stays in the msgpack bytes it
came in (``Encoded``) until its check needs it decoded; a list of floats for a servable
that takes one is checked on those bytes alone. Whatever was checked goes to the worker
encoded (as it came, or encoded here), so the loop never encodes a large input either.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from dlhub_hpc.broker.events import Checked, InputPlan
from dlhub_hpc.broker.handoff import Handoff
from dlhub_hpc.broker.memo import memo_key, packed_memo_key
from dlhub_hpc.errors import DlhubHpcError, PayloadTooLarge, ProtocolError, ReferenceFormatError
from dlhub_hpc.protocol import (
    Encoded,
    Message,
    Request,
    decode,
    encode_value,
    expand_payload,
    packed_floats,
    split_request,
)
from dlhub_hpc.references import has_references
from dlhub_hpc.servable.types import ArgType, check_value

logger = logging.getLogger(__name__)

T = TypeVar("T")
# A bare GIL release (sleep(0)) is mostly taken straight back by the thread that released
# it; a short sleep lets the loop's thread, when it waits, take the GIL in between.
_PAUSE_SECONDS = 50e-6
_SCALARS = frozenset({int, float, str, bytes, bool, type(None)})
_FLAT_SLICE = 65536  # list items whose types are read in one go
_THREAD = "hub-large-messages"


def pause() -> None:
    """Between two slices of a large message's work: let the loop's thread run."""
    time.sleep(_PAUSE_SECONDS)


def message_size(frames: Sequence[Any]) -> int:
    """Bytes in a received message's frames after the routing id."""
    return sum(len(f) for f in frames[1:])


def too_large(size: int, limit: int, setting: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the message is {size} bytes, over the limit of {limit} bytes; send a smaller "
        f"input (or a file path the servable can read), or raise {setting}",
        size=size, limit=limit, setting=setting,
    )


def decode_large(frames: Sequence[Any]) -> Message:
    """Decode a large message (its frames after the routing id), a slice at a time; a
    one-frame request keeps its payload encoded (``check_input`` or ``expand`` reads it)."""
    return split_request(frames, pause) or decode(frames, pause)


def expand(req: Request) -> Request:
    """``req`` with its payload decoded (and checked as ``decode`` checks one)."""
    if not isinstance(req.payload, Encoded):
        return req
    return dataclasses.replace(req, payload=expand_payload(req.payload, pause))


def takes_floats_as_sent(declared: ArgType) -> bool:
    """Whether a list of floats passes ``declared``'s check unchanged."""
    if declared.type in ("any", "python object"):
        return True
    item = declared.item_type
    return declared.type == "list" and (item is None or item.type in ("float", "number"))


def check_input(plan: InputPlan, req: Request) -> Checked:
    """Check ``req``'s input against ``plan`` (and hash it for the memo cache if wanted).
    The checked input comes back ``Encoded`` where it can, for the loop to send as it is;
    a payload that is not msgpack a request may carry raises ``ProtocolError``."""
    payload = sent = req.payload
    if isinstance(sent, Encoded):
        if takes_floats_as_sent(plan.declared) and packed_floats(sent):
            return Checked(plan.declared, sent, memo_key=_packed_key(plan, sent))
        payload = expand_payload(sent, pause)
        if has_references(payload):  # the loop never looks inside an input sent on as bytes
            return Checked(plan.declared, error=ReferenceFormatError(
                "a request over large_message_bytes may not name a file or URL (it would "
                "reach the worker unread); send the large data by reference too, or the "
                "references in a request of their own"))
    try:
        checked = check_value(plan.declared, payload)
    except DlhubHpcError as exc:
        return Checked(plan.declared, error=exc)
    encoded = sent if checked is payload and isinstance(sent, Encoded) else None
    encoded = encoded or encode_value(checked, pause)
    key = None
    if plan.memoize and encoded is not None and is_flat(checked):  # canonical bytes then
        key = _packed_key(plan, encoded)
    elif plan.memoize:
        key = memo_key(plan.info.digest, plan.info.version, plan.method, checked)
    if encoded is None:
        return Checked(plan.declared, checked, memo_key=key)
    for value in (payload, checked):  # only their bytes go on: let go of them here
        if value is not sent:
            release(value)
    return Checked(plan.declared, encoded, memo_key=key)


def _packed_key(plan: InputPlan, value: Encoded) -> bytes | None:
    if not plan.memoize:
        return None
    return packed_memo_key(plan.info.digest, plan.info.version, plan.method, value.data)


def release(value: Any) -> None:
    """Empty a big list this thread alone holds, a slice at a time: freeing 10^6 objects
    at once holds the GIL for tens of milliseconds."""
    if type(value) is list:
        while len(value) > _FLAT_SLICE:
            del value[-_FLAT_SLICE:]
            pause()


def is_flat(value: Any) -> bool:
    """Whether ``value`` is a list of numbers, strings, bytes, bools and Nones only."""
    if type(value) is not list:
        return False
    for start in range(0, len(value), _FLAT_SLICE):
        if not set(map(type, value[start:start + _FLAT_SLICE])) <= _SCALARS:
            return False
        pause()
    return True


class LargeLane:
    """One thread for large messages, and a byte budget for those waiting on it."""

    def __init__(self, wake: Callable[[], None], backlog_bytes: int) -> None:
        self._backlog = backlog_bytes
        # A malformed message is answered, no fault of the lane's.
        self._handoff = Handoff(wake, {_THREAD: 1}, ProtocolError, logger,
                                "a large message failed on the lane")
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
        self._handoff.submit(_THREAD, work, then)

    def run_finished(self) -> None:
        """Run the continuations of finished work (loop thread)."""
        self._handoff.run_finished()

    def close(self) -> None:
        self._handoff.close()
