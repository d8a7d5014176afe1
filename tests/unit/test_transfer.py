"""Chunked transfers as pure logic: both ends' windows and reassembly, and the hub's relay
(bounded window, refusals, drops, stalls), plus their messages on the wire."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlhub_hpc.errors import ProtocolError, TransferFailed, TransferStalled, error_from_wire
from dlhub_hpc.protocol import (
    PROTOCOL_VERSION,
    STREAM_EXT,
    Abort,
    Chunk,
    Credit,
    Request,
    StreamRef,
    Tag,
    decode,
    encode,
)
from dlhub_hpc.transfer.call import plain
from dlhub_hpc.transfer.relay import Peer, Relay, Send
from dlhub_hpc.transfer.window import Incoming, Outgoing, new_ref, refs_in, split_streams

CLIENT = Peer("client", b"caller", "alice")
WORKER = Peer("worker", b"worker-1", "worker:alice:k")
CHUNK = 1024
WINDOW = 4 * CHUNK


def wire(msg: object) -> object:
    """``msg`` after a trip through encode and decode, as a peer receives it."""
    return decode(encode(msg))  # type: ignore[arg-type]


# -- messages --

def test_a_stream_ref_travels_in_a_request_and_decodes_as_one() -> None:
    ref = new_ref(np.zeros((3, 5), dtype=np.float32))
    got = wire(Request("r1", "a/b", None, "", ref))
    assert isinstance(got, Request) and isinstance(got.payload, StreamRef)
    assert (got.payload.transfer_id, got.payload.dtype, got.payload.shape) == (
        ref.transfer_id, "<f4", (3, 5))
    assert got.payload.nbytes == 60


def test_a_chunk_carries_its_bytes_as_a_raw_frame() -> None:
    data = np.arange(40_000, dtype=np.uint8)
    frames = encode(Chunk("t1", 7, data))
    assert len(frames) == 2 and memoryview(frames[1]).nbytes == data.nbytes
    got = decode(frames)
    assert isinstance(got, Chunk) and got.offset == 7 and np.array_equal(got.data, data)


@pytest.mark.parametrize("body", [
    b"t1;|O;3", b"t1;<f8;-1", b"has space;<f8;3", b";<f8;3", b"t1;<f8;" + b"1," * 40 + b"1",
    b"t1;<f8;99999999999,99999999999", b"t1;V8;2", b"no-separators",
])
def test_a_malformed_stream_ref_is_a_protocol_error(body: bytes) -> None:
    header = msgpack.packb([PROTOCOL_VERSION, int(Tag.REQUEST), "r", "a/b", None, "",
                            msgpack.ExtType(STREAM_EXT, body)])
    with pytest.raises(ProtocolError):
        decode([header])


def test_credit_and_abort_round_trip() -> None:
    assert wire(Credit("t", 10, 4)) == Credit("t", 10, 4)
    err = TransferFailed("gone", transfer_id="t").to_wire()
    got = wire(Abort("t", err))
    assert isinstance(got, Abort)
    assert isinstance(error_from_wire(got.error), TransferFailed)


# -- the two ends --

def test_only_arrays_over_the_threshold_are_split_off() -> None:
    big, small = np.ones(100), np.ones(10)
    values, streams = split_streams([big, small, "x"], threshold=400)
    assert type(values[0]) is StreamRef and values[1] is small and values[2] == "x"
    assert [s.ref for s in streams] == [values[0]]
    assert refs_in(values) == [(0, values[0])]


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(0, 7), min_size=0, max_size=3),
       chunk=st.integers(1, 64), grants=st.lists(st.integers(1, 200), min_size=1, max_size=8))
def test_any_grants_and_chunk_sizes_rebuild_the_array_exactly(
        shape: list[int], chunk: int, grants: list[int]) -> None:
    array = np.random.default_rng(0).standard_normal(shape)
    ref = new_ref(array)
    sender, receiver = Outgoing(ref, array), Incoming(ref, max_bytes=array.nbytes)
    offered = 0
    for step in [*grants, array.nbytes]:  # the last grant lets everything through
        offered += step
        sender.grant(Credit(ref.transfer_id, offered, chunk))
        for c in sender.chunks():
            assert 0 < c.data.size <= chunk and c.offset + c.data.size <= offered
            receiver.accept(wire(c))  # type: ignore[arg-type]
    assert sender.done and receiver.done
    assert receiver.array.shape == array.shape and np.array_equal(receiver.array, array)


def test_the_receiver_refuses_a_chunk_out_of_order_or_too_long() -> None:
    ref = new_ref(np.zeros(8, dtype=np.uint8))
    end = Incoming(ref, max_bytes=8)
    with pytest.raises(TransferFailed, match="offset 4"):
        end.accept(Chunk(ref.transfer_id, 4, np.ones(4, dtype=np.uint8)))
    with pytest.raises(TransferFailed, match="past"):
        end.accept(Chunk(ref.transfer_id, 0, np.ones(9, dtype=np.uint8)))
    with pytest.raises(TransferFailed, match="run of bytes"):
        end.accept(Chunk(ref.transfer_id, 0, np.ones(2, dtype=np.float64)))
    assert end.received == 0


def test_the_receiver_refuses_an_array_over_its_limit_before_allocating() -> None:
    ref = StreamRef("t", "<f8", (2**40,))
    with pytest.raises(TransferFailed, match="over the"):
        Incoming(ref, max_bytes=2**30)


# -- the hub's relay --

def relay(**kw: float) -> Relay:
    return Relay(window_bytes=int(kw.get("window", WINDOW)), chunk_bytes=CHUNK,
                 timeout=kw.get("timeout", 5.0), max_bytes=int(kw.get("max_bytes", 2**30)))


def opened(r: Relay, nbytes: int = 16 * CHUNK) -> StreamRef:
    ref = StreamRef("t1", "|u1", (nbytes,))
    assert r.open(ref, CLIENT, 0.0, "req-1") is None
    assert r.bind(ref, WORKER, 0.0) == []
    return ref


def aborts(sends: list[Send]) -> dict[bytes, str]:
    out = {}
    for s in sends:
        if isinstance(s.message, Abort):
            out[s.to.identity] = error_from_wire(s.message.error).message
    return out


def test_the_hub_holds_at_most_a_window_and_forwards_everything_in_order() -> None:
    r = relay()
    ref = opened(r)
    data = np.arange(ref.nbytes, dtype=np.uint64).astype(np.uint8)
    sender, receiver = Outgoing(ref, data), Incoming(ref, ref.nbytes)
    to_sender = r.on_message(WORKER, receiver.credit(), 1.0)
    in_hub: list[Chunk] = []
    while not receiver.done:
        for s in to_sender:
            assert s.to == CLIENT and isinstance(s.message, Credit)
            sender.grant(s.message)
        for c in sender.chunks():
            for s in r.on_message(CLIENT, wire(c), 1.0):  # type: ignore[arg-type]
                assert s.to == WORKER
                in_hub.append(s.message)  # type: ignore[arg-type]
        assert r.held_bytes() <= WINDOW
        assert in_hub, "the sender was granted nothing"
        receiver.accept(in_hub.pop(0))  # the worker takes one, and says so
        to_sender = r.on_message(WORKER, receiver.credit(), 1.0)
    assert np.array_equal(receiver.array, data)
    assert len(r) == 0 and r.stats["transfers_done"] == 1


def test_a_chunk_past_its_credit_drops_the_transfer_and_tells_both_ends() -> None:
    r = relay()
    ref = opened(r)
    r.on_message(WORKER, Credit(ref.transfer_id, 0), 1.0)  # grants WINDOW
    too_far = Chunk(ref.transfer_id, 0, np.ones(CHUNK, dtype=np.uint8))
    for i in range(4):
        assert r.on_message(CLIENT, Chunk(ref.transfer_id, i * CHUNK, too_far.data), 1.0)
    told = aborts(r.on_message(CLIENT, Chunk(ref.transfer_id, 4 * CHUNK, too_far.data), 1.0))
    assert set(told) == {CLIENT.identity, WORKER.identity} and "granted" in told[b"caller"]
    assert len(r) == 0 and r.held_bytes() == 0


@pytest.mark.parametrize(("offset", "size", "why"), [
    (CHUNK, CHUNK, "expected 0"), (0, CHUNK + 1, "bytes is not"), (0, 0, "bytes is not"),
])
def test_an_out_of_order_or_oversized_chunk_drops_the_transfer(
        offset: int, size: int, why: str) -> None:
    r = relay()
    ref = opened(r)
    r.on_message(WORKER, Credit(ref.transfer_id, 0), 1.0)
    told = aborts(r.on_message(CLIENT, Chunk(ref.transfer_id, offset,
                                             np.ones(size, dtype=np.uint8)), 1.0))
    assert why in told[b"worker-1"] and len(r) == 0


def test_messages_naming_another_identitys_transfer_are_refused_and_it_goes_on() -> None:
    r = relay()
    ref = opened(r)
    mallory = Peer("client", b"mallory", "mallory")
    for msg in (Chunk(ref.transfer_id, 0, np.ones(8, dtype=np.uint8)),
                Credit(ref.transfer_id, 0), Abort(ref.transfer_id, {})):
        sends = r.on_message(mallory, msg, 1.0)
        assert all(s.to == mallory for s in sends)
    assert len(r) == 1 and r.stats["foreign_transfer_messages"] == 3
    assert r.on_message(WORKER, Credit(ref.transfer_id, 0), 1.0)[0].to == CLIENT


def test_a_transfer_is_bound_only_by_the_ref_its_sender_sent() -> None:
    r = relay()
    ref = StreamRef("t1", "|u1", (100,))
    assert r.open(ref, CLIENT, 0.0, "req-1") is None
    impostor = StreamRef("t1", "|u1", (100,))  # the same id, from another message
    assert aborts(r.bind(impostor, WORKER, 0.0))
    assert r.open(impostor, Peer("client", b"mallory"), 0.0) is not None  # the id is taken
    assert r.bind(ref, WORKER, 0.0) == []


def test_an_upload_sent_on_twice_is_dropped_but_a_shared_result_only_refuses() -> None:
    r = relay()
    ref = opened(r)
    other = Peer("worker", b"worker-2")
    assert set(aborts(r.bind(ref, other, 1.0))) == {b"worker-2", b"caller", b"worker-1"}
    result = StreamRef("t2", "|u1", (100,))
    assert r.open(result, WORKER, 0.0) is None
    assert r.bind(result, CLIENT, 0.0) == []
    assert set(aborts(r.bind(result, Peer("client", b"twin"), 0.0))) == {b"twin"}
    assert len(r) == 1


def test_a_stalled_transfer_expires_with_transfer_stalled_to_both_ends() -> None:
    r = relay(timeout=5.0)
    ref = opened(r)
    assert r.expire(4.9) == []
    sends = r.expire(5.0)
    assert {s.to for s in sends} == {CLIENT, WORKER}
    assert all(isinstance(error_from_wire(s.message.error), TransferStalled)  # type: ignore[attr-defined]
               for s in sends)
    assert len(r) == 0 and r.next_deadline() is None
    assert ref.transfer_id not in [t for t in r._open]


def test_an_unfinished_upload_is_dropped_when_its_request_is_answered() -> None:
    r = relay()
    ref = opened(r)
    assert set(aborts(r.replied(b"caller", "req-1"))) == {b"caller", b"worker-1"}
    assert len(r) == 0
    assert r.replied(b"caller", "req-1") == []
    assert ref.nbytes > 0


def test_an_array_over_the_hubs_limit_is_refused_at_open() -> None:
    r = relay(max_bytes=1000)
    error = r.open(StreamRef("t", "<f8", (1000,)), CLIENT, 0.0)
    assert isinstance(error, TransferFailed) and error.details["limit"] == 1000
    assert len(r) == 0


def test_a_streamed_output_a_call_cannot_receive_is_a_typed_error_not_a_stand_in() -> None:
    assert plain([1.0]) == [1.0]
    with pytest.raises(TransferFailed, match=r"Client or AsyncClient"):
        plain(StreamRef("t", "<f8", (2**24,)))


def test_the_relay_says_when_a_workers_output_transfers_have_ended() -> None:
    # The hub gives a worker no work while it sends its outputs: it must learn when they end,
    # whether sent in full, given up by the caller, or stalled.
    r = relay(timeout=5.0)
    outs = [StreamRef(f"out-{i}", "|u1", (CHUNK,)) for i in range(3)]
    for ref in outs:
        assert r.open(ref, WORKER, 0.0) is None
        assert r.bind(ref, CLIENT, 0.0) == []
    assert r.open(StreamRef("in-1", "|u1", (CHUNK,)), CLIENT, 0.0, "req-1") is None
    assert r.sending(WORKER.identity) and not r.sending(CLIENT.identity)
    r.on_message(CLIENT, Credit("out-0", 0), 1.0)
    r.on_message(WORKER, Chunk("out-0", 0, np.ones(CHUNK, dtype=np.uint8)), 1.0)
    r.on_message(CLIENT, Credit("out-0", CHUNK), 1.0)  # the caller holds it all: done
    r.on_message(CLIENT, Abort("out-1", {}), 1.0)  # the caller gave this one up
    assert r.take_ended() == [WORKER.identity, WORKER.identity]
    assert r.take_ended() == [] and r.sending(WORKER.identity)
    r.expire(10.0)  # the last one stalled; the client's own input is no worker's output
    assert r.take_ended() == [WORKER.identity] and not r.sending(WORKER.identity)


# -- defaults --

def test_the_hubs_default_chunks_are_small_and_its_shipped_settings_agree() -> None:
    """A chunk is decrypted and encrypted whole by the hub's one ZMQ I/O thread, and a
    window of them may queue ahead of another caller's reply: both stay small by default,
    with a few chunks in flight; configs/hub.yaml ships the same values."""
    from pathlib import Path

    import yaml

    from dlhub_hpc import HubConfig
    from dlhub_hpc.transfer import DEFAULT_CHUNK_BYTES, DEFAULT_WINDOW_BYTES

    fields = HubConfig.model_fields
    chunk = fields["transfer_chunk_bytes"].default
    window = fields["transfer_window_bytes"].default
    assert (chunk, window) == (DEFAULT_CHUNK_BYTES, DEFAULT_WINDOW_BYTES)
    assert chunk <= 256 * 2**10
    assert 2 * chunk <= window <= 2**20
    shipped = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "hub.yaml")
                             .read_text())
    assert (shipped["transfer_chunk_bytes"], shipped["transfer_window_bytes"]) == (chunk, window)
