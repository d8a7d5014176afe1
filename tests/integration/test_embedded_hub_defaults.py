"""``Hub()`` in a script starts beside a hub on the fixed ports, and never shares a home."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dlhub_hpc import Hub, HubConfig
from dlhub_hpc.errors import ConfigError
from dlhub_hpc.hubfile import read_hub_file
from dlhub_hpc.protocol import DEFAULT_CLIENT_PORT, DEFAULT_WORKER_PORT


@contextlib.contextmanager
def held(port: int) -> Iterator[None]:
    """Keep ``port`` busy on loopback (if something else holds it already, so much the
    better: it is busy either way)."""
    sock = socket.socket()
    try:
        with contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port))
            sock.listen()
        yield
    finally:
        sock.close()


def test_an_embedded_hub_takes_free_ports_when_the_default_ones_are_busy(
    _isolated_home: Path,
) -> None:
    with held(DEFAULT_CLIENT_PORT), held(DEFAULT_WORKER_PORT), Hub() as hub, \
            hub.client(timeout=30) as client:
        assert client.whoami()["admin"] is True
        assert not hub.client_address.endswith(f":{DEFAULT_CLIENT_PORT}")
        recorded = read_hub_file(_isolated_home)
        assert recorded is not None
        assert recorded["client_address"] == hub.client_address


def test_a_second_hub_on_a_home_in_use_is_refused_with_the_fix(
    make_hub: Callable[..., Hub], tmp_path: Path
) -> None:
    first = make_hub(home=tmp_path / "shared")
    second = Hub(HubConfig(home=tmp_path / "shared", client_address="tcp://127.0.0.1:0",
                           worker_address="tcp://127.0.0.1:0"))
    with pytest.raises(ConfigError) as refused:
        second.start()
    message = str(refused.value)
    assert first.client_address in message
    assert "dlhub-hpc hub stop" in message and "HubConfig(home=" in message
    second.stop()
    recorded = read_hub_file(tmp_path / "shared")
    assert recorded is not None and recorded["client_address"] == first.client_address
    with first.client(timeout=30) as client:
        assert client.whoami()["admin"] is True
