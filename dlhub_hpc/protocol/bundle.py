"""Bundles: several small messages in one frame, ``[PROTOCOL_VERSION, BUNDLE_TAG, n]``
followed by the ``n`` messages' msgpack headers back to back.

A burst of requests from one caller, or of replies to it (a worker's batch answers many at
once), then costs one send, one CurveZMQ box and one receive instead of one each. Only
messages of a single small frame are bundled; the receiver hands each to the path a lone
message takes, so a bad one fails alone.

Neither side sends a bundle to a peer that has not said it reads them: a hub says so in
each connection's handshake (the ``X-Dlhub-Bundles`` property, read from any message it
sends), so a client bundles once a reply showed it; a hub bundles replies only to a caller
that sent a bundle. Older peers on either side never see one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import msgpack
import zmq

from dlhub_hpc.errors import ProtocolError
from dlhub_hpc.protocol.constants import PROTOCOL_VERSION

logger = logging.getLogger(__name__)

BUNDLE_TAG = 50  # beside the messages' tags (Tag), which decode() alone reads
MAX_BUNDLE = 1024  # messages in one bundle, at most
BUNDLE_BYTES = 256 * 1024  # a sender bundles messages up to this many bytes in all
PART_BYTES = 16 * 1024  # and only messages smaller than this

BUNDLES_PROPERTY = "X-Dlhub-Bundles"  # a hub's handshake says it reads bundles
BUNDLES_METADATA = f"{BUNDLES_PROPERTY}:1".encode()


def takes_bundles(frame: Any) -> bool:
    """Whether the hub that sent ``frame`` (a received ``zmq.Frame``) reads bundles: its
    connection's handshake says so. False for a hub that predates them."""
    try:
        return bool(frame.get(BUNDLES_PROPERTY) == "1")
    except (zmq.ZMQError, AttributeError):  # no such property, or not a zmq.Frame
        return False


class HubBundles:
    """What a client's socket knows of its hub: nothing until the first message comes,
    then whether the connection's handshake said the hub reads bundles."""

    __slots__ = ("heard", "ok")

    def __init__(self) -> None:
        self.heard = False
        self.ok = False

    def note(self, frames: Sequence[Any]) -> None:
        """Look at the first message received (later ones came on the same connection)."""
        if not self.heard and frames:
            self.heard, self.ok = True, takes_bundles(frames[0])

    def read(self, frames: list[Any]) -> list[list[Any]]:
        """A message received from the hub, noted, as the messages it holds."""
        self.note(frames)
        return unbundled(frames)


_PREFIX = msgpack.packb([PROTOCOL_VERSION, BUNDLE_TAG, 0])[:3]  # array of 3, version, tag


def bundle(headers: Sequence[bytes]) -> bytes:
    """One frame carrying ``headers`` (each a message's only frame)."""
    return msgpack.packb([PROTOCOL_VERSION, BUNDLE_TAG, len(headers)]) + b"".join(headers)


def bundleable(frames: Sequence[Any]) -> bool:
    """Whether an encoded message may go in a bundle: one small frame of bytes."""
    return len(frames) == 1 and type(frames[0]) is bytes and len(frames[0]) < PART_BYTES


class _Properties:
    """The connection properties of the frame a bundle came in, each asked of it once."""

    __slots__ = ("_frame", "_known")

    def __init__(self, frame: Any) -> None:
        self._frame = frame
        self._known: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        if name not in self._known:
            self._known[name] = self._frame.get(name)
        return self._known[name]


class Part:
    """One message of a received bundle, in place of the frame it came in: its bytes, and
    the connection's properties (``User-Id``) asked of that frame."""

    __slots__ = ("_properties", "buffer")

    def __init__(self, buffer: memoryview, properties: _Properties) -> None:
        self.buffer = buffer
        self._properties = properties

    @property
    def bytes(self) -> bytes:
        return bytes(self.buffer)

    def get(self, name: str) -> Any:
        return self._properties.get(name)

    def __len__(self) -> int:
        return self.buffer.nbytes


def parts(frame: Any) -> list[Part] | None:
    """The messages of ``frame`` if it is a bundle, else None; ``ProtocolError`` for a
    bundle that is not well formed (a count out of range, a truncated or extra byte)."""
    buffer = getattr(frame, "buffer", frame)
    view = memoryview(buffer).cast("B")
    if view.nbytes < 4 or view[:3] != _PREFIX:
        return None
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=view.nbytes)
    unpacker.feed(view)
    try:
        head = unpacker.unpack()
        count = head[2]
        if type(count) is not int or not 1 <= count <= MAX_BUNDLE:
            raise ProtocolError(f"a bundle holds 1 to {MAX_BUNDLE} messages, not {count!r}"[:120])
        out = []
        properties = _Properties(frame)
        for _ in range(count):
            start = unpacker.tell()
            unpacker.skip()
            out.append(Part(view[start:unpacker.tell()], properties))
    except ProtocolError:
        raise
    except Exception as exc:  # truncated, or not msgpack
        raise ProtocolError(f"a malformed bundle: {type(exc).__name__}: {exc}"[:200]) from None
    if unpacker.tell() != view.nbytes:
        raise ProtocolError(f"{view.nbytes - unpacker.tell()} bytes after a bundle's messages")
    return out


def bundled(messages: Iterable[list[Any]], allowed: bool = True,
            ) -> Iterator[tuple[list[Any], int]]:
    """``messages`` (each a list of frames) as they go out, with how many each carries:
    runs of small ones as bundles, the rest alone, in their order; each alone unless
    ``allowed`` (the peer reads bundles)."""
    if not allowed:
        yield from ((frames, 1) for frames in messages)
        return
    run: list[bytes] = []
    size = 0
    for frames in messages:
        if bundleable(frames) and len(run) < MAX_BUNDLE and size + len(frames[0]) <= BUNDLE_BYTES:
            run.append(frames[0])
            size += len(frames[0])
            continue
        if run:
            yield _run(run)
        if bundleable(frames):
            run, size = [frames[0]], len(frames[0])
        else:
            run, size = [], 0
            yield frames, 1
    if run:
        yield _run(run)


def _run(headers: list[bytes]) -> tuple[list[Any], int]:
    return ([bundle(headers)] if len(headers) > 1 else headers), len(headers)


def unbundled(frames: list[Any]) -> list[list[Any]]:
    """A received message as the messages it holds: itself unless it is a bundle; nothing
    (logged) for a malformed bundle."""
    try:
        found = parts(frames[0]) if len(frames) == 1 else None
    except ProtocolError as exc:
        logger.warning("dropped a malformed bundle: %s", exc)
        return []
    return [frames] if found is None else [[part] for part in found]
