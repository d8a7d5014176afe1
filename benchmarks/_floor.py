"""The floors' bare pyzmq plumbing, shared by latency.py and throughput.py.

A floor is a relay process (two ROUTERs: clients in front, workers behind) and worker
processes that echo; each benchmark has its own relay loop and worker loop, and these
set their sockets up and start the processes alike, so the floors differ only in what
they measure.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

import zmq

from benchmarks.common import CTX, child_process

READY = b"READY"  # a worker's first message: it is free
Keys = tuple[bytes, bytes, bytes, bytes]  # server public, server secret, client pair
RelayMain = Callable[[Connection, MpEvent, Any], None]


def curve_keys() -> Keys:
    """Fresh CurveZMQ key pairs for the floor's relay and its peers."""
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    return server_public, server_secret, client_public, client_secret


def curve_client(sock: zmq.Socket[bytes], keys: Keys | None) -> None:
    if keys is not None:  # CurveZMQ as the hub's clients and workers use it
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (
            keys[0], keys[2], keys[3])


def router(ctx: zmq.Context[Any], keys: Keys | None) -> tuple[zmq.Socket[bytes], str]:
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:  # no ZAP handler: any key is let in, the cipher is the cost
        sock.curve_server = True
        sock.curve_secretkey = keys[1]
    sock.bind("tcp://127.0.0.1:0")
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


@contextlib.contextmanager
def relay_sockets(addresses: Connection, keys: Keys | None,
                  ) -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes], zmq.Poller]]:
    """In the relay process: its ROUTER for clients and its ROUTER for workers, their
    addresses sent back through ``addresses``, and one poller on both; closed on exit."""
    ctx = zmq.Context()
    front, front_addr = router(ctx, keys)
    back, back_addr = router(ctx, keys)
    addresses.send((front_addr, back_addr))
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    try:
        yield front, back, poller
    finally:
        front.close(0)
        back.close(0)
        ctx.term()


@contextlib.contextmanager
def worker_socket(address: str, keys: Keys | None) -> Iterator[zmq.Socket[bytes]]:
    """In a worker process: a DEALER connected to the relay, ``READY`` sent; closed on exit."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    curve_client(sock, keys)
    sock.connect(address)
    sock.send(READY)
    try:
        yield sock
    finally:
        sock.close(0)
        ctx.term()


@contextlib.contextmanager
def relay_process(main: RelayMain, keys: Keys | None) -> Iterator[tuple[str, str, MpEvent]]:
    """The relay process running ``main(addresses, stop, keys)``; yields its client and
    worker addresses and the stop event its workers watch too (set on exit)."""
    stop = CTX.Event()
    ours, theirs = CTX.Pipe()
    try:
        with child_process(main, theirs, stop, keys, name="floor-relay"):
            if not ours.poll(30):
                raise RuntimeError("the floor relay did not start")
            front, back = ours.recv()
            yield front, back, stop
    finally:
        stop.set()
