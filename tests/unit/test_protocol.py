"""The wire format: every message round-trips; large arrays travel as raw frames, without
copies, and small ones inside the header."""

from __future__ import annotations

import datetime
from typing import Any

import msgpack
import numpy as np
import pytest

from dlhub_hpc.errors import InvalidInput, ProtocolError
from dlhub_hpc.protocol import (
    INLINE_ARRAY_BYTES,
    NDARRAY_EXT,
    NDARRAY_INLINE_EXT,
    PROTOCOL_VERSION,
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
    Ready,
    Recall,
    Reply,
    Request,
    Shutdown,
    Tag,
    decode,
    encode,
)

EVERY_MESSAGE = [
    Request("r1", "demo/add", 2, "run", {"numbers": [1, 2.5]}, 3.0),
    Request("r2", "demo/add", None, "", None),
    Reply("r1", True, [1, "two", b"three", {"four": 4.0}], None),
    Reply("r2", False, None, {"type": "Timeout", "message": "late", "details": {}}),
    Control("c1", "status", {"verbose": True}),
    Hello("w1", "demo/add", None, "nid0001", 4242, "block-3"),
    Assign("demo/add", 1, "ab" * 32, {"dlhub": {"name": "add"}}, b"\x00tar bytes\xff"),
    Ready("w1"),
    LoadFailed("w1", {"type": "ServableLoadError", "message": "boom", "details": {}}),
    Batch(7, "run", [[1.0], [2.0]]),
    BatchResult(7, [[True, 1.0], [False, {"type": "ExecutionError"}]]),
    Heartbeat("w1"),
    Shutdown("walltime"),
    Bye("w1", "signal SIGTERM"),
    Drain("w1", "walltime in 30s"),
    Recall(8),
    LocalOffer({"socket": "\0dlhub-hpc-x", "token": "t", "proof": "p", "min_bytes": 1 << 20}),
    Hello("w2", "demo/mpi", 1, "nid0002", 7, None, 2, {"env": "CUDA_VISIBLE_DEVICES"}),
    Hello("w3", "", None, "nid0003", 8, None, 1, None, {"spec": "owner:alice", "budget": 1}),
    Ready("w3", {"loaded": "alice/a@1", "nbytes": 5, "holds": [["alice/a@1", 5]]}),
    Batch(8, "run", [[1.0]], None, "alice/a@1"),
    Credit("t1", 4096, 1024),
    Abort("t1", {"type": "TransferFailed", "message": "gone", "details": {}}),
    Chunk("t1", 0, np.ones(1, dtype=np.uint8)),  # one byte: inline, and == works
]


def roundtrip(value: Any) -> Any:
    return decode(encode(Reply("r", True, value, None))).value


def header(*values: Any) -> list[bytes]:
    return [msgpack.packb(list(values), use_bin_type=True)]


def frame_array(frame: Any) -> np.ndarray:
    return np.frombuffer(frame, dtype=np.uint8)


@pytest.mark.parametrize("msg", EVERY_MESSAGE, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg: Any) -> None:
    frames = encode(msg)
    assert len(frames) == 1  # no arrays: the header alone
    assert decode(frames) == msg


def test_the_round_trip_cases_cover_every_tag() -> None:
    assert {m.TAG for m in EVERY_MESSAGE} == set(Tag)


def test_the_header_starts_with_version_and_tag() -> None:
    values = msgpack.unpackb(encode(Ready("w1"))[0])
    assert values == [PROTOCOL_VERSION, int(Tag.READY), "w1"]


# ---- numpy arrays --------------------------------------------------------------------------

def test_a_large_array_is_sent_from_its_own_memory() -> None:
    arr = np.random.default_rng(0).random(131_072)  # 1 MiB of float64
    frames = encode(Reply("r", True, arr, None))
    assert len(frames) == 2 and len(frames[0]) < 100  # the header holds only the metadata
    assert np.shares_memory(frame_array(frames[1]), arr)
    out = decode([bytes(f) for f in frames]).value
    assert out.dtype == arr.dtype and np.array_equal(out, arr)


