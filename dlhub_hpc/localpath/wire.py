"""The local path's own small protocol, over one AF_UNIX SOCK_SEQPACKET connection.

Each message is one msgpack list, optionally with one file descriptor (SCM_RIGHTS):

- ``["register", token]`` -> ``["ok", proof]``: bind this connection to the identity the
  hub issued ``token`` to, on its CurveZMQ channel; ``proof`` (issued with it) shows the
  peer that it reached the hub, not a process that took the socket's name.
- ``["put"]`` + a sealed memfd -> ``["ok", ticket]``: hand an array to the hub.
- ``["get", ticket]`` -> ``["ok", size]`` + a memfd: take an array the hub issued.

Any refusal is ``["error", message]``.
"""

from __future__ import annotations

import array
import logging
import os
import secrets
import socket
from typing import Any

import msgpack

from dlhub_hpc.errors import LocalPathRefused

logger = logging.getLogger(__name__)

MAX_MESSAGE = 4096  # every message of this protocol is a few dozen bytes
_FD_SPACE = socket.CMSG_SPACE(array.array("i").itemsize)


def new_secret() -> str:
    """A fresh 128-bit secret (tokens, proofs, tickets, the socket's name)."""
    return secrets.token_hex(16)


def abstract_name() -> str:
    """A socket name in the abstract namespace nobody can take before the hub binds it."""
    return f"\0dlhub-hpc-{new_secret()}"


def boot_id() -> str:
    """This kernel's boot id: equal for processes on one node, different across nodes."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def send(sock: socket.socket, message: list[Any], fd: int | None = None) -> None:
    data = msgpack.packb(message, use_bin_type=True)
    if fd is None:
        sock.sendmsg([data])
    else:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])


def receive(sock: socket.socket) -> tuple[list[Any], int | None] | None:
    """One message and the descriptor that came with it (owned by the caller); None when
    the peer has gone. Extra descriptors are closed; a malformed message is refused."""
    data, ancillary, flags, _ = sock.recvmsg(MAX_MESSAGE, _FD_SPACE)
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % array.array("i").itemsize
            fds.extend(array.array("i", payload[:usable]))
    if not data and not fds:
        return None
    if len(fds) > 1 or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        raise LocalPathRefused("a local-path message was truncated or held more than one "
                               "descriptor")
    try:
        message = msgpack.unpackb(data, raw=False)
    except Exception:
        message = None
    if not isinstance(message, list) or not message or not isinstance(message[0], str):
        for fd in fds:
            os.close(fd)
        raise LocalPathRefused("a local-path message is not a [verb, ...] list")
    return message, (fds[0] if fds else None)


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer, as the kernel recorded them at connect (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, array.array("i").itemsize * 3)
    pid, uid, gid = array.array("i", raw)
    return pid, uid, gid
