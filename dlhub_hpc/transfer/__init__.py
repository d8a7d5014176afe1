"""Chunked transfers of large arrays, with credit-based flow control.

An array over ``STREAM_BYTES`` does not travel inside its message: a ``StreamRef`` stands
in its place and its bytes follow as ``Chunk`` messages. The receiver preallocates the
array and says, with ``Credit``, how much it holds; the hub (``relay``) lets the sender
run at most ``transfer_window_bytes`` ahead of that, so the hub never holds more of one
transfer than its window, and each loop step moves one chunk. ``window`` is the pure
logic of both ends; ``pump`` drives it on a client's or worker's socket.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

# Arrays larger than this travel in chunks (smaller ones as one raw frame, which is faster).
STREAM_BYTES = 64 * 2**20
# Small chunks and a small window keep other callers' messages from queueing behind bulk
# bytes: each chunk is decrypted and encrypted whole by the hub's one ZMQ I/O thread (about
# 1 ms per 256 KiB hop on a small node, 16 ms per 4 MiB), and a window's worth may be
# queued ahead of a small reply there. 256 KiB still amortises the loop's per-message cost.
DEFAULT_CHUNK_BYTES = 256 * 2**10
DEFAULT_WINDOW_BYTES = 4 * DEFAULT_CHUNK_BYTES
DEFAULT_TRANSFER_TIMEOUT = 30.0  # seconds a transfer may make no progress before it is dropped