def test_a_decoded_array_is_a_view_of_its_frame() -> None:
    arr = np.arange(INLINE_ARRAY_BYTES // 4 + 4, dtype=np.int32)  # just over the inline limit
    head, body = encode(Reply("r", True, arr, None))
    frame = bytearray(body)
    out = decode([head, frame]).value
    assert np.shares_memory(out, frame_array(frame))
    frame[:4] = np.int32(-5).tobytes()
    assert out[0] == -5  # same memory, not a copy


def test_frames_exposing_a_buffer_attribute_are_read_through_it() -> None:
    class FakeZmqFrame:  # zmq.Frame exposes its memory as .buffer
        def __init__(self, data: Any) -> None:
            self.buffer = memoryview(data)

    arr = np.linspace(0, 1, INLINE_ARRAY_BYTES // 8 + 1)
    frames = [FakeZmqFrame(bytearray(f)) for f in encode(Reply("r", True, arr, None))]
    out = decode(frames).value
    assert np.array_equal(out, arr) and np.shares_memory(out, frame_array(frames[1].buffer))


@pytest.mark.parametrize("nbytes", [0, 8, INLINE_ARRAY_BYTES])
def test_small_arrays_travel_inside_the_header(nbytes: int) -> None:
    arr = np.arange(nbytes // 8, dtype=np.float64).reshape(-1, 1)
    frames = encode(Request("r", "demo/x", None, "run", [arr, arr * 2]))
    assert len(frames) == 1  # one message part per hop, however many rows a batch holds
    ext = msgpack.unpackb(frames[0], raw=False)[6][0]
    assert ext.code == NDARRAY_INLINE_EXT
    out = decode(frames).payload
    assert out[0].shape == arr.shape and out[0].dtype == arr.dtype
    assert np.array_equal(out[0], arr) and np.array_equal(out[1], arr * 2)


def test_one_byte_over_the_inline_limit_gets_its_own_frame() -> None:
    arr = np.zeros(INLINE_ARRAY_BYTES + 1, dtype=np.uint8)
    frames = encode(Reply("r", True, arr, None))
    assert len(frames) == 2 and np.shares_memory(frame_array(frames[1]), arr)
    assert np.array_equal(decode(frames).value, arr)


def test_inline_array_bytes_containing_the_separator_survive() -> None:
    arr = np.frombuffer(b";;;;" * 4, dtype=np.uint8).reshape(2, 8)
    assert np.array_equal(roundtrip(arr), arr)


@pytest.mark.parametrize("arr", [
    np.zeros((0, 3)),
    np.arange(6, dtype=">i4").reshape(2, 3),
    np.array([True, False]),
    np.array([1 + 2j], dtype=np.complex64),
], ids=["empty", "big-endian", "bool", "complex"])
def test_arrays_keep_shape_dtype_and_values(arr: np.ndarray) -> None:
    out = roundtrip(arr)
    assert out.shape == arr.shape and out.dtype == arr.dtype
    assert np.array_equal(out, arr)


@pytest.mark.parametrize("arr", [np.array(3.5), np.array(7, dtype=np.uint16)],
                         ids=["float64", "uint16"])
def test_zero_dimensional_arrays_stay_zero_dimensional(arr: np.ndarray) -> None:
    out = roundtrip(arr)
    assert out.shape == () and out.dtype == arr.dtype and out == arr


@pytest.mark.parametrize("view", ["strided", "fortran", "transposed"])
def test_non_contiguous_arrays_are_copied_once_and_arrive_intact(view: str) -> None:
    base = np.arange(4 * INLINE_ARRAY_BYTES // 8, dtype=np.float64).reshape(4, -1)
    arr = {"strided": base[::2, ::3], "fortran": np.asfortranarray(base),
           "transposed": base.T}[view]
    if view == "strided":
        base = np.arange(8 * INLINE_ARRAY_BYTES // 8, dtype=np.float64).reshape(8, -1)
        arr = base[::2, ::3]
    frames = encode(Reply("r", True, arr, None))
    assert len(frames) == 2 and not np.shares_memory(frame_array(frames[1]), base)
    out = decode(frames).value
    assert out.flags.c_contiguous and np.array_equal(out, arr)


def test_several_large_arrays_in_nested_containers_each_get_a_frame() -> None:
    n = INLINE_ARRAY_BYTES  # every array below is larger than the inline limit
    a, b = np.arange(n), np.ones((2, n // 2), dtype=np.float32)
    c = np.array(["x" * (n // 4), "yz"])
    payload = {"a": a, "inner": {"b": b, "items": [c, "text", 4]}}
    frames = encode(Request("r", "demo/x", None, "run", payload))
    assert len(frames) == 4
    out = decode(frames).payload
    assert np.array_equal(out["a"], a) and np.array_equal(out["inner"]["b"], b)
    assert np.array_equal(out["inner"]["items"][0], c) and out["inner"]["items"][1:] == ["text", 4]
    assert out["inner"]["b"].dtype == np.float32 and out["inner"]["items"][0].dtype == c.dtype


def test_numpy_scalars_tuples_and_sets_become_plain_values() -> None:
    out = roundtrip({"i": np.int64(5), "f": np.float32(1.5), "b": np.bool_(True),
                     "t": (1, 2), "s": {3}})
    assert out == {"i": 5, "f": 1.5, "b": True, "t": [1, 2], "s": [3]}
    assert type(out["i"]) is int and type(out["b"]) is bool


def test_object_arrays_are_refused_with_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="dtype object") as info:
        encode(Reply("r", True, np.array([{}, 1], dtype=object), None))
    assert info.value.details == {"dtype": "object"}


@pytest.mark.parametrize("value", [object(), 1 + 2j, datetime.date(2026, 1, 1)],
                         ids=["object", "complex", "date"])
def test_unsupported_values_are_refused_with_invalid_input(value: Any) -> None:
    with pytest.raises(InvalidInput, match="cannot be sent") as info:
        encode(Reply("r", True, {"x": [value]}, None))
    assert info.value.details == {"type": type(value).__name__}


def test_datetime_arrays_round_trip_or_are_refused_with_invalid_input() -> None:
    arr = np.array(["2026-01-01", "2026-06-30"], dtype="datetime64[D]")
    try:
        out = roundtrip(arr)
    except InvalidInput:
        return
    assert out.dtype == arr.dtype and np.array_equal(out, arr)


def test_structured_arrays_round_trip_or_are_refused_with_invalid_input() -> None:
    arr = np.array([(1.5, 2)], dtype=[("x", "<f8"), ("n", "<i4")])
    try:
        out = roundtrip(arr)
    except InvalidInput:
        return
    assert out.dtype == arr.dtype and out["x"][0] == 1.5


# ---- malformed frames ----------------------------------------------------------------------

def ext(code: int, dtype: str, shape: list[int], index: int) -> msgpack.ExtType:
    return msgpack.ExtType(code, f"{dtype};{','.join(map(str, shape))};{index}".encode())


@pytest.mark.parametrize(("frames", "words"), [
    ([], "empty message"),
    ([b"\xc1\xc1\xc1"], "undecodable header"),
    ([msgpack.packb([1, int(Tag.READY), "w1"])[:-2]], "undecodable header"),
    (header(42), "not a [version, tag, ...] array"),
    (header(1), "not a [version, tag, ...] array"),
    (header(2, int(Tag.READY), "w1"), "protocol version 2 is not 1"),
    (header(1, 99, "w1"), "unknown message tag 99"),
    (header(1, "READY", "w1"), "unknown message tag 'READY'"),
    (header(1, int(Tag.READY)), "Ready has 2 fields, got 0"),
    (header(1, int(Tag.BYE), "w1", "x", "y"), "Bye has 2 fields, got 3"),
    (header(1, int(Tag.READY), 17), "Ready.worker_id has type int"),
    (header(1, int(Tag.BATCH), "1", "run", []), "Batch.batch_id has type str"),
    (header(1, int(Tag.REQUEST), "r", "s", "latest", "run", None, None, True),
     "Request.version has type str"),
    (header(1, int(Tag.ASSIGN), "s", 1, "d", {}, "not bytes"), "Assign.bundle has type str"),
    (header(1, int(Tag.REPLY), "r", True, ext(9, "<f8", [1], 1), None),
     "unknown msgpack extension code 9"),
    (header(1, int(Tag.REPLY), "r", True, ext(NDARRAY_EXT, "<f8", [1], 1), None),
     "refers to frame 1, which this message does not have"),
    (header(1, int(Tag.REPLY), "r", True, msgpack.ExtType(NDARRAY_EXT, b"\xff;;"), None),
     "undecodable header"),  # the array record itself is garbage
], ids=[
    "no-frames", "garbage", "truncated", "not-a-list", "no-tag", "wrong-version",
    "unknown-tag", "string-tag", "too-few-fields", "too-many-fields", "str-field-int",
    "int-field-str", "optional-field-str", "bytes-field-str", "unknown-ext", "missing-frame",
    "garbage-array-record",
])
def test_malformed_frames_raise_protocol_error(frames: list[bytes], words: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(frames)
    assert words in info.value.message


def test_an_array_frame_of_the_wrong_size_raises_protocol_error() -> None:
    frames = [*header(1, int(Tag.REPLY), "r", True, ext(NDARRAY_EXT, "<f8", [4], 1), None),
              b"\x00" * 8]  # one float64 where four were announced
    with pytest.raises(ProtocolError):
        decode(frames)


def test_wrong_version_says_which_and_carries_it_in_details() -> None:
    with pytest.raises(ProtocolError, match="upgrade the older side") as info:
        decode(header(3, int(Tag.READY), "w1"))
    assert info.value.details == {"version": 3}


@pytest.mark.parametrize("record", [
    b"\xff;;\x00",  # not a dtype
    b"<f8;4;" + b"\x00" * 8,  # four float64 announced, one sent
    b"<f8;2",  # no separator before the bytes
], ids=["garbage-dtype", "short-bytes", "no-bytes"])
def test_a_malformed_inline_array_raises_protocol_error(record: bytes) -> None:
    frames = header(1, int(Tag.REPLY), "r", True, msgpack.ExtType(NDARRAY_INLINE_EXT, record),
                    None)
    with pytest.raises(ProtocolError, match="undecodable header"):
        decode(frames)


@pytest.mark.parametrize("dtype", ["|V8", "|O"], ids=["void-or-structured", "object"])
def test_dtypes_that_cannot_be_sent_on_cannot_come_in(dtype: str) -> None:
    # A hub re-encodes inputs for its workers: what encode() refuses must fail at decode,
    # as a ProtocolError, not later inside the broker.
    record = f"{dtype};1;".encode()
    frames = header(1, int(Tag.REPLY), "r", True,
                    msgpack.ExtType(NDARRAY_INLINE_EXT, record + b"\x00" * 8), None)
    with pytest.raises(ProtocolError, match="not accepted"):
        decode(frames)


@pytest.mark.parametrize("index", [0, -1])
def test_an_array_frame_index_must_point_past_the_header(index: int) -> None:
    frames = [*header(1, int(Tag.REPLY), "r", True, ext(NDARRAY_EXT, "<u1", [1], index), None),
              b"\x00"]
    with pytest.raises(ProtocolError):
        decode(frames)


def test_small_decoded_arrays_are_writable_like_large_ones() -> None:
    for n in (4, INLINE_ARRAY_BYTES):
        out = decode(encode(Reply("r", True, np.zeros(n, dtype=np.uint8), None))).value
        out[0] = 1  # a servable may scale its input in place
        assert out[0] == 1
