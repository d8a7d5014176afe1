"""A hub embedded in the caller's process, reached through ``Hub.client()`` on inproc://."""

from __future__ import annotations

import getpass
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dlhub_hpc import Client, Hub
from dlhub_hpc.errors import DlhubHpcError, PermissionDenied
from dlhub_hpc.examples import example_dir
from dlhub_hpc.keys import KeyPair


@pytest.fixture
def add(serve: Callable[..., str]) -> str:
    return serve(example_dir("add"))


def test_an_embedded_client_runs_servables_over_inproc(hub: Hub, add: str) -> None:
    with hub.client(timeout=30) as local:
        assert local.address.startswith("inproc://")
        assert local.run(add, [1.0, 2.5]) == 3.5
        assert local.run(add, [1.0, 2.5]) == 3.5  # the memo cache answers the second
        assert local.submit(add, [4.0, 5.0]).result(timeout=30) == 9.0
        assert local.status()["stats"]["memo_hits"] >= 1


def test_the_embedded_client_acts_as_the_hubs_admin(hub: Hub) -> None:
    with hub.client(timeout=30) as local:
        assert local.whoami() == {"identity": getpass.getuser(), "admin": True, "groups": []}


def test_a_remote_identity_does_not_become_admin_beside_an_embedded_one(
    hub: Hub, client: Client
) -> None:
    pair = KeyPair.generate()
    client.add_identity("carol", pair.public)
    with hub.client(timeout=30) as local, Client(hub.client_address, timeout=30,
                                                 keys=pair) as carol:
        assert local.whoami()["admin"] is True
        assert carol.whoami() == {"identity": "carol", "admin": False, "groups": []}
        with pytest.raises(PermissionDenied, match="admin"):
            carol.shutdown_hub()
        assert local.whoami()["admin"] is True  # the hub is still up


def test_threads_and_tcp_callers_each_get_their_own_answers(
    hub: Hub, client: Client, add: str
) -> None:
    errors: list[BaseException] = []

    def caller(c: Client, base: float) -> None:
        try:
            for i in range(50):
                assert c.run(add, [base, float(i)], cache=False) == base + i
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    with hub.client(timeout=30) as local:
        threads = [threading.Thread(target=caller, args=(local, 1000.0 * k)) for k in range(4)]
        threads.append(threading.Thread(target=caller, args=(client, -1000.0)))
        for t in threads:
            t.start()
        futures = [local.submit(add, [0.5, float(i)], cache=False) for i in range(100)]
        for t in threads:
            t.join(timeout=120)
        assert [f.result(timeout=60) for f in futures] == [0.5 + i for i in range(100)]
    assert not errors, errors[0]


def test_stopping_the_hub_with_an_embedded_client_open_does_not_hang(
    make_hub: Callable[..., Hub], tmp_path: Path
) -> None:
    hub = make_hub(home=tmp_path / "short-lived")
    local = hub.client(timeout=2)
    try:
        assert local.whoami()["admin"] is True
        started = time.monotonic()
        hub.stop()
        assert time.monotonic() - started < 8
        with pytest.raises(DlhubHpcError):
            local.whoami()
    finally:
        local.close()
