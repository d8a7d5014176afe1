"""Both ends of one chunked transfer, as pure logic: no sockets, no clocks.

``Outgoing`` is the sender: it cuts its array's bytes in chunks, never past the credit the
hub granted. ``Incoming`` is the receiver: it writes chunks, in order, straight into the
array it preallocated (no second copy) and says how much it holds. ``split_streams`` and
``join_streams`` swap large arrays in a message's values for ``StreamRef``s and back.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import numpy as np

from dlhub_hpc.errors import TransferFailed
from dlhub_hpc.protocol import Chunk, Credit, StreamRef, check_sendable_array
from dlhub_hpc.transfer.memory import populate, receiving_array

logger = logging.getLogger(__name__)


def new_ref(array: np.ndarray) -> StreamRef:
    """A fresh transfer for ``array``: a random id nobody else can guess."""
    check_sendable_array(array)
    return StreamRef(uuid.uuid4().hex, array.dtype.str, tuple(int(d) for d in array.shape))


def failed(ref_or_id: StreamRef | str, why: str) -> TransferFailed:
    tid = ref_or_id.transfer_id if isinstance(ref_or_id, StreamRef) else ref_or_id
    return TransferFailed(f"transfer {tid} was dropped: {why}", transfer_id=tid)


class Outgoing:
    """The sending end: ``grant`` what the hub allows, then send ``chunks()``."""

    def __init__(self, ref: StreamRef, array: np.ndarray) -> None:
        self.ref = ref
        # A flat byte view of the caller's array: chunks are slices of it, never copies.
        self._bytes = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        self.sent = 0
        self.allowed = 0
        self.chunk_bytes = 0

    def __repr__(self) -> str:
        return f"Outgoing({self.ref!r}, sent={self.sent}, allowed={self.allowed})"

    @property
    def done(self) -> bool:
        return self.sent >= self._bytes.size

    def grant(self, credit: Credit) -> None:
        """The hub allows bytes up to ``credit.offset``, in chunks of ``chunk_bytes``."""
        if credit.chunk_bytes <= 0:
            raise failed(self.ref, f"the hub granted chunks of {credit.chunk_bytes} bytes")
        self.chunk_bytes = credit.chunk_bytes
        self.allowed = max(self.allowed, min(credit.offset, self._bytes.size))

    def chunks(self) -> list[Chunk]:
        """The chunks the credit now allows (each a view of the array)."""
        out = []
        while self.sent < self.allowed:
            size = min(self.chunk_bytes, self.allowed - self.sent)
            out.append(Chunk(self.ref.transfer_id, self.sent,
                             self._bytes[self.sent:self.sent + size]))
            self.sent += size
        return out


class Incoming:
    """The receiving end: the preallocated array, filled chunk by chunk, in order."""

    def __init__(self, ref: StreamRef, max_bytes: int) -> None:
        self.ref = ref
        if ref.nbytes > max_bytes:
            raise failed(ref, f"the array is {ref.nbytes} bytes, over the {max_bytes} bytes "
                              "this side takes")
        try:
            self.array, self._populate = receiving_array(ref.shape, np.dtype(ref.dtype))
        except (MemoryError, ValueError, OSError) as exc:
            raise failed(ref, f"its array could not be allocated here ({exc})") from None
        self._bytes = self.array.reshape(-1).view(np.uint8)
        self._address = self._bytes.ctypes.data if self._populate else 0
        self.received = 0

    def __repr__(self) -> str:
        return f"Incoming({self.ref!r}, received={self.received})"

    @property
    def done(self) -> bool:
        return self.received >= self._bytes.size

    def accept(self, chunk: Chunk) -> None:
        """Write ``chunk`` in place; ``TransferFailed`` if it is not the next bytes."""
        data = chunk.data
        if data.dtype != np.uint8 or data.ndim != 1 or data.size == 0:
            raise failed(self.ref, "a chunk was not a non-empty run of bytes")
        if chunk.offset != self.received:
            raise failed(self.ref, f"a chunk came at offset {chunk.offset}, expected "
                                   f"{self.received}")
        end = chunk.offset + data.size
        if end > self._bytes.size:
            raise failed(self.ref, f"a chunk runs to byte {end}, past the array's "
                                   f"{self._bytes.size}")
        if self._populate:  # the chunk's pages in one call, not a fault per page
            self._populate = populate(self._address, chunk.offset, end)
        self._bytes[chunk.offset:end] = data
        self.received = end

    def credit(self) -> Credit:
        return Credit(self.ref.transfer_id, self.received)


def split_streams(values: list[Any], threshold: int) -> tuple[list[Any], list[Outgoing]]:
    """``values`` with each array over ``threshold`` bytes replaced by a ``StreamRef``, and
    the transfers that carry them (only the values themselves, not arrays nested deeper)."""
    out: list[Any] = []
    streams: list[Outgoing] = []
    for value in values:
        if isinstance(value, np.ndarray) and value.nbytes > threshold:
            ref = new_ref(value)
            streams.append(Outgoing(ref, value))
            value = ref
        out.append(value)
    return out, streams


def refs_in(values: list[Any]) -> list[tuple[int, StreamRef]]:
    """Where ``values`` hold a ``StreamRef`` (at the top level only)."""
    return [(i, v) for i, v in enumerate(values) if type(v) is StreamRef]
