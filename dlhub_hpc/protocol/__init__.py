"""The wire format between clients, the hub and workers.

A message is one msgpack header frame ``[PROTOCOL_VERSION, tag, *fields]`` followed by
zero or more raw buffer frames. A numpy array larger than ``INLINE_ARRAY_BYTES`` travels
as a raw frame: the header holds only an ext record ``(dtype, shape, frame index)``, so a
large array is never copied through Python objects on either side (it is sent from, and
decoded as a view of, the frame's memory). A smaller one travels inside the header, so a
batch of single rows stays one message part per hop. A value the hub passes on as it
received it (``Encoded``) travels as a frame of msgpack bytes, expanded by the receiver's
decode with the same checks as any other value. Messages are small dataclasses dispatched
by tag.

The package's modules, each with one job:

- :mod:`~dlhub_hpc.protocol.constants`: the protocol version, extension codes, size and
  depth limits, default ports, and the signatures of the codec's hooks;
- :mod:`~dlhub_hpc.protocol.messages`: the message dataclasses, dispatched by tag;
- :mod:`~dlhub_hpc.protocol.values`: what a message may carry, and the checks on values;
- :mod:`~dlhub_hpc.protocol.codec`: :func:`encode` and :func:`decode`;
- :mod:`~dlhub_hpc.protocol.partial`: reading part of a message (a large request with its
  payload kept encoded, :func:`peek`).

Every name is importable from here, as it was from the single module this package was.
"""

from __future__ import annotations

import logging

from dlhub_hpc.protocol.codec import _array_header_size as _array_header_size
from dlhub_hpc.protocol.codec import _as_buffer as _as_buffer
from dlhub_hpc.protocol.codec import _decode as _decode
from dlhub_hpc.protocol.codec import _ext_hook as _ext_hook
from dlhub_hpc.protocol.codec import _frame_index as _frame_index
from dlhub_hpc.protocol.codec import _message_of as _message_of
from dlhub_hpc.protocol.codec import _pack_default as _pack_default
from dlhub_hpc.protocol.codec import _stream_ref as _stream_ref
from dlhub_hpc.protocol.codec import _unpack as _unpack
from dlhub_hpc.protocol.codec import decode, encode, encode_value
from dlhub_hpc.protocol.constants import _FLOAT64 as _FLOAT64
from dlhub_hpc.protocol.constants import _PEEK_BYTES as _PEEK_BYTES
from dlhub_hpc.protocol.constants import _SLICE_BYTES as _SLICE_BYTES
from dlhub_hpc.protocol.constants import _WALK_SLICE as _WALK_SLICE
from dlhub_hpc.protocol.constants import _WIRE_DEPTH as _WIRE_DEPTH
from dlhub_hpc.protocol.constants import (
    DEFAULT_CLIENT_PORT,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_WORKER_PORT,
    ENCODED_EXT,
    INLINE_ARRAY_BYTES,
    INT64_MAX,
    INT64_MIN,
    LOCAL_EXT,
    MAX_DEPTH,
    NDARRAY_EXT,
    NDARRAY_INLINE_EXT,
    PROTOCOL_VERSION,
    REF_EXT,
    STREAM_EXT,
    Fetch,
    Pause,
    Share,
)
from dlhub_hpc.protocol.messages import _BY_TAG as _BY_TAG
from dlhub_hpc.protocol.messages import _NONE as _NONE
from dlhub_hpc.protocol.messages import _NUM as _NUM
from dlhub_hpc.protocol.messages import (
    Abort,
    Assign,
    Batch,
    BatchResult,
    Bye,
    Chunk,
    Control,
    Credit,
    Drain,
    Heartbeat,
    Hello,
    LoadFailed,
    LocalOffer,
    Message,
    Ready,
    Recall,
    Reply,
    Request,
    Shutdown,
    Tag,
)
from dlhub_hpc.protocol.messages import M as M
from dlhub_hpc.protocol.messages import _Check as _Check
from dlhub_hpc.protocol.messages import _check_of as _check_of
from dlhub_hpc.protocol.messages import _message as _message
from dlhub_hpc.protocol.partial import expand_payload, packed_floats, peek, split_request
from dlhub_hpc.protocol.values import _CONTAINERS as _CONTAINERS
from dlhub_hpc.protocol.values import _LEAVES as _LEAVES
from dlhub_hpc.protocol.values import _LIST as _LIST
from dlhub_hpc.protocol.values import _STR as _STR
from dlhub_hpc.protocol.values import (
    Encoded,
    StreamRef,
    check_carriable,
    check_sendable_array,
    plain_value,
)
from dlhub_hpc.protocol.values import _check_field as _check_field
from dlhub_hpc.protocol.values import _check_keys as _check_keys
from dlhub_hpc.protocol.values import _key_of as _key_of
from dlhub_hpc.protocol.values import _product as _product
from dlhub_hpc.protocol.values import _Refused as _Refused
from dlhub_hpc.protocol.values import _walk as _walk
from dlhub_hpc.protocol.values import _walk_sliced as _walk_sliced

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_CLIENT_PORT", "DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_WORKER_PORT", "ENCODED_EXT",
           "INLINE_ARRAY_BYTES", "INT64_MAX", "INT64_MIN", "LOCAL_EXT", "MAX_DEPTH", "NDARRAY_EXT",
           "NDARRAY_INLINE_EXT", "PROTOCOL_VERSION", "REF_EXT", "STREAM_EXT", "Abort", "Assign",
           "Batch", "BatchResult", "Bye", "Chunk", "Control", "Credit", "Drain", "Encoded", "Fetch",
           "Heartbeat", "Hello", "LoadFailed", "LocalOffer", "Message", "Pause", "Ready", "Recall",
           "Reply", "Request", "Share", "Shutdown", "StreamRef", "Tag", "check_carriable",
           "check_sendable_array", "decode", "encode", "encode_value", "expand_payload",
           "packed_floats", "peek", "plain_value", "split_request"]
