"""The broker's state has one owner, the hub's loop thread: status, pilot status and the
pilots' scaling thread read what the loop publishes, never the state itself."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dlhub_hpc.broker.state import BrokerState
from dlhub_hpc.client import Client
from dlhub_hpc.examples import example_dir
from dlhub_hpc.hub import Hub
from tests.integration.conftest import wait_for


@pytest.fixture
def readers(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """The names of the threads that read any BrokerState's books."""
    seen: set[str] = set()
    for name in ("view", "snapshot"):
        original = getattr(BrokerState, name)

        def reading(self: BrokerState, _original: Any = original) -> Any:
            seen.add(threading.current_thread().name)
            return _original(self)

        monkeypatch.setattr(BrokerState, name, reading)
    yield seen


def test_only_the_loop_reads_the_state(readers: set[str], make_hub: Callable[..., Hub],
                                       tmp_path: Path) -> None:
    hub = make_hub()
    with Client(hub.client_address, timeout=30) as client:
        name = str(client.publish(example_dir("add"))["name"])
        client.start_workers(name, 1)
        client.wait_for_workers(name, 1, timeout=60)
        assert client.run(name, [1.0, 2.0]) == 3.0
        status = client.status()
        assert [w["servable"] for w in status["workers"]] == [f"{name}@1"]
        client.pilot_status()
    # What the pilots' scaling thread reads: the snapshot the loop published.
    published = wait_for(lambda: hub.pilots._snapshot()["workers"], what="a published worker")
    assert published[0]["servable"] == f"{name}@1"
    assert readers == {"hub-broker"}


def test_the_published_snapshot_follows_the_state(make_hub: Callable[..., Hub]) -> None:
    hub = make_hub()
    first = hub.server.published
    with Client(hub.client_address, timeout=30) as client:
        name = str(client.publish(example_dir("add"))["name"])
        client.start_workers(name, 1)
        client.wait_for_workers(name, 1, timeout=60)
        client.run(name, [1.0, 2.0])
    later = wait_for(lambda: hub.server.published.stats.get("replies_ok") and
                     hub.server.published, what="the reply counted in the published snapshot")
    assert later.changes > first.changes and first.workers == ()
    assert [w.state for w in later.workers] == ["idle"]


def test_no_snapshot_is_built_until_a_reader_asks(make_hub: Callable[..., Hub]) -> None:
    """A thousand workers' copy twenty times a second for nobody is work the loop skips."""
    hub = make_hub()
    with Client(hub.client_address, timeout=30) as client:
        name = str(client.publish(example_dir("add"))["name"])
        client.start_workers(name, 1)
        client.wait_for_workers(name, 1, timeout=60)  # status reads the state, not this
        client.run(name, [1.0, 2.0])
        assert hub.server._published.changes == -1  # nobody read: none was built
        # a reader waits (briefly) for a fresh one; a loaded loop may take longer
        fresh = wait_for(lambda: (s := hub.server.published).changes > 0 and s,
                         what="a snapshot built for the reader")
        assert fresh.changes > 0 and fresh.stats.get("replies_ok") == 1
        assert [w.state for w in fresh.workers] == ["idle"]
