"""The caller's side of CurveZMQ: which keys a client socket uses, and why a hub refused it.

A client needs the hub's public key and its own key pair. The hub's key comes from the
``server_key`` argument, ``$DLHUB_HPC_HUB_KEY``, the user's key directory (where a hub
records it on start, or the admin's ``dlhub-hpc keys trust``), or the ``hub.json`` of a hub
in the default home. The key pair is the user's own (``dlhub-hpc keys create``; made on
first use). With no hub key known the socket connects without CurveZMQ, and a hub that
requires it simply never answers: the timeout's message then says so.

A refused handshake is seen on a socket monitor, so the caller gets ``AuthenticationError``
naming its public key rather than a bare timeout.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Any
from urllib.parse import urlsplit

import zmq
from zmq.utils.monitor import recv_monitor_message

from dlhub_hpc.errors import AuthenticationError, HubUnavailable
from dlhub_hpc.hubfile import default_home, read_hub_file
from dlhub_hpc.security.keys import KeyPair, curve_client, hub_public_key, key_dir, user_keypair

logger = logging.getLogger(__name__)

_FAILURES = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
             | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


class ClientCurve:
    """The keys a client uses; ``secure(sock, address)`` before each connect."""

    def __init__(self, keys: KeyPair | None = None, server_key: str | None = None) -> None:
        self._keys = keys
        self._server_key = server_key
        self.public_key: str | None = None  # this client's, once a socket used it
        self.server_key: str | None = None  # the hub's key it used
        self.last_refusal: AuthenticationError | None = None

    def __repr__(self) -> str:
        return f"ClientCurve(keys={self._keys!r}, server_key={self._server_key!r})"

    def server_key_for(self, address: str) -> str | None:
        if self._server_key:
            return self._server_key
        found = hub_public_key(address)
        if found:
            return found
        state = read_hub_file(default_home()) or {}
        if state.get("client_address") == address and state.get("server_key"):
            return str(state["server_key"])
        return None

    def secure(self, sock: zmq.Socket[bytes], address: str) -> zmq.Socket[bytes] | None:
        """Set CurveZMQ options on ``sock`` if the hub's key is known; return a monitor of
        its handshake failures (None when it connects in the clear)."""
        if address.startswith("inproc://"):
            return None  # a hub in this process: no connection to secure
        server = self.server_key_for(address)
        if server is None:
            logger.debug("no public key known for the hub at %s; connecting without CurveZMQ",
                         address)
            return None
        pair = self._keys or user_keypair()
        self.public_key, self.server_key = pair.public, server
        curve_client(sock, server, pair)
        return sock.get_monitor_socket(_FAILURES)

    def refusal(
        self, monitor: zmq.Socket[bytes] | None, address: str
    ) -> AuthenticationError | HubUnavailable | None:
        """An ``AuthenticationError`` if the hub refused a handshake since the last look;
        ``HubUnavailable`` if the handshake broke off because the hub went away."""
        if monitor is None:
            return None
        refused: Any = None
        while monitor.poll(0, zmq.POLLIN):
            event = recv_monitor_message(monitor)
            if event["event"] & _FAILURES:
                refused = event
        if refused is None:
            return None
        if not refused["event"] & zmq.EVENT_HANDSHAKE_FAILED_AUTH and not listening(address):
            # A hub killed mid-handshake breaks it off as a wrong key does; but then nothing
            # listens any more.
            return HubUnavailable(
                f"the hub at {address} went away during the connection's handshake and "
                "nothing listens there now: it stopped or crashed. Start it with 'dlhub-hpc "
                "hub start' (a stale hub.json of a killed hub is replaced), or check the "
                "address in the hub's hub.json (or --hub / $DLHUB_HPC_HUB)", address=address,
            )
        if not refused["event"] & zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            # No ZAP verdict: the hub could not even read the handshake, which is what a
            # wrong hub key (a stale record, or $DLHUB_HPC_HUB_KEY of another hub) does.
            self.last_refusal = AuthenticationError(
                f"the CurveZMQ handshake with the hub at {address} failed before it looked at "
                f"this client's key: {self.server_key} is probably not that hub's public key. "
                "Run 'dlhub-hpc keys hub-key' where the hub runs, then 'dlhub-hpc keys trust "
                f"{address} KEY' (or fix $DLHUB_HPC_HUB_KEY)",
                address=address, public_key=self.public_key, server_key=self.server_key,
            )
            return self.last_refusal
        self.last_refusal = AuthenticationError(
            f"the hub at {address} refused this client's key {self.public_key}: it does not "
            "know it. Ask the hub's admin to run 'dlhub-hpc keys add USER "
            f"{key_dir() / 'id.pub'}' (or the key above)",
            address=address, public_key=self.public_key,
        )
        return self.last_refusal

    @staticmethod
    def close(sock: zmq.Socket[bytes], monitor: zmq.Socket[bytes] | None) -> None:
        if monitor is not None:
            with contextlib.suppress(zmq.ZMQError):  # the socket may be gone already
                sock.disable_monitor()
            monitor.close(linger=0)


def listening(address: str, timeout: float = 1.0) -> bool:
    """Does anything accept connections at a ``tcp://`` or ``ipc://`` address now?"""
    parts = urlsplit(address)
    try:
        if parts.scheme == "ipc":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(timeout)
                probe.connect(address[len("ipc://"):])
            return True
        if parts.scheme == "tcp" and parts.hostname and parts.port:
            with socket.create_connection((parts.hostname, parts.port), timeout=timeout):
                return True
    except (OSError, ValueError):
        return False
    return True  # another transport: no way to tell, so trust the handshake's verdict


def hint(address: str, curve: ClientCurve) -> str:
    """What a timeout message adds when this client could not use CurveZMQ at all."""
    if curve.server_key_for(address) is None:
        return (" (no public key is known for this hub, so this client connected without "
                "CurveZMQ, which an authenticating hub ignores: get the key from the hub's "
                "admin and run 'dlhub-hpc keys trust ADDRESS KEY')")
    return ""
