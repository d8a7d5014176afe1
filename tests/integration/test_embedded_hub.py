"""A hub embedded in the caller's process, reached through ``Hub.client()`` on inproc://."""

from __future__ import annotations

import getpass
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from dlhub_hpc import Client, Hub
from dlhub_hpc.errors import (
    ConfigError,
    DlhubHpcError,
    HubUnavailable,
    PermissionDenied,
    ServableNotFound,
)
from dlhub_hpc.examples import example_dir
from dlhub_hpc.security.keys import KeyPair


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
        stopper = threading.Thread(target=hub.stop, daemon=True)
        stopper.start()
        stopper.join(timeout=45)  # a generous bound, short of the test's own timeout
        assert not stopper.is_alive(), "Hub.stop() hangs while an embedded client is open"
        with pytest.raises(DlhubHpcError):
            local.whoami()
    finally:
        local.close()


def test_calls_after_the_embedded_hub_stopped_fail_at_once(
    make_hub: Callable[..., Hub], tmp_path: Path
) -> None:
    hub = make_hub(home=tmp_path / "gone")
    add_dir = example_dir("add")
    with hub.client(timeout=None) as used, hub.client(timeout=None) as fresh:
        used.publish(add_dir)  # its I/O thread exists already, and this thread's socket:
        with pytest.raises(ServableNotFound):
            used.run("demo/nothing", [1.0])
        hub.stop()
        # With no timeout set, a call that waited for an answer would wait for ever: each
        # fails at once, from knowing the hub stopped.
        for call in (used.whoami, fresh.whoami, lambda: used.run("demo/add", [1.0]),
                     lambda: fresh.run("demo/add", [1.0])):
            with pytest.raises(HubUnavailable, match="has stopped"):
                call()
    with pytest.raises(HubUnavailable):
        hub.client(timeout=None).whoami()


def test_an_inproc_address_without_the_hubs_context_is_refused(hub: Hub) -> None:
    with pytest.raises(ConfigError, match=r"Hub\.client\(\)"):
        Client(hub.local_address)


def test_a_small_array_input_arrives_writable(hub: Hub, serve: Callable[..., str],
                                              tmp_path: Path) -> None:
    import numpy as np
    import yaml

    root = tmp_path / "scale"
    root.mkdir()
    (root / "scale.py").write_text(
        "def run(x):\n    x *= 2  # in place, as many preprocessing steps do\n    return x\n")
    (root / "servable.yaml").write_text(yaml.safe_dump({
        "datacite": {"title": "In-place scaler", "creators": ["Test, A"]},
        "dlhub": {"owner": "demo", "name": "scale"},
        "servable": {"type": "python_function",
                     "methods": {"run": {"function": "scale:run",
                                         "input": {"type": "ndarray"},
                                         "output": {"type": "ndarray"}}}},
    }))
    name = serve(root)
    with hub.client(timeout=30) as local:
        out = local.run(name, np.arange(4.0), cache=False)
    assert np.array_equal(out, [0.0, 2.0, 4.0, 6.0])
