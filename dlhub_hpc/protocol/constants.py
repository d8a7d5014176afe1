"""The wire's numbers (protocol version, msgpack extension codes, size and depth limits,
default ports) and the signatures of the hooks a codec call takes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

PROTOCOL_VERSION = 1
NDARRAY_EXT = 1  # an array in a frame of its own: "dtype;shape;frame index"
NDARRAY_INLINE_EXT = 2  # a small array inside the header: "dtype;shape;" then its bytes
ENCODED_EXT = 3  # a value already msgpack-encoded, in a frame of its own: "frame index"
STREAM_EXT = 4  # an array that follows in chunks (dlhub_hpc.transfer): "id;dtype;shape"
REF_EXT = 5  # a FileRef or URLRef: msgpack [kind, target] (dlhub_hpc.references)
LOCAL_EXT = 6  # an array in a sealed memfd on this node (dlhub_hpc.localpath): "dtype;shape;ticket"
# Arrays up to this size travel inside the header: every extra frame costs a message part
# (and a CurveZMQ box) on each hop, and ZeroMQ copies parts this small anyway.
INLINE_ARRAY_BYTES = 16384
# How deeply an input or an output may nest (lists and dicts in one another). Senders
# refuse deeper values (InvalidInput); decoders refuse them too, as ProtocolError.
MAX_DEPTH = 64
# A whole header may nest a little deeper: the protocol's own wrappers (a batch's list, a
# result's pair, the outputs of parallel pipeline stages) come on top of a value.
_WIRE_DEPTH = MAX_DEPTH + 16
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # integer fields of a message (SQLite's range)
_PEEK_BYTES = 4096  # peek() reads a tag and a request or batch id: they are short
# A sliced decode (``pause`` given) parses this much msgpack, or walks this many list items,
# between pauses: about a millisecond of work holding the GIL.
_SLICE_BYTES = 1 << 17
_WALK_SLICE = 16384
_FLOAT64 = 0xCB  # msgpack's marker of a float 64
Pause = Callable[[], None]  # what a sliced decode calls between slices
# The same-node fast path's hooks (dlhub_hpc.localpath): ``share`` turns a large array into
# a ticket (None: send it as a frame); ``fetch`` turns a ticket back into the array.
Share = Callable[[np.ndarray], "str | None"]
Fetch = Callable[[str, np.dtype, tuple[int, ...]], Any]
# The largest message a client or worker may send unless the hub's config says otherwise.
DEFAULT_MAX_MESSAGE_BYTES = 256 * 2**20

DEFAULT_CLIENT_PORT = 47650
DEFAULT_WORKER_PORT = 47651
# A worker looks this often (seconds) whether a heartbeat is due, so that a shorter beat
# the hub names (Heartbeat.interval) holds within it.
HEARTBEAT_NOTICE = 0.5
