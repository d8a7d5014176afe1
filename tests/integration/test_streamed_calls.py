"""Outputs (and inputs) over the streaming threshold through a real hub, for every call a
client makes: ``submit``, ``run_batch``, ``map``, ``AsyncClient.run``/``submit``, and identical
requests that single flight joined (a stream has one receiver: the joined ones run again)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlhub_hpc import AsyncClient, Client, Hub
from dlhub_hpc.transfer import STREAM_BYTES
from tests.integration.conftest import wait_for
from tests.integration.test_large_arrays import CROSS_NODE, cross_node

pytestmark = pytest.mark.timeout(240)  # arrays over 64 MiB, on a shared two-core machine
MAKER = Path(__file__).resolve().parent / "servables" / "maker"
N = STREAM_BYTES // 8 + 2**20  # float64 values: just over the threshold, so it streams


def made(n: int = N, fill: float = 1.5) -> np.ndarray:
    out = np.full(n, fill)
    out[-1] = -1.0
    return out


@pytest.fixture
def maker(make_hub: Callable[..., Hub]) -> Iterator[tuple[Hub, Client]]:
    hub = make_hub(**CROSS_NODE)
    with cross_node(Client(hub.client_address, timeout=120)) as client:
        client.publish(MAKER)
        client.start_workers("test/maker", 1)
        client.wait_for_workers("test/maker", 1, timeout=60)
        yield hub, client


def stat(client: Client, key: str) -> int:
    return int(client.status()["stats"].get(key, 0))


def test_identical_requests_whose_output_streams_each_get_it(
        maker: tuple[Hub, Client], tmp_path: Path) -> None:
    hub, client = maker
    gate = tmp_path / "gate"
    args = {"n": N, "gate": str(gate)}  # the first one waits for the gate: the second joins
    got: dict[str, Any] = {}

    def call(name: str) -> None:
        with cross_node(Client(hub.client_address, timeout=120)) as c:
            try:
                got[name] = c.run("test/maker", args)
            except Exception as exc:  # the assertion below says which and why
                got[name] = exc

    first = threading.Thread(target=call, args=("first",))
    first.start()
    wait_for(lambda: stat(client, "batches") >= 1, timeout=30, what="the first request runs")
    second = threading.Thread(target=call, args=("second",))
    second.start()
    wait_for(lambda: stat(client, "single_flight_joins") >= 1, timeout=30,
             what="the second request joins the first")
    gate.touch()
    first.join(120)
    second.join(120)
    for name in ("first", "second"):
        assert isinstance(got.get(name), np.ndarray), (name, got.get(name))
        assert np.array_equal(got[name], made()), name
    assert stat(client, "single_flight_reruns") == 1
    assert stat(client, "workers_lost") == 0


def test_submit_and_run_batch_receive_streamed_outputs_and_send_streamed_inputs(
        maker: tuple[Hub, Client]) -> None:
    _, client = maker
    out = client.submit("test/maker", {"n": N}).result(timeout=120)
    assert isinstance(out, np.ndarray) and np.array_equal(out, made())
    outs = client.run_batch("test/maker", [{"n": N, "fill": 2.0}, {"n": 10, "fill": 3.0}])
    assert np.array_equal(outs[0], made(N, 2.0)) and np.array_equal(outs[1], made(10, 3.0))
    big = made(N, 0.5)
    total = client.submit("test/maker", big, method="total").result(timeout=120)
    assert total == pytest.approx(float(big.sum()))
    assert client.submit("test/maker", {"n": 3}).result(timeout=60).tolist() == [1.5, 1.5, -1]


def test_map_receives_streamed_outputs_and_sends_streamed_inputs_beside_small_calls(
        maker: tuple[Hub, Client]) -> None:
    _, client = maker
    outs = list(client.map("test/maker", [{"n": 3}, {"n": N, "fill": 2.0}, {"n": 2}]))
    assert outs[0].tolist() == [1.5, 1.5, -1] and outs[2].tolist() == [1.5, -1]
    assert np.array_equal(outs[1], made(N, 2.0))
    big = made(N, 0.5)
    totals = list(client.map("test/maker", [np.ones(4), big, np.ones(2)], method="total"))
    assert totals == [4.0, pytest.approx(float(big.sum())), 2.0]


def test_async_run_and_submit_receive_streamed_outputs_and_send_streamed_inputs(
        maker: tuple[Hub, Client]) -> None:
    hub, _ = maker

    async def main() -> tuple[Any, Any, Any, Any]:
        async with AsyncClient(hub.client_address, timeout=120) as client:
            ran = await client.run("test/maker", {"n": N, "fill": 4.0})
            submitted = await client.submit("test/maker", {"n": N, "fill": 5.0})
            total = await client.run("test/maker", made(N, 0.25), method="total")
            small = await client.run("test/maker", {"n": 2})
            return ran, submitted, total, small

    ran, submitted, total, small = asyncio.run(main())
    assert np.array_equal(ran, made(N, 4.0)) and np.array_equal(submitted, made(N, 5.0))
    assert total == pytest.approx(float(made(N, 0.25).sum()))
    assert small.tolist() == [1.5, -1.0]
