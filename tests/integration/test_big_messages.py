"""Bounded resources against a real hub: oversized messages are refused (typed, or by
cutting off the sender), a big request is checked off the loop while workers stay
registered, and a client that never reads costs at most its send high-water mark."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
import zmq.utils.monitor

from dlhub_hpc import Client, Hub, InvalidInput, PayloadTooLarge, ServableNotFound, URLRef
from dlhub_hpc.errors import ReferenceFormatError
from dlhub_hpc.protocol import Reply, Request, decode, encode
from dlhub_hpc.security.keys import curve_client, hub_public_key, user_keypair
from tests.integration.conftest import curve_dealer, wait_for

EXAMPLES = Path(__file__).resolve().parents[2] / "dlhub_hpc" / "examples"
LIMIT = 64 * 1024


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.destroy(linger=0)


def test_the_client_refuses_what_its_hub_would_with_the_hubs_recorded_limit(
        make_hub: Callable[..., Hub], monkeypatch: pytest.MonkeyPatch) -> None:
    hub = make_hub(max_message_bytes=LIMIT)
    monkeypatch.setenv("DLHUB_HPC_HOME", str(hub.config.home))
    with Client(hub.client_address, timeout=10) as client:
        assert client.max_message_bytes == LIMIT
        with pytest.raises(PayloadTooLarge) as info:
            client.run("demo/add", [1.0] * 10_000)
        assert info.value.details["limit"] == LIMIT
        with pytest.raises(ServableNotFound):  # a small one still reaches the hub
            client.run("demo/add", [1.0])


def test_a_sender_past_the_socket_limit_is_cut_off_and_others_are_served(
        make_hub: Callable[..., Hub], ctx: zmq.Context[Any]) -> None:
    hub = make_hub(max_message_bytes=LIMIT)
    hostile = curve_dealer(ctx, hub.client_address)
    monitor = hostile.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
    hostile.send_multipart(encode(Request("big", "demo/add", None, "", [1.0] * 20_000)))
    events: list[int] = []

    def disconnected() -> bool:
        while monitor.poll(100):
            events.append(zmq.utils.monitor.recv_monitor_message(monitor)["event"])
        return zmq.EVENT_DISCONNECTED in events

    wait_for(disconnected, timeout=30, what="the hub cuts off an oversized sender")
    assert not hostile.poll(0), "an oversized message must get no answer"
    client = Client(hub.client_address, timeout=10, max_message_bytes=10 * LIMIT)
    with client, pytest.raises(ServableNotFound):
        client.run("demo/add", [1.0])
    hostile.disable_monitor()
    monitor.close(linger=0)
    hostile.close(linger=0)


def test_parts_under_the_socket_limit_but_over_it_together_get_payload_too_large(
        make_hub: Callable[..., Hub], ctx: zmq.Context[Any]) -> None:
    hub = make_hub(max_message_bytes=LIMIT)
    hostile = curve_dealer(ctx, hub.client_address)
    parts = [np.ones(LIMIT // 16) for _ in range(3)]  # 32 KiB frames, 96 KiB together
    frames = encode(Request("split", "demo/add", None, "", parts))
    assert len(frames) == 4 and all(len(f) < LIMIT for f in frames)
    hostile.send_multipart(frames)
    assert hostile.poll(30_000), "the hub must answer a message it can address"
    reply = decode(hostile.recv_multipart())
    assert isinstance(reply, Reply) and reply.request_id == "split" and not reply.ok
    assert reply.error is not None and reply.error["type"] == "PayloadTooLarge"
    assert reply.error["details"]["setting"] == "HubConfig.max_message_bytes"
    assert hub.state.stats["too_large"] == 1
    hostile.close(linger=0)


def test_a_big_request_is_checked_while_workers_stay_registered(
        make_hub: Callable[..., Hub]) -> None:
    # heartbeat_timeout 0.6 s: checking 10^6 floats on the loop took over a second.
    hub = make_hub(heartbeat_timeout=0.6)
    with Client(hub.client_address, timeout=120) as client:
        name = str(client.publish(EXAMPLES / "add")["name"])
        client.start_workers(name, 1)
        client.wait_for_workers(name, 1, timeout=60)
        before = [w["worker_id"] for w in client.status()["workers"]]
        assert client.run(name, [1.0] * 10**6) == 10**6
        with pytest.raises(InvalidInput):  # the check's error comes back too
            client.run(name, [1.0] * (10**6 - 1) + ["x"])
        after = [w["worker_id"] for w in client.status()["workers"]]
    assert after == before
    assert hub.state.stats["workers_lost"] == 0


def test_a_reference_in_a_request_over_the_large_message_size_never_reaches_a_worker(
        make_hub: Callable[..., Hub]) -> None:
    # Such a request is checked on the lane and sent on as the bytes it came in: a URL
    # reference (and its bearer token) inside would reach the servable's code unread.
    hub = make_hub()
    with Client(hub.client_address, timeout=60) as client:
        name = str(client.publish(EXAMPLES / "noop")["name"])  # input: any; echoes it
        client.start_workers(name, 1)
        client.wait_for_workers(name, 1, timeout=60)
        ref = URLRef("https://data.example.org/frame.npy", token="callers.secret-token")
        with pytest.raises(ReferenceFormatError, match="large_message_bytes"):
            client.run(name, {"data": b"x" * (2 << 20), "frame": ref}, cache=False)
        assert client.run(name, {"data": b"x" * (2 << 20)}, cache=False)["data"][:1] == b"x"


@pytest.mark.parametrize("frames", [
    # one frame: the payload stays encoded until its check finds an unknown extension
    [msgpack.packb([1, 1, "bad", "demo/add", None, "", [1.0] * 20_000
                    + [msgpack.ExtType(9, b"")]])],
    # an array frame besides the header: decoded whole, and its dtype is refused
    [msgpack.packb([1, 1, "bad", "demo/add", None, "", msgpack.ExtType(1, b"|O;2;1")]),
     b"x" * 20_000],
    # not a request: a control whose args are not a dict
    [msgpack.packb([1, 3, "bad", "status", [1.0] * 20_000])],
], ids=["payload", "array-frame", "control"])
def test_a_malformed_large_message_gets_a_typed_error(
        make_hub: Callable[..., Hub], ctx: zmq.Context[Any], frames: list[bytes]) -> None:
    hub = make_hub(large_message_bytes=4096)  # all of these go by the lane
    hostile = curve_dealer(ctx, hub.client_address)
    hostile.send_multipart(frames)
    assert hostile.poll(30_000), "a malformed large message must be answered, not dropped"
    reply = decode(hostile.recv_multipart())
    assert isinstance(reply, Reply) and reply.request_id == "bad" and not reply.ok
    assert reply.error is not None and reply.error["type"] == "ProtocolError"
    with Client(hub.client_address, timeout=10) as client:  # and the hub serves on
        assert "stats" in client.status()
    hostile.close(linger=0)


def test_a_client_that_never_reads_costs_at_most_its_high_water_mark(
        make_hub: Callable[..., Hub], ctx: zmq.Context[Any]) -> None:
    hub = make_hub(client_send_hwm=10)
    reader = ctx.socket(zmq.DEALER)
    reader.setsockopt(zmq.RCVHWM, 1)
    reader.setsockopt(zmq.RCVBUF, 4096)  # so the kernel cannot hold the replies either
    server = hub_public_key(hub.client_address)
    assert server is not None
    curve_client(reader, server, user_keypair())
    reader.connect(hub.client_address)
    sent = 3000
    rid = "r" * 8000  # each reply (an error naming it) is over 8 KB: 24 MB in all
    for i in range(sent):
        reader.send_multipart(encode(Request(f"{i}-{rid}", "nobody/none", None, "", 0)))
    stats = hub.state.stats
    wait_for(lambda: stats["rejected"] == sent, timeout=120, what="every request answered")
    with Client(hub.client_address, timeout=30) as other:
        # the loop answers this after sending (or dropping) every reply counted above
        dropped = other.status()["stats"]["replies_dropped_hwm"]
    assert dropped > 0, "the hub queued every reply for a client that does not read"
    received = 0
    while received < sent - dropped:  # what was queued still arrives, and nothing more
        assert reader.poll(30_000), f"{received} of {sent - dropped} queued replies came"
        reader.recv_multipart()
        received += 1
    assert stats["replies_dropped_hwm"] == dropped
    assert not reader.poll(0)
    reader.close(linger=0)
