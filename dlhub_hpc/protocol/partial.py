"""Reading a message without decoding all of it: a large request with its payload kept
encoded (the hub's large-message lane), and the tag and first field of a message that may
not decode."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np

from dlhub_hpc.errors import ProtocolError
from dlhub_hpc.protocol.codec import _as_buffer, _ext_hook, _message_of, _unpack
from dlhub_hpc.protocol.constants import (
    _FLOAT64,
    _PEEK_BYTES,
    _SLICE_BYTES,
    PROTOCOL_VERSION,
    Pause,
)
from dlhub_hpc.protocol.messages import Request, Tag
from dlhub_hpc.protocol.values import Encoded, _check_field


def split_request(frames: Sequence[Any], pause: Pause) -> Request | None:
    """A one-frame REQUEST decoded but for its payload, which stays ``Encoded`` (a view of
    the frame, not yet checked: :func:`expand_payload` checks it); None for any other
    message, or one too odd to split: :func:`decode` it."""
    if len(frames) != 1:  # arrays in frames of their own: the header is small, decode it
        return None
    view = memoryview(_as_buffer(frames[0])).cast("B")
    size = view.nbytes
    try:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=size)
        unpacker.feed(view[:_PEEK_BYTES])
        count = unpacker.read_array_header() - 2
        head = [unpacker.unpack() for _ in range(6)]  # version, tag, and four fields
        if head[:2] != [PROTOCOL_VERSION, Tag.REQUEST] or type(head[1]) is not int or not (
                Request.REQUIRED <= count <= len(Request.FIELDS)):
            return None
        start, fed = unpacker.tell(), _PEEK_BYTES
        while True:  # find the payload's end, a slice at a time
            try:
                unpacker.skip()
                break
            except msgpack.OutOfData:
                if fed >= size:
                    return None
                unpacker.feed(view[fed:fed + _SLICE_BYTES])
                fed += _SLICE_BYTES
                pause()
        end = unpacker.tell()
        if size - end > _PEEK_BYTES:  # the fields after the payload are small
            return None
        unpacker.feed(view[fed:])
        rest = [unpacker.unpack() for _ in range(count - 5)]
        if unpacker.tell() != size:
            return None
    except Exception:  # not what encode() makes: decode() says what is wrong
        return None
    message = _message_of([*head, Encoded(view[start:end]), *rest], pause)
    return message if isinstance(message, Request) else None


def expand_payload(value: Encoded, pause: Pause | None = None) -> Any:
    """The value a split request's payload holds, checked as :func:`decode` checks a
    request's payload (``ProtocolError`` if it is not one)."""
    try:
        payload = _unpack(value.data, _ext_hook((), pause), pause)
        _check_field(Request, Request.CHECKS[Request.FIELDS.index("payload")], payload, pause)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"undecodable request payload: {type(exc).__name__}: {exc}") from None
    return payload


def packed_floats(value: Encoded) -> bool:
    """Whether ``value`` is a list of float64s exactly as msgpack writes one (the shortest
    array header): its bytes are then the canonical form of the list they hold."""
    view = memoryview(value.data).cast("B")
    size = view.nbytes
    if size == 0:
        return False
    first = view[0]
    if 0x90 <= first <= 0x9F:
        count, head = first & 0x0F, 1
    elif first == 0xDC and size >= 3:
        count, head = int.from_bytes(view[1:3], "big"), 3
        count = count if count > 0x0F else -1
    elif first == 0xDD and size >= 5:
        count, head = int.from_bytes(view[1:5], "big"), 5
        count = count if count > 0xFFFF else -1
    else:
        return False
    if count < 0 or size != head + 9 * count:
        return False
    markers = np.frombuffer(view, dtype=np.uint8, offset=head)[::9]
    return bool((markers == _FLOAT64).all())


def peek(frames: Sequence[Any]) -> tuple[int, Any] | None:
    """The tag and first field of a message that may not decode as a whole, read element by
    element (so the hub can still answer its sender); None when not even those can be read."""
    try:
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(bytes(memoryview(_as_buffer(frames[0]))[:_PEEK_BYTES]))
        if unpacker.read_array_header() < 3:
            return None
        version, tag, first = unpacker.unpack(), unpacker.unpack(), unpacker.unpack()
    except Exception:  # truncated, not msgpack, not an array: nothing to go by
        return None
    if type(version) is not int or version != PROTOCOL_VERSION or type(tag) is not int:
        return None
    return tag, first
