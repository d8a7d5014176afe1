"""The loop's cheap path for a worker's Heartbeat: the same outcome as the general one,
without counting as a change to publish, and anything unlike a Heartbeat left to the
general decode."""

from __future__ import annotations

import os
from collections.abc import Iterator

import msgpack
import pytest
import zmq

from dlhub_hpc.broker.server import BrokerServer
from dlhub_hpc.protocol import Heartbeat, Ready, encode
from tests.unit.test_broker_state import ADD, Catalog, Hub


@pytest.fixture
def hub() -> Hub:
    hub = Hub(Catalog(ADD), heartbeat_interval=50.0, heartbeat_timeout=100.0)
    hub.tick(0.0)
    assert hub.start("w1") == []
    return hub


def test_a_heartbeat_refreshes_its_worker_and_is_no_change_to_publish(hub: Hub) -> None:
    changes = hub.state.changes
    assert hub.state.heartbeat(b"w1-hb", "w1", "", 7.0) == []
    assert hub.state._workers[b"w1"].last_seen == 7.0
    assert hub.state.changes == changes  # the snapshot would not differ
    hub.state.validate()


def test_a_heartbeat_from_another_credential_is_refused_and_counted(hub: Hub) -> None:
    assert hub.state.heartbeat(b"x-hb", "w1", "worker:mallory:key", 9.0) == []
    assert hub.state._workers[b"w1"].last_seen < 9.0
    assert hub.state.stats["impostor_worker_messages"] == 1
    assert hub.state.view().changes == hub.state.changes  # counted: a change to publish


@pytest.fixture
def server(hub: Hub) -> Iterator[BrokerServer]:
    server = BrokerServer(hub.state, hub.state.config, lambda name, version: ({}, b""), {})
    yield server
    server.context.term()
    os.close(server._wake_r)
    os.close(server._wake_w)


def frames(*parts: bytes) -> list[zmq.Frame]:
    return [zmq.Frame(p) for p in parts]


def test_the_shell_takes_a_heartbeat_by_its_cheap_path(hub: Hub, server: BrokerServer) -> None:
    assert server._on_heartbeat(frames(b"w1-hb", *encode(Heartbeat("w1"))))
    assert hub.state._workers[b"w1"].last_seen > 1.0  # the loop's monotonic clock


@pytest.mark.parametrize("header", [
    encode(Ready("w1"))[0],  # another message
    encode(Heartbeat("w1"))[0] + b"\x00",  # trailing bytes: the general decode refuses it
    msgpack.packb([1, 10, 5]),  # a sender that is no string
    msgpack.packb([1, 10, "w1", "extra"]),
    msgpack.packb([1, 10, "w" * 300]),  # too large for a heartbeat of ours
])
def test_anything_else_is_left_to_the_general_path(hub: Hub, server: BrokerServer,
                                                   header: bytes) -> None:
    assert not server._on_heartbeat(frames(b"w1-hb", header))
    assert hub.state._workers[b"w1"].last_seen == 0.0
