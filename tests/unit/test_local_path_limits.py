"""The fast path's exchange under a hostile local user: silent connections, floods,
and a hub out of descriptors."""

from __future__ import annotations

import multiprocessing
import os
import resource
import socket
from collections.abc import Iterator

import pytest

from dlhub_hpc.localpath import wire
from dlhub_hpc.localpath.exchange import FdExchange


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _connect(name: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(60)  # a guard against a hang, not a measure: EOF is what is awaited
    sock.connect(name)
    return sock


def _closed_by_hub(sock: socket.socket) -> bool:
    try:
        return sock.recv(64) == b""
    except ConnectionResetError:
        return True


@pytest.fixture
def clock() -> _Clock:
    return _Clock()


@pytest.fixture
def exchange(clock: _Clock) -> Iterator[FdExchange]:
    ex = FdExchange(clock=clock, max_per_uid=4, register_timeout=5.0)
    ex.start()
    yield ex
    ex.close()


def test_a_connection_that_never_registers_is_dropped(exchange: FdExchange,
                                                      clock: _Clock) -> None:
    silent = _connect(exchange.name)
    registered = _connect(exchange.name)
    token, proof = exchange.offer("caller:alice")
    wire.send(registered, ["register", token])
    assert wire.receive(registered) == (["ok", proof], None)
    clock.now += 6.0  # past the registration deadline
    assert _closed_by_hub(silent)
    assert exchange.linked("caller:alice")  # the registered one stays
    for s in (silent, registered):
        s.close()


def test_one_unix_user_holds_a_bounded_number_of_connections(exchange: FdExchange) -> None:
    held = [_connect(exchange.name) for _ in range(4)]
    extra = _connect(exchange.name)  # the fifth of this uid: closed at once
    assert _closed_by_hub(extra)
    token, proof = exchange.offer("caller:alice")
    wire.send(held[0], ["register", token])  # those within the cap are served
    assert wire.receive(held[0]) == (["ok", proof], None)
    for s in [*held, extra]:
        s.close()


def _flood_then_register() -> None:
    ex = FdExchange(max_per_uid=10_000)
    ex.start()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 40, hard))
    flood = []
    try:
        while True:  # each connection costs this process two descriptors: both ends
            flood.append(_connect(ex.name))
    except OSError:
        pass
    for s in flood:
        s.close()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        sock = _connect(ex.name)
        token, proof = ex.offer("caller:alice")
        wire.send(sock, ["register", token])
        ok = wire.receive(sock) == (["ok", proof], None)
    except OSError:
        ok = False
    os._exit(0 if ok else 3)


def test_the_exchange_survives_running_out_of_descriptors() -> None:
    child = multiprocessing.get_context("fork").Process(target=_flood_then_register)
    child.start()
    child.join()
    assert child.exitcode == 0
