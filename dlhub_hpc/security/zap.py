"""The hub's side of CurveZMQ: its key pairs, and a ZAP handler run in the broker's own loop.

Both ROUTER sockets are CurveZMQ servers. Every handshake asks the ZAP handler (RFC 27)
whether the client's public key is known: on the client socket it must belong to an
identity the hub knows (a user), on the worker socket it must be the hub's worker key.
The handler answers with the identity's name as the ZAP user id, which ZeroMQ then attaches
to every message of that connection as its ``User-Id`` property.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from zmq.utils import z85

from dlhub_hpc.security.keys import KeyPair, load_or_create

logger = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by RFC 27; one per ZMQ context
CLIENT_DOMAIN = "clients"
WORKER_DOMAIN = "workers"

# (ZAP domain, Z85 public key) -> the identity's name, or None to refuse the connection
KeyLookup = Callable[[str, str], "str | None"]


@dataclass(frozen=True)
class HubCredentials:
    """The hub's server key pair and the key pair its workers present."""

    server: KeyPair
    worker: KeyPair

    @classmethod
    def in_home(cls, home: Path) -> HubCredentials:
        """Load the pairs from the hub's home, making them (0600) on first start."""
        return cls(
            server=load_or_create(Path(home) / "hub.key", "hub"),
            worker=load_or_create(Path(home) / "worker.key", "worker"),
        )


@dataclass(frozen=True)
class ServerAuth:
    """What the broker needs to run CurveZMQ: its key pair and who each key belongs to."""

    credentials: HubCredentials
    lookup: KeyLookup
    local_user: str = ""  # who callers in the hub's own process (inproc) act as


def make_curve_server(sock: zmq.Socket[bytes], server: KeyPair, domain: str) -> None:
    """Before bind: ``sock`` accepts only CurveZMQ clients that the ZAP handler lets in."""
    sock.curve_server = True
    sock.curve_secretkey = server.require_secret("the hub's key pair").encode()
    sock.curve_publickey = server.public.encode()
    sock.zap_domain = domain.encode()


def user_id(frame: Any) -> str:
    """The identity ZAP gave the connection a received frame came on ('' without CURVE)."""
    try:
        return str(frame.get("User-Id"))
    except (zmq.ZMQError, AttributeError):
        return ""



class ZapHandler:
    """A REP socket on the ZAP endpoint of the broker's context, polled by its loop."""

    def __init__(self, ctx: zmq.Context[Any], lookup: KeyLookup) -> None:
        self._lookup = lookup
        self.sock: zmq.Socket[bytes] = ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(ZAP_ENDPOINT)  # before any CURVE socket binds: else all are let in
        self.refused = 0

    def __repr__(self) -> str:
        return f"ZapHandler(refused={self.refused})"

    def handle(self) -> None:
        """Answer every request waiting now."""
        while self.sock.poll(0, zmq.POLLIN):
            self._answer(self.sock.recv_multipart())

    def _answer(self, msg: list[bytes]) -> None:
        version, request_id, domain, address, _identity, mechanism, *creds = msg
        status, text, user = b"400", b"unknown key", ""
        if mechanism != b"CURVE" or not creds:
            text = b"CurveZMQ required"
        else:
            key = z85.encode(creds[0]).decode()
            name = self._lookup(domain.decode(), key)
            if name:
                status, text, user = b"200", b"OK", name
            else:
                self.refused += 1
                logger.warning("refused a %s connection from %s: public key %s is not known",
                               domain.decode(), address.decode(), key)
        self.sock.send_multipart([version, request_id, status, text, user.encode(), b""])

    def close(self) -> None:
        self.sock.close(linger=0)
