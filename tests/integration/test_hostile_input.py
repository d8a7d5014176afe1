"""Messages that once killed or wedged the hub: each is answered or counted, and the hub
goes on answering normal requests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
import zmq

from dlhub_hpc import Client, Hub
from dlhub_hpc.errors import ExecutionError, InvalidInput, SpecError
from dlhub_hpc.protocol import (
    NDARRAY_INLINE_EXT,
    Assign,
    Batch,
    Hello,
    Ready,
    Reply,
    Tag,
    decode,
    encode,
)

from .conftest import SERVABLES, curve_dealer, wait_for

ADD = SERVABLES.parents[2] / "dlhub_hpc" / "examples" / "add"


@pytest.fixture
def hub(make_hub: Callable[..., Hub]) -> Hub:
    # the hand-made workers here send no heartbeats: a loaded machine's pause between
    # their messages must not get them declared lost
    return make_hub(heartbeat_timeout=30.0)


@pytest.fixture
def raw(hub: Hub) -> Iterator[Callable[[str], zmq.Socket[bytes]]]:
    socks: list[zmq.Socket[bytes]] = []

    def make(address: str) -> zmq.Socket[bytes]:
        socks.append(curve_dealer(zmq.Context.instance(), address))
        return socks[-1]

    yield make
    for sock in socks:
        sock.close(linger=0)


def packed(*values: Any) -> bytes:
    return msgpack.packb(list(values), use_bin_type=True)


def reply_to(sock: zmq.Socket[bytes], header: bytes) -> Reply:
    sock.send_multipart([header])
    assert sock.poll(20_000), "the hub did not answer"
    reply = decode(sock.recv_multipart())
    assert isinstance(reply, Reply)
    return reply


def test_killer_messages_are_answered_or_counted_and_the_hub_lives_on(
    hub: Hub, client: Client, serve: Callable[..., str],
    raw: Callable[[str], zmq.Socket[bytes]],
) -> None:
    serve(ADD)
    sock = raw(hub.client_address)
    # A version past int64: SQLite's OverflowError once escaped the hub's loop.
    reply = reply_to(sock, packed(1, int(Tag.REQUEST), "k1", "demo/add", 2**63, "run", [1.0]))
    assert not reply.ok and reply.error is not None
    assert reply.error["type"] == "ProtocolError" and "64 bits" in reply.error["message"]
    # A protocol version that is an array record: comparing it once raised inside decode.
    before = client.status()["stats"].get("malformed_frames", 0)
    array = msgpack.ExtType(NDARRAY_INLINE_EXT, b"<i8;2;" + bytes(16))
    sock.send_multipart([packed(array, int(Tag.REQUEST), "k2", "demo/add", None, "run", [1.0])])
    wait_for(lambda: client.status()["stats"].get("malformed_frames", 0) > before,
             timeout=20, what="the array-record message counted")
    # What a hostile client sends that the hub cannot carry gets a typed answer at once.
    reply = reply_to(sock, packed(1, int(Tag.REQUEST), "k3", "demo/add", None, "run",
                                  {"k": 1, 2: 3}))
    assert reply.error is not None and reply.error["type"] == "ProtocolError"
    reply = reply_to(sock, b"\x97\x01\x01\xa2k4\xa8demo/add\xc0\xa3run" + b"\x91" * 70 + b"\x90")
    assert reply.error is not None and "deeper than 64" in reply.error["message"]
    assert client.run("demo/add", [1.0, 2.5]) == 3.5


def test_refs_and_inputs_the_hub_cannot_carry_fail_at_the_client(client: Client) -> None:
    with pytest.raises(SpecError, match="positive integer"):
        client.run("demo/add@9223372036854775808", [1.0])
    for bad in ({(1, 2): 3}, {1: 2}, "\ud800"):
        with pytest.raises(InvalidInput):
            client.run("demo/add", bad)
        with pytest.raises(InvalidInput):
            client.submit("demo/add", bad)


def test_an_output_that_cannot_travel_fails_its_item_and_the_worker_serves_on(
    client: Client, serve: Callable[..., str],
) -> None:
    serve(SERVABLES / "badkeys")
    out = client.run_batch("test/badkeys", [1, -1, 2], return_exceptions=True)
    assert out[0] == {"double": 2} and out[2] == {"double": 4}
    assert isinstance(out[1], ExecutionError)
    assert "dict key (1, 2) is a tuple, not a string" in out[1].message
    assert client.run("test/badkeys", 5) == {"double": 10}


def test_an_undecodable_batch_result_answers_its_batch_and_frees_the_worker(
    hub: Hub, client: Client, raw: Callable[[str], zmq.Socket[bytes]],
) -> None:
    """A worker of our own, on the wire, answers with a result no peer can read."""
    client.publish(SERVABLES / "flaky")
    worker = raw(hub.worker_address)
    worker.send_multipart(encode(Hello("rogue", "test/flaky", None, "h", 1)))
    assert worker.poll(20_000)
    assert isinstance(decode(worker.recv_multipart()), Assign)
    worker.send_multipart(encode(Ready("rogue")))
    for attempt in range(2):  # the second batch proves the worker is free again
        future = client.submit("test/flaky", attempt)
        batch = None
        while not isinstance(batch, Batch):
            assert worker.poll(20_000), "no batch came"
            batch = decode(worker.recv_multipart())
        worker.send_multipart([packed(1, int(Tag.BATCH_RESULT), batch.batch_id,
                                      [[True, {(1, 2): 3}]], 0.1)])
        with pytest.raises(ExecutionError, match="could not be read"):
            future.result(timeout=20)
    assert client.status()["stats"]["bad_answered"] >= 2


def test_a_hello_with_a_version_past_int64_is_refused_with_shutdown(
    hub: Hub, raw: Callable[[str], zmq.Socket[bytes]],
) -> None:
    worker = raw(hub.worker_address)
    worker.send_multipart([packed(1, int(Tag.HELLO), "w", "demo/add", 2**63, "h", 1)])
    assert worker.poll(20_000)
    answer = decode(worker.recv_multipart())
    assert "64 bits" in getattr(answer, "reason", "")
