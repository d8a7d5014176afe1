"""Hostile input at the wire: decode turns anything into a Message or a ProtocolError, and
senders refuse (InvalidInput) what the hub could not carry, before it is sent."""

from __future__ import annotations

import datetime
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlhub_hpc.errors import InvalidInput, ProtocolError, SpecError
from dlhub_hpc.protocol import (
    INT64_MAX,
    MAX_DEPTH,
    NDARRAY_INLINE_EXT,
    Batch,
    BatchResult,
    Hello,
    Message,
    Reply,
    Request,
    Tag,
    check_carriable,
    decode,
    encode,
    peek,
)
from dlhub_hpc.servable.spec import parse_ref


def header(*values: Any) -> list[bytes]:
    return [msgpack.packb(list(values), use_bin_type=True)]


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def request(payload: Any, version: Any = None, timeout: Any = None) -> list[bytes]:
    return header(1, int(Tag.REQUEST), "r1", "demo/add", version, "run", payload, timeout, True)


INLINE_ARRAY = msgpack.ExtType(NDARRAY_INLINE_EXT, b"<i8;2;" + bytes(16))


# ---- the two messages that killed the hub ------------------------------------------------

@pytest.mark.parametrize("version", [INLINE_ARRAY, [1], {"v": 1}, True, 1.0, "1"],
                         ids=["array-record", "list", "dict", "bool", "float", "string"])
def test_a_version_field_of_any_type_is_a_protocol_error(version: Any) -> None:
    # The array record made `version != PROTOCOL_VERSION` raise inside decode.
    with pytest.raises(ProtocolError, match="protocol version"):
        decode(header(version, int(Tag.REQUEST), "r1", "demo/add", None, "run", [1.0]))


def test_a_version_past_int64_in_a_request_is_a_protocol_error() -> None:
    # 2**63 reached SQLite, whose OverflowError escaped the hub's loop.
    with pytest.raises(ProtocolError, match="does not fit in 64 bits"):
        decode(request([1.0], version=2**63))


@pytest.mark.parametrize("ref", ["demo/add@9223372036854775808", "demo/add@0",
                                 "demo/add@" + "9" * 5000])
def test_a_ref_past_int64_is_a_spec_error_at_the_client(ref: str) -> None:
    with pytest.raises(SpecError, match="positive integer"):
        parse_ref(ref)


def test_the_largest_int64_version_is_a_valid_ref() -> None:
    assert parse_ref(f"demo/add@{INT64_MAX}") == ("demo/add", INT64_MAX)


# ---- fields are type- and range-checked ---------------------------------------------------

@pytest.mark.parametrize(("frames", "words"), [
    (header(1, int(Tag.HELLO), "w", "demo/add", 2**63, "h", 1), "64 bits"),
    (header(1, int(Tag.HELLO), "w", "demo/add", None, "h", 2**64 - 1), "64 bits"),
    (header(1, int(Tag.BATCH), 2**63, "run", []), "64 bits"),
    (header(1, int(Tag.BATCH), True, "run", []), "Batch.batch_id has type bool"),
    (request([1.0], version=False), "Request.version has type bool"),
    (request([1.0], timeout=float("nan")), "Request.timeout is NaN"),
    (header(1, int(Tag.BATCH_RESULT), 1, [], float("nan")), "BatchResult.elapsed is NaN"),
    (header(1, "x" * 10_000, "w"), "unknown message tag"),
], ids=["hello-version", "uint64", "batch-id", "bool-as-int", "bool-version", "nan-timeout",
        "nan-elapsed", "huge-tag"])
def test_fields_are_type_and_range_checked(frames: list[bytes], words: str) -> None:
    with pytest.raises(ProtocolError, match=words) as info:
        decode(frames)
    assert len(info.value.message) < 300


@pytest.mark.parametrize("payload", [
    {(1, 2): 3}, {1: "one"}, {b"k": 1}, {"ok": [{"deep": {2.5: 1}}]},
], ids=["tuple-key", "int-key", "bytes-key", "nested-float-key"])
def test_non_string_keys_from_a_peer_are_a_protocol_error(payload: Any) -> None:
    with pytest.raises(ProtocolError):
        decode(request(payload))


def test_a_payload_nested_past_the_limit_is_refused_and_one_at_it_is_not() -> None:
    assert decode(request(nested(MAX_DEPTH))).payload == nested(MAX_DEPTH)  # type: ignore[attr-defined]
    with pytest.raises(ProtocolError, match=f"deeper than {MAX_DEPTH}"):
        decode(request(nested(MAX_DEPTH + 1)))
    with pytest.raises(ProtocolError, match=f"deeper than {MAX_DEPTH}"):
        decode(request({"a": nested(MAX_DEPTH)}))


def test_nesting_past_msgpacks_own_stack_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode([b"\x97\x01\x01\xa1r\xa1s\xc0\xa1m" + b"\x91" * 5000 + b"\x90"])


def test_results_at_the_limit_travel_inside_their_pairs() -> None:
    msg = BatchResult(1, [[True, nested(MAX_DEPTH)], [True, {"a": "b"}]], 0.1)
    assert decode(encode(msg)) == msg


def test_a_timestamp_extension_is_not_a_message_value() -> None:
    stamp = msgpack.Timestamp(1, 0)
    with pytest.raises(ProtocolError, match="Timestamp"):
        decode(request([stamp]))


# ---- peek: the tag and first field of what does not decode -------------------------------

def test_peek_reads_the_request_id_of_an_undecodable_request() -> None:
    frames = request({(1, 2): 3})
    with pytest.raises(ProtocolError):
        decode(frames)
    assert peek(frames) == (Tag.REQUEST, "r1")


