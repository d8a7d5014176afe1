"""What travels through Globus Compute: msgpack values inside a versioned call and reply.

Nothing here is pickled. A call is one msgpack map, base64-encoded into one string argument
of the forwarding function (Globus Compute's ``JSONData`` serializer carries it); the reply
comes back the same way. Each input and each output is packed on its own (``pack_value``),
so a caller can size batches before sending and the endpoint can size results before
returning. numpy arrays travel as a msgpack extension: ``[dtype, shape, raw bytes]``.

Call::

    {"v": 1, "op": "run", "servable": "owner/name[@version]", "method": "", "timeout": 60.0,
     "cache": true, "result_limit": 10000000, "items": [<packed input>, ...]}
    {"v": 1, "op": "whoami"}

Reply::

    {"v": 1, "who": {"user": ..., "uid": ..., "host": ..., "pid": ..., "hub": ...},
     "results": [["ok", <packed output>] | ["error", <error record>] | ["deferred", null]],
     "error": <error record> | null}

``deferred`` marks an item whose output did not fit in this reply next to the others; the
caller asks for it again in another call.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any

import msgpack
import numpy as np

from dlhub_hpc.errors import ProtocolError
from dlhub_hpc.protocol import check_sendable_array, plain_value

logger = logging.getLogger(__name__)

BRIDGE_VERSION = 1
NDARRAY_EXT = 1

OK = "ok"
ERROR = "error"
DEFERRED = "deferred"
STATUSES = (OK, ERROR, DEFERRED)


def _default(obj: Any) -> Any:
    # One self-contained string crosses Globus Compute: arrays go inline, not as frames.
    if not isinstance(obj, np.ndarray):
        return plain_value(obj)
    check_sendable_array(obj)
    body = [obj.dtype.str, list(obj.shape), np.ascontiguousarray(obj).tobytes()]
    return msgpack.ExtType(NDARRAY_EXT, msgpack.packb(body, use_bin_type=True))


def _ext_hook(code: int, data: bytes) -> Any:
    if code != NDARRAY_EXT:
        raise ProtocolError(f"unknown msgpack extension code {code}")
    dtype, shape, raw = msgpack.unpackb(data, raw=False)
    return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)


def pack_value(value: Any) -> bytes:
    """One input or output as msgpack; ``InvalidInput`` for values that cannot travel."""
    return msgpack.packb(value, default=_default, use_bin_type=True)


def unpack_value(data: bytes) -> Any:
    """The inverse of :func:`pack_value` (numpy arrays come back read-only)."""
    try:
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"undecodable value: {exc}") from exc


def encode_envelope(envelope: dict[str, Any]) -> str:
    """A call or reply map as the one string that Globus Compute carries."""
    return base64.b64encode(msgpack.packb(envelope, use_bin_type=True)).decode("ascii")


def envelope_size(envelope: dict[str, Any]) -> int:
    """Bytes of the packed map (before base64)."""
    return len(msgpack.packb(envelope, use_bin_type=True))


def decode_envelope(text: Any, what: str) -> dict[str, Any]:
    """The map inside a call or reply string; ``ProtocolError`` for anything else."""
    if not isinstance(text, str):
        raise ProtocolError(f"a dlhub-hpc {what} is a string, got {type(text).__name__}")
    try:
        data = msgpack.unpackb(base64.b64decode(text, validate=True), raw=False)
    except (binascii.Error, ValueError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"undecodable dlhub-hpc {what}: {exc}") from exc
    if not isinstance(data, dict):
        raise ProtocolError(f"a dlhub-hpc {what} is a map, got {type(data).__name__}")
    version = data.get("v")
    if version != BRIDGE_VERSION:
        raise ProtocolError(
            f"this {what} speaks bridge version {version!r}, this side {BRIDGE_VERSION}; "
            "install the same dlhub-hpc version on the laptop and on the endpoint",
            version=version,
        )
    return data


def encoded_size(raw_bytes: int) -> int:
    """Characters of the base64 text of ``raw_bytes`` bytes."""
    return 4 * -(-raw_bytes // 3)


def max_raw_size(encoded_budget: int) -> int:
    """The most bytes whose base64 text fits in ``encoded_budget`` characters."""
    return max(0, 3 * (encoded_budget // 4))
