"""Large requests on the hub's lane: a payload kept as the msgpack bytes it came in
(``Encoded``), expanded by the receiver with the same checks as any value; decoding in
slices gives what decoding at once gives; a checked input goes on encoded, with the memo
key a decoded one would have."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlhub_hpc.broker.events import InputPlan, ServableInfo
from dlhub_hpc.broker.lane import check_input, decode_large, expand, release
from dlhub_hpc.broker.memo import memo_key
from dlhub_hpc.errors import InvalidInput, ProtocolError
from dlhub_hpc.protocol import (
    ENCODED_EXT,
    MAX_DEPTH,
    PROTOCOL_VERSION,
    Batch,
    Encoded,
    Request,
    Tag,
    decode,
    encode,
    expand_payload,
    packed_floats,
    split_request,
)
from dlhub_hpc.servable.types import ArgType

FLOATS = ArgType(type="list", item_type=ArgType(type="float"))
ANY = ArgType(type="any")
BIG = 200_000  # items: more than one slice of every sliced step


def no_pause() -> None:
    pass


def plan_for(declared: ArgType, memoize: bool = True) -> InputPlan:
    info = ServableInfo("demo/x", 3, "digest", {"run": declared}, deterministic=memoize)
    return InputPlan(info, "run", declared, memoize)


def key_of(payload: Any) -> bytes:
    return memo_key("digest", 3, "run", payload)


def batch_with(frame: Any, ref: bytes = b"1") -> list[Any]:
    header = msgpack.packb([PROTOCOL_VERSION, int(Tag.BATCH), 7, "run",
                            [msgpack.ExtType(ENCODED_EXT, ref)]], use_bin_type=True)
    return [header, frame]


# ---- the Encoded extension ------------------------------------------------------------

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@given(value=values, other=values)
@settings(max_examples=200, deadline=None)
def test_an_encoded_value_arrives_as_the_value_it_holds(value: Any, other: Any) -> None:
    packed = msgpack.packb(value, use_bin_type=True)
    frames = encode(Batch(1, "run", [Encoded(packed), other]))
    assert len(frames) == 2 and bytes(frames[1]) == packed  # sent as it was, in a frame
    assert decode(frames).payloads == [value, other]  # type: ignore[attr-defined]


@given(frame=st.binary(max_size=64))
@settings(max_examples=300, deadline=None)
def test_any_bytes_as_an_encoded_frame_decode_or_raise_protocol_error(frame: bytes) -> None:
    try:
        msg = decode(batch_with(frame))
    except ProtocolError:
        return
    assert isinstance(msg, Batch) and len(msg.payloads) == 1


@pytest.mark.parametrize(("frames", "words"), [
    (batch_with(msgpack.packb([1, 2]), b"0"), "refers to frame 0"),
    (batch_with(msgpack.packb([1, 2]), b"2"), "refers to frame 2"),
    (batch_with(msgpack.packb([1, 2]), b"x"), "undecodable"),
    (batch_with(msgpack.packb([1, 2]) + b"\x01"), "extra data"),
    (batch_with(b"\xc1"), "undecodable"),
    (batch_with(msgpack.packb([msgpack.ExtType(ENCODED_EXT, b"1")])), "refers to frame 1"),
    (batch_with(msgpack.packb([msgpack.ExtType(1, b"<f8;1;1")])), "refers to frame 1"),
    (batch_with(msgpack.packb({1: 2})), "not a string"),
    (batch_with(msgpack.packb(["x", msgpack.ExtType(9, b"")])), "code 9"),
    (batch_with(msgpack.packb([[[]]])), None),
], ids=["header", "missing", "garbage-ref", "trailing", "garbage", "nested-encoded",
        "array-frame", "int-key", "unknown-ext", "fine"])
def test_a_hostile_encoded_value_is_a_protocol_error(frames: list[Any], words: str | None,
                                                     ) -> None:
    if words is None:
        assert decode(frames).payloads == [[[[]]]]  # type: ignore[attr-defined]
        return
    with pytest.raises(ProtocolError, match=words):
        decode(frames)


def test_one_frame_is_expanded_once_so_refs_cannot_multiply_it() -> None:
    header = msgpack.packb([PROTOCOL_VERSION, int(Tag.BATCH), 7, "run",
                            [msgpack.ExtType(ENCODED_EXT, b"1")] * 2], use_bin_type=True)
    with pytest.raises(ProtocolError, match="referred to twice"):
        decode([header, msgpack.packb([1.0] * 1000)])


def test_an_encoded_value_nests_no_deeper_than_any_other() -> None:
    deep: Any = 1
    for _ in range(MAX_DEPTH):
        deep = [deep]
    header = msgpack.packb([PROTOCOL_VERSION, int(Tag.REQUEST), "r", "demo/x", None, "",
                            msgpack.ExtType(ENCODED_EXT, b"1")], use_bin_type=True)
    assert decode([header, msgpack.packb(deep)]).payload == deep  # type: ignore[attr-defined]
    with pytest.raises(ProtocolError, match="nests deeper"):
        decode([header, msgpack.packb([deep])])
    with pytest.raises(ProtocolError, match="nests deeper"):
        decode(batch_with(msgpack.packb([[[[[[[[[[[[[[[[deep]]]]]]]]]]]]]]]])))


# ---- decoding in slices ---------------------------------------------------------------

@given(payload=values)
@settings(max_examples=100, deadline=None)
def test_a_sliced_decode_gives_what_a_whole_one_gives(payload: Any) -> None:
    frames = encode(Request("r", "demo/x", None, "", [payload] * 3000, 2.5, False))
    pauses: list[int] = []
    assert decode(frames, lambda: pauses.append(1)) == decode(frames)
    req = split_request(frames, no_pause)
    assert req is not None and isinstance(req.payload, Encoded)
    assert (req.request_id, req.timeout, req.cache) == ("r", 2.5, False)
    assert expand_payload(req.payload, no_pause) == [payload] * 3000


def test_a_sliced_decode_pauses_and_names_where_a_bad_item_is() -> None:
    payload: list[Any] = [1.0] * BIG
    payload[BIG - 5] = {1: 2}  # a non-string key, past the first slice
    header = msgpack.packb([1, int(Tag.REQUEST), "r", "demo/x", None, "", payload])
    pauses: list[int] = []
    with pytest.raises(ProtocolError, match=rf"Request.payload\[{BIG - 5}\]"):
        decode([header], lambda: pauses.append(1))
    assert len(pauses) > 5  # the work was cut in slices


@pytest.mark.parametrize("tail", [b"", b"\xc0\x00"], ids=["truncated", "extra"])
def test_a_sliced_decode_refuses_a_cut_or_padded_header(tail: bytes) -> None:
    header = encode(Request("r", "demo/x", None, "", [1.0] * BIG))[0]
    frame = header[:-3] if not tail else header + tail
    with pytest.raises(ProtocolError):
        decode([frame], no_pause)
    with pytest.raises(ProtocolError):
        decode_large([frame])


# ---- the lane's check -----------------------------------------------------------------

def test_a_float_list_is_checked_on_its_bytes_and_keyed_as_if_decoded() -> None:
    floats = [float(i) / 3 for i in range(BIG)]
    req = decode_large(encode(Request("r", "demo/x", None, "", floats)))
    assert isinstance(req, Request) and isinstance(req.payload, Encoded)
    assert packed_floats(req.payload)
    checked = check_input(plan_for(FLOATS), req)
    assert checked.payload is req.payload  # goes on as it came
    assert checked.memo_key == key_of(floats)
    assert decode(encode(Batch(1, "run", [checked.value()]))).payloads == [floats]  # type: ignore[attr-defined]


@pytest.mark.parametrize("payload", [
    [1.0, 2], [1.0] * 16, [], [float("nan")] * 20, [1.0, [2.0]], 1.0,
], ids=["an-int", "fixarray-16", "empty", "nans", "nested", "scalar"])
def test_only_a_plain_list_of_float64s_counts_as_packed_floats(payload: Any) -> None:
    packed = msgpack.packb(payload)
    expected = type(payload) is list and all(type(v) is float for v in payload)
    assert packed_floats(Encoded(packed)) == expected
    # A longer header than msgpack writes is not the canonical form:
    assert not packed_floats(Encoded(b"\xdc\x00\x01" + msgpack.packb(1.0)))


def test_a_coerced_input_goes_on_encoded_with_the_key_of_its_checked_value() -> None:
    ints = list(range(BIG))
    req = decode_large(encode(Request("r", "demo/x", None, "", ints)))
    assert isinstance(req, Request)
    checked = check_input(plan_for(FLOATS), req)
    floats = [float(i) for i in ints]
    assert isinstance(checked.payload, Encoded)
    assert checked.memo_key == key_of(floats)
    sent = decode(encode(Batch(1, "run", [checked.value()]))).payloads[0]  # type: ignore[attr-defined]
    assert sent == floats and all(type(v) is float for v in sent[:10])


def test_a_bad_item_is_invalid_input_naming_it() -> None:
    payload: list[Any] = [1.0] * BIG
    payload[BIG - 1] = "x"
    req = decode_large(encode(Request("r", "demo/x", None, "", payload)))
    assert isinstance(req, Request)
    checked = check_input(plan_for(FLOATS), req)
    assert isinstance(checked.error, InvalidInput)
    assert checked.error.details["path"] == f"input[{BIG - 1}]"


def test_a_malformed_payload_raises_protocol_error_from_the_check() -> None:
    payload = [1.0] * BIG + [msgpack.ExtType(9, b"")]
    header = msgpack.packb([1, int(Tag.REQUEST), "r", "demo/x", None, "", payload])
    req = decode_large([header])
    assert isinstance(req, Request) and isinstance(req.payload, Encoded)  # not read yet
    with pytest.raises(ProtocolError, match="code 9"):
        check_input(plan_for(ANY), req)
    with pytest.raises(ProtocolError, match="code 9"):
        expand(req)


def test_a_request_with_array_frames_is_decoded_whole() -> None:
    import numpy as np

    array = np.arange(BIG, dtype=np.float64)
    frames = encode(Request("r", "demo/x", None, "", {"x": array, "n": [1, 2]}))
    assert len(frames) == 2 and split_request(frames, no_pause) is None
    req = decode_large(frames)
    assert isinstance(req, Request) and np.shares_memory(req.payload["x"], frames[1])
    checked = check_input(plan_for(ANY, memoize=False), req)
    assert checked.payload is req.payload  # arrays go on in frames, never copied


def test_release_empties_a_list_a_slice_at_a_time() -> None:
    value = list(range(BIG))
    release(value)
    assert 0 < len(value) <= 65536
    assert value == list(range(len(value)))  # cut from the end, slice by slice
