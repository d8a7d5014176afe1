"""The same-node fast path from ``AsyncClient`` (and so from the gateway, whose connection
to the hub is one): the first large input opens the link, and arrays go as memfds both
ways, not as CurveZMQ chunks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zmq

from dlhub_hpc import AsyncClient, Client, Hub
from tests.integration.conftest import wait_for
from tests.integration.test_drain_workers import Spawn, spawn, worker_argv

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq was built without CURVE")
EXAMPLES = Path(__file__).resolve().parents[2] / "dlhub_hpc" / "examples"
__all__ = ["spawn"]  # the fixture, used by name


def counter(client: Client, key: str) -> int:
    return int(client.status()["stats"].get(key, 0))


def test_an_async_clients_large_arrays_go_by_the_path_both_ways(
        hub: Hub, client: Client, serve: Callable[..., str]) -> None:
    """``AsyncClient`` (the gateway's connection too) opens the link on its first large
    input: the input and the echoed output are memfds, not CurveZMQ chunks."""
    noop = serve(EXAMPLES / "noop")
    x = np.random.default_rng(4).standard_normal(2**20)  # 8 MiB
    before = (counter(client, "local_path_in"), counter(client, "local_path_out"))

    async def main() -> tuple[np.ndarray, np.ndarray, bool]:
        async with AsyncClient(hub.client_address, timeout=60) as caller:
            ran = await caller.run(noop, x, cache=False)
            submitted = await caller.submit(noop, x + 1, cache=False)  # the link is open now
            return ran, submitted, caller.local_fast_path

    ran, submitted, on = asyncio.run(main())
    assert on and ran.tobytes() == x.tobytes() and np.array_equal(submitted, x + 1)
    assert not ran.flags.writeable  # a map of a sealed memfd: the reply carried no bytes
    # in: two requests and two results; out: two batches and two replies
    wait_for(lambda: counter(client, "local_path_in") >= before[0] + 4
             and counter(client, "local_path_out") >= before[1] + 4, timeout=10,
             what="both calls counted by the path each way")


def test_an_async_client_with_the_path_off_sends_its_arrays_through_the_hub(
        hub: Hub, client: Client, serve: Callable[..., str]) -> None:
    noop = serve(EXAMPLES / "noop")
    x = np.arange(2**18, dtype=np.float64)  # 2 MiB: over local_min_bytes
    before = counter(client, "local_path_in")

    async def main() -> tuple[np.ndarray, bool]:
        async with AsyncClient(hub.client_address, timeout=60) as caller:
            caller.local_fast_path = False
            return await caller.run(noop, x, cache=False), await caller.open_local_path()

    y, opened = asyncio.run(main())
    assert np.array_equal(y, x) and y.flags.writeable and not opened
    # The worker's own leg may use the path; the caller's request did not.
    assert counter(client, "local_path_in") <= before + 1


def test_closing_while_the_link_opens_neither_hangs_nor_leaves_it_open(hub: Hub) -> None:
    async def main() -> tuple[bool, bool]:
        caller = AsyncClient(hub.client_address, timeout=30)
        opening = asyncio.ensure_future(caller.open_local_path())
        await asyncio.sleep(0)  # its thread is on its way to ask the hub
        await asyncio.wait_for(caller.close(), 30)
        opened = await asyncio.wait_for(opening, 30)
        return opened, caller._fast.link is None

    opened, closed = asyncio.run(main())
    assert isinstance(opened, bool) and closed


def test_a_linked_client_sends_large_arrays_to_a_hub_that_restarted(
        make_hub: Callable[..., Hub], spawn: Spawn, tmp_path: Path) -> None:
    """The link dies with the hub while the client's ZeroMQ socket reconnects to the new
    one on the same address: the next large input rides in its message rather than fail,
    and the one after opens a link to the new hub."""
    first = make_hub(home=tmp_path / "home")
    client = Client(first.client_address, timeout=60)
    name = client.publish(EXAMPLES / "noop")["name"]
    worker = spawn(worker_argv(first, name))
    client.wait_for_workers(name, 1, timeout=60)
    x = np.random.default_rng(5).standard_normal(2**16)  # 512 KiB: over local_min_bytes
    assert np.array_equal(client.run(name, x, cache=False), x) and client.open_local_path()
    first.stop()
    worker.wait(timeout=60)  # the worker leaves with its hub
    second = make_hub(home=tmp_path / "home", client_address=first.client_address,
                      worker_address=first.worker_address)
    spawn(worker_argv(second, name))
    client.wait_for_workers(name, 1, timeout=60)
    assert np.array_equal(client.run(name, x, cache=False), x)  # finds the link gone
    y = client.run(name, x, cache=False)  # on a new link, which the new hub knows of
    assert np.array_equal(y, x) and not y.flags.writeable  # the answer came as a memfd
    client.close()