def test_peek_reads_the_batch_id_of_an_undecodable_result() -> None:
    frames = header(1, int(Tag.BATCH_RESULT), 41, [[True, {(1, 2): 3}]], 0.5)
    assert peek(frames) == (Tag.BATCH_RESULT, 41)


@pytest.mark.parametrize("frames", [[], [b""], [b"\xc1"], header(1, 1), header(2, 1, "r"),
                                    header([1], 1, "r"), [b"\x93\x01\x01\xdb\xff\xff\xff\xff"]],
                         ids=["none", "empty", "garbage", "short", "version", "list-version",
                              "truncated-first-field"])
def test_peek_gives_none_for_what_names_no_sender(frames: list[bytes]) -> None:
    assert peek(frames) is None


# ---- senders refuse what the hub could not carry -------------------------------------------

@pytest.mark.parametrize(("value", "words"), [
    ({(1, 2): 3}, "dict key (1, 2) is a tuple"),
    ({"rows": [{1: "a"}]}, "the input['rows'][0] cannot be sent: dict key 1 is a int"),
    (nested(MAX_DEPTH + 1), f"nests deeper than {MAX_DEPTH}"),
    ((1, {None: 2}), "dict key None"),
])
def test_check_carriable_refuses_with_invalid_input(value: Any, words: str) -> None:
    with pytest.raises(InvalidInput) as info:
        check_carriable(value)
    assert words in info.value.message


@pytest.mark.parametrize("value", [
    nested(MAX_DEPTH), {"a": [1, 2.5, "x", b"y", None, True]}, np.zeros((3, 3)),
    (1, 2), {1, 2}, np.float32(1.5), "caf\u00e9", [[1, 2], [3, 4]],
])
def test_check_carriable_lets_what_the_hub_carries_through(value: Any) -> None:
    check_carriable(value)


@pytest.mark.parametrize(("value", "words"), [
    ("\ud800 lone", "valid Unicode"),
    ({"\udcff": 1}, "valid Unicode"),
    (2**64, "64 bits"),
    (-(2**63) - 1, "64 bits"),
    (datetime.date(2026, 1, 1), "cannot be sent"),
], ids=["lone-surrogate", "surrogate-key", "uint64-plus-one", "below-int64", "date"])
def test_encode_refuses_with_invalid_input(value: Any, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        encode(Request("r", "demo/add", None, "", value))


# ---- property: decode never raises anything but ProtocolError ------------------------------

VALID = [
    Request("r1", "demo/add", 2, "run", {"numbers": [1, 2.5], "x": nested(3)}, 3.0),
    Reply("r1", True, {"a": [1, "two", b"three"]}, None, [0.1, 0.2], "deprecated"),
    Hello("w1", "demo/add", None, "nid0001", 4242, "block-3", 2, {"env": "CUDA"}),
    Batch(7, "run", [[1.0], {"k": "v"}]),
    BatchResult(7, [[True, 1.0], [False, {"type": "ExecutionError"}]], 0.5),
    Reply("r2", True, np.arange(5000, dtype=np.float64), None),
]

PIECES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True), st.text(max_size=8), st.binary(max_size=8),
    st.sampled_from([INLINE_ARRAY, msgpack.ExtType(1, b"<f8;2;1"), msgpack.ExtType(7, b""),
                     nested(70), {(1, 2): 3}, {1: 2}, msgpack.Timestamp(0, 0)]),
)


def _mutations(frames: list[bytes], data: st.DataObject) -> list[bytes]:
    head = bytearray(frames[0])
    how = data.draw(st.sampled_from(["flip", "truncate", "swap", "append", "frame"]))
    if how == "flip" and head:
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(head) - 1))
            head[i] ^= 1 << data.draw(st.integers(0, 7))
    elif how == "truncate":
        del head[data.draw(st.integers(0, len(head))):]
    elif how == "swap":
        values = msgpack.unpackb(bytes(head), raw=False, strict_map_key=False)
        values[data.draw(st.integers(0, len(values) - 1))] = data.draw(PIECES)
        head = bytearray(msgpack.packb(values, use_bin_type=True))
    elif how == "append":
        head += data.draw(st.binary(min_size=1, max_size=16))
    else:
        return [bytes(head), *frames[1:], data.draw(st.binary(max_size=64))]
    return [bytes(head), *frames[1:]]


def _decodes_or_refuses(frames: list[Any]) -> None:
    try:
        msg = decode(frames)
    except ProtocolError:
        return
    assert isinstance(msg, Message)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=200), min_size=0, max_size=3))
def test_decode_of_any_bytes_is_a_message_or_a_protocol_error(frames: list[bytes]) -> None:
    _decodes_or_refuses(frames)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID), st.data())
def test_decode_of_a_mutated_message_is_a_message_or_a_protocol_error(
    msg: Message, data: st.DataObject
) -> None:
    frames = [bytes(memoryview(f)) for f in encode(msg)]
    _decodes_or_refuses(_mutations(frames, data))


@settings(max_examples=300, deadline=None)
@given(st.recursive(
    st.one_of(st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(), st.binary(),
              st.none(), st.booleans()),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.one_of(st.text(max_size=4), st.integers(), st.binary(max_size=2)), inner, max_size=3),
    max_leaves=30,
))
def test_what_a_sender_lets_through_decodes_and_what_it_refuses_never_leaves(value: Any) -> None:
    msg = Request("r", "demo/add", None, "", value)
    try:
        check_carriable(value)
        frames = encode(msg)
    except InvalidInput:
        return
    decoded = decode(frames)
    assert isinstance(decoded, Request)
