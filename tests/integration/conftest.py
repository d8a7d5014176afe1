"""Factory fixtures: real hubs, real worker processes through Parsl, always shut down."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

from dlhub_hpc import Client, Hub, HubConfig
from dlhub_hpc.security.keys import (
    KeyPair,
    curve_client,
    hub_public_key,
    user_keypair,
    worker_credential,
)

from .gated import Gate, open_gates

SERVABLES = Path(__file__).parent / "servables"

HubProcess = Callable[..., subprocess.Popen[bytes]]  # (home, *hub start args)
# Quick to notice a killed worker, yet a loaded 2-core machine's stall of a heartbeat
# thread (a second, now and then) does not get a live worker counted lost.
FAST = {"heartbeat_interval": 0.1, "heartbeat_timeout": 1.5}


def curve_dealer(ctx: zmq.Context[Any], address: str) -> zmq.Socket[bytes]:
    """A raw DEALER that passes the hub's CurveZMQ check, as the user's clients and the
    hub's workers do (the hub recorded its keys for its addresses on start)."""
    sock = ctx.socket(zmq.DEALER)
    worker = worker_credential(address)
    server = hub_public_key(address)
    if server is not None:
        curve_client(sock, server, worker or user_keypair())
    sock.connect(address)
    return sock


def worker_processes(hub_address: str) -> list[psutil.Process]:
    """Live worker processes started for the hub listening for workers at ``hub_address``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        alive = proc.info["status"] != psutil.STATUS_ZOMBIE
        if alive and "dlhub_hpc.worker" in cmd and hub_address in cmd:
            found.append(proc)
    return found


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "",
             interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something true (and return that), or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s: {what or predicate}")
        time.sleep(interval)

@pytest.fixture
def make_hub(tmp_path: Path) -> Iterator[Callable[..., Hub]]:
    """Start hubs on loopback with random ports and tiny heartbeats; stop them afterwards."""
    hubs: list[Hub] = []

    def make(**overrides: Any) -> Hub:
        settings: dict[str, Any] = {
            "home": tmp_path / f"hub{len(hubs)}",
            "client_address": "tcp://127.0.0.1:0",
            "worker_address": "tcp://127.0.0.1:0",
            **FAST,
            **overrides,
        }
        hub = Hub(HubConfig(**settings)).start()
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        hub.stop()


@pytest.fixture
def gates(tmp_path: Path) -> Iterator[Callable[[str], Gate]]:
    """FIFOs by name (``gated.py``), each with the call that opens it for good."""
    yield from open_gates(tmp_path)


@pytest.fixture
def hub(make_hub: Callable[..., Hub]) -> Hub:
    return make_hub()


@pytest.fixture
def client(hub: Hub) -> Iterator[Client]:
    with Client(hub.client_address, timeout=30) as c:
        yield c


@pytest.fixture
def serve(client: Client) -> Callable[..., str]:
    """Publish a servable directory and start ``n`` warm workers for it; returns its name."""

    def start(directory: Path, n: int = 1) -> str:
        name = str(client.publish(directory)["name"])
        client.start_workers(name, n)
        client.wait_for_workers(name, n, timeout=60)
        return name

    return start


@contextlib.contextmanager
def people_on(hub: Hub) -> Iterator[dict[str, Client]]:
    """The admin (this Unix user) and two more identities, alice and bob, each with its
    own key pair, as clients of ``hub``; closed afterwards."""
    admin = Client(hub.client_address, timeout=60)
    clients = {"admin": admin}
    try:
        for name in ("alice", "bob"):
            pair = KeyPair.generate()
            admin.add_identity(name, pair.public)
            clients[name] = Client(hub.client_address, timeout=60, keys=pair)
        yield clients
    finally:
        for c in clients.values():
            c.close()


@pytest.fixture
def people(hub: Hub) -> Iterator[dict[str, Client]]:
    """admin, alice and bob on one hub."""
    with people_on(hub) as clients:
        yield clients


@pytest.fixture
def hub_process(tmp_path: Path) -> Iterator[HubProcess]:
    """``dlhub-hpc hub start`` in a subprocess; returns once its hub.json names it."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(home: Path, *args: str) -> subprocess.Popen[bytes]:
        log = tmp_path / f"hub{len(procs)}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "dlhub_hpc.cli", "hub", "start", "--home", str(home), *args],
            stdout=log.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        procs.append(proc)

        def listening() -> bool:
            assert proc.poll() is None, log.read_text()
            with contextlib.suppress(OSError, ValueError):
                return bool(json.loads((home / "hub.json").read_text())["pid"] == proc.pid)
            return False

        wait_for(listening, timeout=60, what="the hub to write its hub.json")
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
