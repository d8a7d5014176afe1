"""``Client.map`` through a real hub, and bundles of requests and replies on the wire: a
bad message in a bundle fails alone, a malformed bundle never stops the broker."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import msgpack
import pytest
import zmq

from dlhub_hpc import AsyncClient, Client, Hub
from dlhub_hpc.errors import ConfigError, DlhubHpcError, ExecutionError, ProtocolError
from dlhub_hpc.examples import example_dir
from dlhub_hpc.protocol import PROTOCOL_VERSION, Reply, Request, Tag, decode, encode
from dlhub_hpc.protocol.bundle import bundle, parts

from .conftest import SERVABLES, curve_dealer, wait_for


def test_map_yields_outputs_in_order_and_reads_its_inputs_as_it_goes(
        client: Client, serve: Callable[..., str]) -> None:
    add = serve(example_dir("add"), 2)
    pulled = [0]

    def inputs() -> Iterator[list[float]]:
        for i in range(300):
            pulled[0] += 1
            yield [float(i), 0.5]

    taken = 0
    for i, out in enumerate(client.map(add, inputs(), in_flight=8)):
        assert out == i + 0.5
        taken += 1
        assert pulled[0] <= taken + 8  # never more than the window ahead
    assert taken == 300


def test_a_failed_item_raises_where_it_stands_or_takes_its_place(
        client: Client, serve: Callable[..., str]) -> None:
    flaky = serve(SERVABLES / "flaky")
    outs = list(client.map(flaky, [1, -1, 2, -3, 4], return_exceptions=True))
    assert outs[0::2] == [2, 4, 8]
    assert isinstance(outs[1], ExecutionError) and "negative input -1" in str(outs[1])
    assert isinstance(outs[3], ExecutionError)
    got = []
    with pytest.raises(ExecutionError, match="negative input -1"):
        for out in client.map(flaky, [1, -1, 2]):
            got.append(out)
    assert got == [2]
    assert client.run(flaky, 3) == 6  # the client serves on


def test_map_checks_its_window_and_ends_when_the_client_closes(
        hub: Hub, serve: Callable[..., str]) -> None:
    add = serve(example_dir("add"))
    with Client(hub.client_address, timeout=30) as c, pytest.raises(ConfigError):
        c.map(add, [[1.0]], in_flight=0)
    c = Client(hub.client_address, timeout=30)
    outputs = c.map(add, ([float(i)] for i in range(10**6)), in_flight=4)
    assert next(outputs) == 0.0
    closer = threading.Thread(target=c.close)
    closer.start()
    closer.join(30)
    with pytest.raises(DlhubHpcError, match="the client is closed"):
        for _ in outputs:
            pass
    assert not c._windows


def test_a_burst_from_an_async_client_goes_and_comes_back_in_bundles(
        hub: Hub, client: Client, serve: Callable[..., str]) -> None:
    add = serve(example_dir("add"))
    before = client.status()["stats"]

    async def burst() -> list[float]:
        async with AsyncClient(hub.client_address, timeout=30) as c:
            assert await c.run(add, [1.0]) == 1.0  # its reply shows the hub reads bundles
            return await c.run_batch(add, [[float(i), 1.0] for i in range(40)], cache=False)

    assert asyncio.run(burst()) == [i + 1.0 for i in range(40)]
    after = client.status()["stats"]
    assert after.get("bundles_in", 0) > before.get("bundles_in", 0)
    assert after.get("bundles_out", 0) > before.get("bundles_out", 0)


class OlderHub:
    """A hub from before bundles, at its boundary: a plain ROUTER (no handshake property)
    that answers every request it can decode, and counts what it cannot."""

    def __init__(self) -> None:
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self.undecodable = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(50):
                continue
            identity, *frames = self.sock.recv_multipart()
            try:
                msg = decode(frames)
            except ProtocolError:
                self.undecodable += 1  # what an older hub does with a bundle: drops it
                continue
            if isinstance(msg, Request):
                self.sock.send_multipart([identity, *encode(
                    Reply(msg.request_id, True, msg.payload))])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sock.close(linger=0)


def test_clients_send_no_bundle_to_a_hub_that_has_not_said_it_reads_them() -> None:
    older = OlderHub()
    try:
        with Client(older.address, timeout=30) as c:
            assert c.run_batch("demo/echo", list(range(40))) == list(range(40))
            assert list(c.map("demo/echo", range(100), in_flight=16)) == list(range(100))

        async def burst() -> list[int]:
            async with AsyncClient(older.address, timeout=30) as ac:
                return await ac.run_batch("demo/echo", list(range(40)))

        assert asyncio.run(burst()) == list(range(40))
        assert older.undecodable == 0
    finally:
        older.close()


def test_submit_and_map_bundle_once_the_hub_has_said_it_reads_them(
        client: Client, serve: Callable[..., str]) -> None:
    add = serve(example_dir("add"))
    before = client.status()["stats"].get("bundles_in", 0)
    assert client.run_batch(add, [[float(i)] for i in range(64)]) == [float(i) for i in range(64)]
    assert client.run_batch(add, [[1.0]] * 64, cache=False) == [1.0] * 64
    after_submit = client.status()["stats"].get("bundles_in", 0)
    assert after_submit > before
    assert list(client.map(add, ([float(i)] for i in range(200)), cache=False)) == [
        float(i) for i in range(200)]
    assert client.status()["stats"].get("bundles_in", 0) > after_submit


def _raw_requests(sock: zmq.Socket[bytes], headers: list[bytes]) -> list[Reply]:
    sock.send(bundle(headers))
    replies: list[Reply] = []
    while len(replies) < len(headers):
        assert sock.poll(30_000), "the hub did not answer the bundle"
        frame = sock.recv()
        found = parts(frame)
        replies += [decode([p]) for p in found] if found else [decode([frame])]
    return replies


def test_a_bundle_of_requests_is_answered_in_a_bundle_and_a_bad_one_fails_alone(
        hub: Hub, client: Client, serve: Callable[..., str]) -> None:
    add = serve(example_dir("add"))
    sock = curve_dealer(zmq.Context.instance(), hub.client_address)
    try:
        good = [encode(Request(f"g{i}", add, None, "", [float(i), 1.0], 30.0, False))[0]
                for i in range(3)]
        bad = msgpack.packb([PROTOCOL_VERSION, int(Tag.REQUEST), "bad", 42])  # name not str
        replies = {r.request_id: r for r in _raw_requests(sock, [good[0], bad, *good[1:]])}
        assert [replies[f"g{i}"].value for i in range(3)] == [1.0, 2.0, 3.0]
        assert not replies["bad"].ok and replies["bad"].error is not None
        # The three good ones were answered by one batch: one frame, a bundle.
        sock.send(bundle(good))
        assert sock.poll(30_000)
        found = parts(sock.recv())
        assert found is not None and len(found) == 3
        assert sorted(decode([p]).value for p in found) == [1.0, 2.0, 3.0]
    finally:
        sock.close(linger=0)


def test_a_malformed_bundle_is_dropped_and_counted_and_the_hub_serves_on(
        hub: Hub, client: Client, serve: Callable[..., str]) -> None:
    add = serve(example_dir("add"))
    before = client.status()["stats"].get("malformed_frames", 0)
    sock = curve_dealer(zmq.Context.instance(), hub.client_address)
    try:
        sock.send(bundle([encode(Request("x", add, None, "", [1.0], 30.0))[0]])[:-1])
        sock.send(msgpack.packb([PROTOCOL_VERSION, 50, 5000]))
        wait_for(lambda: client.status()["stats"].get("malformed_frames", 0) >= before + 2,
                 what="both bad bundles counted")
        assert not sock.poll(100), "a malformed bundle was answered"
    finally:
        sock.close(linger=0)
    assert list(client.map(add, [[1.0, 2.0], [3.0]])) == [3.0, 3.0]
