"""Encode a message as frames (a msgpack header, then raw array frames) and decode frames
back into a checked message, with numpy arrays, refs and encoded values as extension types."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np

from dlhub_hpc import references
from dlhub_hpc.errors import DlhubHpcError, InvalidInput, ProtocolError
from dlhub_hpc.protocol.constants import (
    _SLICE_BYTES,
    _WALK_SLICE,
    ENCODED_EXT,
    INLINE_ARRAY_BYTES,
    INT64_MAX,
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
from dlhub_hpc.protocol.messages import _BY_TAG, Message
from dlhub_hpc.protocol.values import (
    Encoded,
    StreamRef,
    _check_field,
    _product,
    check_sendable_array,
    plain_value,
)


def _stream_ref(data: bytes) -> StreamRef:
    tid, dtype, shape = data.decode().split(";")
    if not 0 < len(tid) <= 64 or not tid.replace("-", "").isalnum():
        raise ProtocolError("a stream's transfer id must be 1-64 letters, digits or '-'")
    dt = np.dtype(dtype)
    if dt.hasobject or dt.names is not None or dt.kind == "V" or dt.itemsize == 0:
        raise ProtocolError(f"numpy arrays of dtype {dt} are not accepted on the wire")
    dims = tuple(int(d) for d in shape.split(",")) if shape else ()
    if len(dims) > 32 or any(d < 0 for d in dims) or _product(dims) * dt.itemsize > INT64_MAX:
        raise ProtocolError(f"a stream's shape {dims} is not an array's"[:120])
    return StreamRef(tid, dt.str, dims)


def _pack_default(buffers: list[Any], share: Share | None = None) -> Any:
    def default(obj: Any) -> Any:
        if isinstance(obj, Encoded):  # sent as it came: a frame, never copied here
            buffers.append(obj.data)
            return msgpack.ExtType(ENCODED_EXT, str(len(buffers)).encode())
        if isinstance(obj, StreamRef):
            shape = ",".join(map(str, obj.shape))
            return msgpack.ExtType(STREAM_EXT, f"{obj.transfer_id};{obj.dtype};{shape}".encode())
        if not isinstance(obj, np.ndarray):
            if isinstance(obj, references.FileRef | references.URLRef):
                return msgpack.ExtType(REF_EXT, references.to_wire(obj))
            return plain_value(obj)
        check_sendable_array(obj)
        shape = ",".join(map(str, obj.shape))
        # "dtype;d0,d1,...;...": cheaper than a nested packb inside this hook
        if obj.nbytes <= INLINE_ARRAY_BYTES:
            head = f"{obj.dtype.str};{shape};".encode()
            return msgpack.ExtType(NDARRAY_INLINE_EXT, head + obj.tobytes())
        ticket = None if share is None else share(obj)
        if ticket is not None:  # in a sealed memfd, handed over beside the message
            return msgpack.ExtType(LOCAL_EXT, f"{obj.dtype.str};{shape};{ticket}".encode())
        arr = np.ascontiguousarray(obj)  # a no-op (no copy) for C-ordered arrays
        buffers.append(arr.reshape(-1).view(np.uint8).data)  # any dtype, still no copy
        return msgpack.ExtType(NDARRAY_EXT, f"{obj.dtype.str};{shape};{len(buffers)}".encode())

    return default


def encode(msg: Message, share: Share | None = None) -> list[Any]:
    """Encode ``msg`` as frames: a msgpack header, then one raw frame per numpy array larger
    than ``INLINE_ARRAY_BYTES`` (smaller ones travel in the header), unless ``share`` gives
    a same-node fast-path ticket for it."""
    buffers: list[Any] = []
    values = type(msg).HEADER(msg)
    while msg.OMIT_LAST_NONE and len(values) > 2 + msg.REQUIRED and values[-1] is None:
        values.pop()  # trailing optional fields left unset
    try:
        header = msgpack.packb(values, default=_pack_default(buffers, share),
                               use_bin_type=True)
    except DlhubHpcError:
        raise
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"a string cannot be sent: {exc.reason} ({exc.object[exc.start:exc.end]!r}); "
            "strings must be valid Unicode (a lone surrogate usually comes from decoding "
            "bytes with errors='surrogateescape'); send bytes instead"
        ) from None
    except OverflowError:
        raise InvalidInput("an integer does not fit in 64 bits; send it as a string or a "
                           "float") from None
    except Exception as exc:  # msgpack's own refusals, e.g. its recursion limit
        raise InvalidInput(f"{type(msg).__name__} cannot be sent: {exc}; values may nest at "
                           f"most {MAX_DEPTH} deep") from None
    return [header, *buffers]


def encode_value(value: Any, pause: Pause) -> Encoded | None:
    """``value`` encoded as it would be inside a message, a slice of a list at a time with
    ``pause()`` between slices; None when it holds arrays that need frames of their own
    (those travel without a copy anyway) or that encode() would refuse."""
    buffers: list[Any] = []
    packer = msgpack.Packer(default=_pack_default(buffers), use_bin_type=True)
    try:
        if not isinstance(value, list) or len(value) <= _WALK_SLICE:
            out: Any = packer.pack(value)
        else:
            out = bytearray(packer.pack_array_header(len(value)))
            for start in range(0, len(value), _WALK_SLICE):
                part = value[start:start + _WALK_SLICE]
                out += memoryview(packer.pack(part))[_array_header_size(len(part)):]
                pause()
    except Exception:  # encode() says why, where the message is sent
        return None
    return None if buffers else Encoded(out)


def _array_header_size(count: int) -> int:
    return 1 if count <= 0x0F else 3 if count <= 0xFFFF else 5


def _as_buffer(frame: Any) -> Any:
    # zmq.Frame exposes its memory as .buffer; bytes and memoryview are used as they are.
    return getattr(frame, "buffer", frame)


def _ext_hook(frames: Sequence[Any], pause: Pause | None = None,
              fetch: Fetch | None = None) -> Any:
    expanded: set[int] = set()

    def hook(code: int, data: bytes) -> Any:
        if code == ENCODED_EXT:
            index = _frame_index(frames, data, "an encoded value")
            if index in expanded:  # each frame once: no way to multiply one frame's objects
                raise ProtocolError(f"encoded value frame {index} is referred to twice")
            expanded.add(index)
            # Expanded with no frames: an encoded value holds no frame references of its own.
            return _unpack(_as_buffer(frames[index]), _ext_hook((), pause), pause)
        if code == REF_EXT:
            return references.from_wire(data)
        if code == STREAM_EXT:
            return _stream_ref(data)
        if code == NDARRAY_INLINE_EXT:
            dtype, shape, raw = data.split(b";", 2)
            memory: Any = bytearray(raw)  # writable, like an array read from its own frame
        elif code == NDARRAY_EXT:
            dtype, shape, where = data.split(b";")
            memory = _as_buffer(frames[_frame_index(frames, where, "an array")])
        elif code == LOCAL_EXT:
            dtype, shape, ticket = data.split(b";")
        else:
            raise ProtocolError(f"unknown msgpack extension code {code}")
        dt = np.dtype(dtype.decode())
        if dt.hasobject or dt.names is not None or dt.kind == "V":
            # What encode() refuses must not get in either: it could not be sent on.
            raise ProtocolError(f"numpy arrays of dtype {dt} are not accepted on the wire")
        dims = [int(d) for d in shape.split(b",")] if shape else []
        if code == LOCAL_EXT:
            if fetch is None:
                raise ProtocolError("a same-node array came where the local path is not open")
            return fetch(ticket.decode(), dt, tuple(dims))
        return np.frombuffer(memory, dtype=dt).reshape(dims)

    return hook


def _frame_index(frames: Sequence[Any], data: bytes, what: str) -> int:
    index = int(data)
    if not 1 <= index < len(frames):  # 0 is the header itself
        raise ProtocolError(f"{what} refers to frame {index}, which this message does not "
                            f"have ({len(frames) - 1} besides the header)")
    return index


def _unpack(buffer: Any, hook: Any, pause: Pause | None) -> Any:
    """One msgpack value, exactly; with ``pause``, parsed a slice at a time and ``pause()``
    called between slices (so a thread decoding a big value lets others run)."""
    if pause is None:  # the loop's small messages: nothing in their way
        return msgpack.unpackb(buffer, ext_hook=hook, raw=False, strict_map_key=False)
    view = memoryview(buffer).cast("B")
    size = view.nbytes
    if size <= _SLICE_BYTES:
        return msgpack.unpackb(view, ext_hook=hook, raw=False, strict_map_key=False)
    # The same length limits as unpackb's (each the buffer's size); the parse resumes where
    # the previous slice ran out.
    unpacker = msgpack.Unpacker(ext_hook=hook, raw=False, strict_map_key=False,
                                max_buffer_size=size)
    for start in range(0, size, _SLICE_BYTES):
        unpacker.feed(view[start:start + _SLICE_BYTES])
        try:
            value = unpacker.unpack()
        except msgpack.OutOfData:
            pause()
            continue
        if unpacker.tell() != size:
            raise ProtocolError(f"{size - unpacker.tell()} bytes of extra data after the value")
        return value
    raise ProtocolError("truncated msgpack: a value runs past the end of its frame")


def decode(frames: Sequence[Any], pause: Pause | None = None,
           fetch: Fetch | None = None) -> Message:
    """Decode frames made by :func:`encode`; anything malformed raises ``ProtocolError``,
    and nothing a peer sends raises anything else. With ``pause`` (a thread beside the
    hub's loop decoding a large message), the work is cut in slices of about a
    millisecond and ``pause()`` is called between them. ``fetch`` takes the arrays that
    came by the same-node fast path; without it such an array is a ``ProtocolError``."""
    try:
        return _decode(frames, pause, fetch)
    except ProtocolError:
        raise
    except Exception as exc:  # a hostile peer may find a path we did not think of
        raise ProtocolError(f"undecodable message: {type(exc).__name__}: {exc}") from None


def _decode(frames: Sequence[Any], pause: Pause | None, fetch: Fetch | None = None) -> Message:
    if not frames:
        raise ProtocolError("empty message")
    try:
        values = _unpack(_as_buffer(frames[0]), _ext_hook(frames, pause, fetch), pause)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"undecodable header frame: {exc}") from exc
    return _message_of(values, pause)


def _message_of(values: Any, pause: Pause | None) -> Message:
    if type(values) is not list or len(values) < 2:
        raise ProtocolError("header frame is not a [version, tag, ...] array")
    version, tag, *body = values
    if type(version) is not int or version != PROTOCOL_VERSION:
        shown = version if type(version) is int else type(version).__name__
        raise ProtocolError(
            f"protocol version {shown!r} is not {PROTOCOL_VERSION}; upgrade the older side",
            version=shown,
        )
    cls = _BY_TAG.get(tag) if type(tag) is int else None
    if cls is None:
        raise ProtocolError(f"unknown message tag {tag!r}"[:120])
    if not cls.REQUIRED <= len(body) <= len(cls.FIELDS):  # an older peer omits newer fields
        raise ProtocolError(f"{cls.__name__} has {len(cls.FIELDS)} fields, got {len(body)}")
    for check, value in zip(cls.CHECKS, body, strict=False):
        if not (check.plain and isinstance(value, check.types)):
            _check_field(cls, check, value, pause)
    return cls(*body)
