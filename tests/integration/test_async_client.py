"""``AsyncClient`` against a real hub: the calls of ``Client``, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dlhub_hpc import AsyncClient, Client, Hub
from dlhub_hpc.errors import (
    ConfigError,
    DlhubHpcError,
    ExecutionError,
    HubUnavailable,
    InvalidInput,
    PayloadTooLarge,
    ServableNotFound,
    Timeout,
)
from dlhub_hpc.examples import example_dir

from .conftest import SERVABLES


def arun(coro: Any) -> Any:
    return asyncio.run(coro)


def test_publish_start_run_and_status_are_awaited(hub: Hub) -> None:
    async def main() -> tuple[Any, ...]:
        async with AsyncClient(hub.client_address, timeout=30) as client:
            published = await client.publish(example_dir("add"))
            await client.start_workers(published["name"], 1)
            await client.wait_for_workers(published["name"], 1, timeout=60)
            out = await client.run("demo/add", [1.0, 2.5])
            via_future = await client.submit("demo/add", [4.0, 5.0])
            me = await client.whoami()
            return published, out, via_future, me, await client.status()

    published, out, via_future, me, status = arun(main())
    assert published["name"] == "demo/add"
    assert (out, via_future) == (3.5, 9.0)
    assert me["admin"] is True
    assert status["workers"][0]["servable"].startswith("demo/add")


def test_many_concurrent_awaits_each_get_their_own_answer(
    hub: Hub, serve: Callable[..., str]
) -> None:
    add = serve(example_dir("add"), 2)

    async def main() -> tuple[list[Any], list[Any]]:
        async with AsyncClient(hub.client_address, timeout=60) as client:
            singles = await asyncio.gather(
                *(client.run(add, [float(i), 0.5], cache=False) for i in range(300)))
            batch = await client.run_batch(add, [[float(i), 1.0] for i in range(50)],
                                           cache=False)
            return singles, batch

    singles, batch = arun(main())
    assert singles == [i + 0.5 for i in range(300)]
    assert batch == [i + 1.0 for i in range(50)]


def test_errors_are_typed(hub: Hub, serve: Callable[..., str]) -> None:
    flaky = serve(SERVABLES / "flaky")

    async def main() -> list[Any]:
        async with AsyncClient(hub.client_address, timeout=30) as client:
            with pytest.raises(ServableNotFound):
                await client.run("demo/nothing", [1.0])
            with pytest.raises(InvalidInput):  # the hub checks the declared type
                await client.run(flaky, "not an integer")
            with pytest.raises(InvalidInput):  # refused before sending: a tuple key
                client.submit(flaky, {(1, 2): 3})
            with pytest.raises(PayloadTooLarge):
                AsyncClient(hub.client_address, max_message_bytes=100).submit(flaky, [1] * 200)
            with pytest.raises(ExecutionError):
                await client.run(flaky, -1)
            return await client.run_batch(flaky, [1, -1, 2], return_exceptions=True)

    outputs = arun(main())
    assert outputs[0] == 2 and outputs[2] == 4
    assert isinstance(outputs[1], ExecutionError)


def test_the_memo_cache_answers_a_repeated_request(hub: Hub, serve: Callable[..., str]) -> None:
    add = serve(example_dir("add"))

    async def main() -> tuple[Any, Any, int, int]:
        async with AsyncClient(hub.client_address, timeout=30) as client:
            before = (await client.status())["stats"].get("memo_hits", 0)
            first = await client.run(add, [7.0, 8.0])
            second = await client.run(add, [7.0, 8.0])
            return first, second, before, (await client.status())["stats"]["memo_hits"]

    first, second, before, after = arun(main())
    assert first == second == 15.0
    assert after == before + 1


def test_a_request_no_worker_takes_times_out(hub: Hub, client: Client) -> None:
    client.publish(SERVABLES / "flaky")

    async def main() -> None:
        async with AsyncClient(hub.client_address) as aclient:
            with pytest.raises(Timeout, match="no worker serves test/flaky@1"):
                await aclient.run("test/flaky", 1, timeout=0.3)

    arun(main())


def test_close_releases_the_socket_and_fails_what_is_open(hub: Hub, client: Client) -> None:
    client.publish(SERVABLES / "flaky")  # no worker: its requests stay open

    async def main() -> None:
        aclient = AsyncClient(hub.client_address, timeout=None)
        pending = aclient.submit("test/flaky", 1)
        sock = aclient._sock
        assert sock is not None and not sock.closed
        await aclient.close()
        assert sock.closed and aclient._sock is None
        assert all(task.done() for task in asyncio.all_tasks() - {asyncio.current_task()})
        with pytest.raises(DlhubHpcError, match="closed"):
            await pending
        with pytest.raises(DlhubHpcError, match="closed"):
            await aclient.run("test/flaky", 1)

    arun(main())


def test_a_stopped_hub_is_hub_unavailable(make_hub: Callable[..., Hub], tmp_path: Path) -> None:
    hub = make_hub(home=tmp_path / "gone")
    address = hub.client_address
    hub.stop()

    async def main() -> None:
        async with AsyncClient(address, timeout=0.2) as client:
            with pytest.raises(HubUnavailable, match="no reply from the hub"):
                await client.control("whoami", timeout=0.5)
            with pytest.raises(HubUnavailable, match="no reply from the hub"):
                await client.run("demo/add", [1.0])

    arun(main())


def test_an_inproc_address_is_refused_with_what_to_use(hub: Hub) -> None:
    with pytest.raises(ConfigError, match="client_address"):
        AsyncClient(hub.local_address)


def test_one_client_serves_one_event_loop(hub: Hub) -> None:
    client = AsyncClient(hub.client_address, timeout=30)
    assert arun(client.whoami())["admin"] is True

    async def elsewhere() -> None:
        with pytest.raises(ConfigError, match="one AsyncClient per event loop"):
            await client.whoami()

    arun(elsewhere())
    arun(client.close())
    assert client._sock is None


def test_the_readme_example_runs(hub: Hub, serve: Callable[..., str], tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    serve(example_dir("add"))
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("## From asyncio"):]
    code = section.split("```python\n", 1)[1].split("\n```", 1)[0]
    env = {**os.environ, "DLHUB_HPC_HUB": hub.client_address,
           "DLHUB_HPC_HOME": str(hub.config.home)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.splitlines()
    assert out[:3] == ["3.0", "[1.0, 2.0, 3.0]", "[1.0, 5.0]"]
