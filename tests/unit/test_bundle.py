"""Bundles: several small messages in one frame, each read as if it came alone."""

from __future__ import annotations

import msgpack
import pytest

from dlhub_hpc.broker.bundles import ReplyBundles
from dlhub_hpc.errors import ProtocolError
from dlhub_hpc.protocol import PROTOCOL_VERSION, Reply, Request, decode, encode
from dlhub_hpc.protocol.bundle import (
    BUNDLE_BYTES,
    BUNDLE_TAG,
    BUNDLES_PROPERTY,
    MAX_BUNDLE,
    PART_BYTES,
    HubBundles,
    bundle,
    bundled,
    parts,
    takes_bundles,
    unbundled,
)


def reply(i: int, value: object = None) -> list[bytes]:
    return encode(Reply(f"r-{i}", True, i if value is None else value))


def test_a_bundle_gives_back_each_message_in_order() -> None:
    frame = bundle([reply(i)[0] for i in range(5)])
    found = parts(frame)
    assert found is not None
    assert [decode([p]).request_id for p in found] == [f"r-{i}" for i in range(5)]
    assert unbundled([frame])[2][0].bytes == reply(2)[0]


def test_a_plain_message_is_not_a_bundle() -> None:
    assert parts(reply(1)[0]) is None
    assert unbundled(reply(1)) == [reply(1)]
    request = encode(Request("q", "a/b", None, "", list(range(50)), None, True))
    assert parts(request[0]) is None


def test_decode_refuses_a_bundle_so_no_reader_takes_one_for_a_message() -> None:
    with pytest.raises(ProtocolError):
        decode([bundle([reply(1)[0], reply(2)[0]])])


@pytest.mark.parametrize("frame", [
    msgpack.packb([PROTOCOL_VERSION, BUNDLE_TAG, 0]),  # no messages
    msgpack.packb([PROTOCOL_VERSION, BUNDLE_TAG, MAX_BUNDLE + 1]),
    msgpack.packb([PROTOCOL_VERSION, BUNDLE_TAG, "3"]),
    msgpack.packb([PROTOCOL_VERSION, BUNDLE_TAG, 2]) + reply(1)[0],  # one short
    bundle([reply(1)[0]])[:-1],  # truncated
    bundle([reply(1)[0]]) + b"\x00",  # a byte after the last
    msgpack.packb([PROTOCOL_VERSION, BUNDLE_TAG, 1]) + b"\xc1",  # not msgpack
], ids=["empty", "too-many", "count-not-int", "short", "truncated", "extra", "garbage"])
def test_a_malformed_bundle_is_a_protocol_error(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        parts(frame)
    assert unbundled([frame]) == []  # a reader drops it (logged) and reads on


def test_bundled_joins_runs_of_small_messages_and_keeps_the_order() -> None:
    big = encode(Reply("big", True, b"x" * PART_BYTES))
    with_frames = [b"header", memoryview(b"array")]  # a message with a raw array frame
    out = [f for f, _ in bundled([reply(1), reply(2), big, reply(3), with_frames, reply(4)])]
    counts = [n for _, n in bundled([reply(1), reply(2), big, reply(3), with_frames, reply(4)])]
    assert counts == [2, 1, 1, 1, 1]
    assert len(out) == 5
    assert [decode([p]).request_id for p in parts(out[0][0]) or []] == ["r-1", "r-2"]
    assert out[1] == big and out[3] == with_frames
    assert out[2] == reply(3) and out[4] == reply(4)  # a run of one goes as it is


def test_bundled_stops_a_bundle_at_its_count_and_size() -> None:
    many = [f for f, _ in bundled(reply(i) for i in range(MAX_BUNDLE + 3))]
    assert [len(parts(m[0]) or []) for m in many] == [MAX_BUNDLE, 3]
    large = [reply(i, "v" * (PART_BYTES - 100)) for i in range(40)]
    sizes = [sum(len(p) for p in parts(m[0]) or [m[0]]) for m, _ in bundled(large)]
    assert all(s <= BUNDLE_BYTES for s in sizes) and len(sizes) > 1


def test_replies_are_held_only_within_a_step_and_only_for_callers_that_bundle() -> None:
    held = ReplyBundles()
    held.learn(b"alice")
    assert held.hold(b"alice", reply(1)) == []  # no step: sent at once
    held.begin()
    assert held.hold(b"alice", reply(1)) is None
    assert held.hold(b"bob", reply(2)) == []  # bob never sent a bundle
    held.begin()  # a nested step: held until the outermost ends
    assert held.hold(b"alice", reply(3)) is None
    assert held.end() == []
    big = encode(Reply("big", True, b"x" * PART_BYTES))
    assert held.hold(b"alice", big) == [reply(1)[0], reply(3)[0]]  # they go before it
    assert held.hold(b"alice", reply(4)) is None
    assert held.end() == [(b"alice", [reply(4)[0]])]


def test_a_full_bundle_is_handed_back_to_go_first() -> None:
    held = ReplyBundles()
    held.learn(b"c")
    held.begin()
    for i in range(MAX_BUNDLE):
        assert held.hold(b"c", reply(i)) is None
    first = held.hold(b"c", reply(MAX_BUNDLE))
    assert first is not None and len(first) == MAX_BUNDLE
    assert held.end() == [(b"c", [reply(MAX_BUNDLE)[0]])]


def test_to_a_hub_that_has_not_said_it_reads_bundles_each_message_goes_alone() -> None:
    messages = [reply(1), reply(2), reply(3)]
    assert list(bundled(messages, allowed=False)) == [(m, 1) for m in messages]


def test_a_client_learns_from_the_first_message_whether_its_hub_reads_bundles() -> None:
    class Frame:  # a received zmq.Frame: its connection's handshake properties
        def __init__(self, properties: dict[str, str]) -> None:
            self.properties = properties

        def get(self, name: str) -> str:
            return self.properties[name]

    hub = HubBundles()
    assert not hub.ok and not takes_bundles(b"a plain bytes frame")
    hub.note([Frame({BUNDLES_PROPERTY: "1"})])
    assert hub.ok
    older = HubBundles()
    older.note([b"no properties"])  # a hub that predates bundles says nothing
    older.note([Frame({BUNDLES_PROPERTY: "1"})])  # later messages came on the same link
    assert older.heard and not older.ok
