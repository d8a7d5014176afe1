"""``Client``'s per-thread sockets: released when their thread ends, and all by ``close()``."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from dlhub_hpc import Client, Hub
from dlhub_hpc.errors import DlhubHpcError
from dlhub_hpc.examples import example_dir

from .conftest import SERVABLES, wait_for


def _callers(client: Client, servable: str, n: int, release: threading.Event,
             errors: list[BaseException]) -> list[threading.Thread]:
    """``n`` threads that each run one request, then stay alive until ``release``."""

    def call(i: int) -> None:
        try:
            assert client.run(servable, [float(i), 1.0]) == i + 1.0
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        release.wait()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def test_a_threads_socket_is_closed_when_the_thread_ends(
    hub: Hub, serve: Callable[..., str]
) -> None:
    add = serve(example_dir("add"))
    release, errors = threading.Event(), list[BaseException]()
    with Client(hub.client_address, timeout=30) as client:
        threads = _callers(client, add, 4, release, errors)
        opened = wait_for(lambda: len(client._sockets.sockets()) == 4
                          and client._sockets.sockets(), timeout=60, what="4 sockets open")
        assert not any(s.closed for s in opened)
        release.set()
        for t in threads:
            t.join(timeout=60)
        assert all(s.closed for s in opened)  # closed as each thread ended, not at close()
        assert client._sockets.sockets() == []
        assert client.run(add, [1.0, 1.0]) == 2.0  # this thread's own socket
        assert len(client._sockets.sockets()) == 1
    assert not errors, errors[0]


def test_close_closes_the_sockets_of_threads_still_alive(
    hub: Hub, serve: Callable[..., str]
) -> None:
    add = serve(example_dir("add"))
    release, errors = threading.Event(), list[BaseException]()
    client = Client(hub.client_address, timeout=30)
    assert client.submit(add, [1.0, 2.0]).result(timeout=60) == 3.0  # the I/O thread too
    io_thread = client._thread
    threads = _callers(client, add, 3, release, errors)
    try:
        opened = wait_for(lambda: len(client._sockets.sockets()) == 3
                          and client._sockets.sockets(), timeout=60, what="3 sockets open")
        client.close()
        assert all(s.closed for s in opened)
        assert all(t.is_alive() for t in threads)  # their threads have not ended
        assert client._sockets.sockets() == []
        assert io_thread is not None and not io_thread.is_alive()
    finally:
        release.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors[0]


def test_close_ends_a_call_waiting_in_another_thread(hub: Hub, client: Client) -> None:
    client.publish(SERVABLES / "flaky")  # no worker: a request waits for ever
    waiting = Client(hub.client_address, timeout=None)
    outcome: list[Any] = []

    def call() -> None:
        try:
            outcome.append(waiting.run("test/flaky", 1))
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    wait_for(lambda: client.status()["servables"].get("test/flaky@1", {}).get("queued") == 1,
             timeout=30, interval=0.02, what="the request reached the hub's queue")
    waiting.close()
    caller.join(timeout=30)
    assert not caller.is_alive(), "close() left a call waiting"
    assert isinstance(outcome[0], DlhubHpcError) and "closed" in str(outcome[0])
    with pytest.raises(DlhubHpcError, match="closed"):
        waiting.run("test/flaky", 1)
