"""The caller's and the worker's end of the local path (see ``exchange``)."""

from __future__ import annotations

import hmac
import logging
import os
import socket
import threading
from typing import Any

import numpy as np

from dlhub_hpc.errors import DlhubHpcError, LocalPathRefused
from dlhub_hpc.localpath import wire
from dlhub_hpc.localpath.memfd import Memfd, available, map_array, seal_array, whole_memfd
from dlhub_hpc.protocol import BatchResult, Tag, encode, peek

logger = logging.getLogger(__name__)

_told: set[str] = set()  # why the fast path did not apply, each said once per process


def say_once(why: str) -> None:
    if why not in _told:
        _told.add(why)
        logger.info("same-node fast path not used: %s; large arrays go through the hub's "
                    "encrypted connection", why)


class LocalLink:
    """One registered connection to the hub's exchange; thread-safe."""

    def __init__(self, sock: socket.socket, min_bytes: int) -> None:
        self._sock = sock
        self.min_bytes = min_bytes
        self.gone = False  # the hub's end closed (a restarted hub): arrays ride in messages
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalLink(min_bytes={self.min_bytes})"

    @classmethod
    def connect(cls, offer: dict[str, Any], timeout: float = 10.0) -> LocalLink:
        """Register with the hub's exchange as ``offer`` (from the CurveZMQ channel) says;
        ``LocalPathRefused`` when the hub's answer does not carry the offer's proof (a
        process other than the hub holds the name), ``OSError`` when it cannot be reached."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(timeout)
            sock.connect(offer["socket"])
            wire.send(sock, ["register", offer["token"]])
            got = wire.receive(sock)
            if got is None or len(got[0]) != 2 or got[0][0] != "ok" or not hmac.compare_digest(
                    str(got[0][1]), offer["proof"]):
                raise LocalPathRefused("the local-path socket did not prove it is the hub's")
        except BaseException:
            sock.close()
            raise
        return cls(sock, int(offer.get("min_bytes", 2**18)))

    def close(self) -> None:
        with self._lock:
            self._sock.close()

    def _call(self, message: list[Any], fd: int | None = None) -> tuple[Any, int | None]:
        with self._lock:
            try:
                wire.send(self._sock, message, fd)
                got = wire.receive(self._sock)
            except OSError as exc:  # a broken pipe, a reset, no answer within the timeout
                self.gone = True
                raise LocalPathRefused(f"the local-path connection failed: {exc}") from None
        if got is None:
            self.gone = True
            raise LocalPathRefused("the hub closed the local-path connection")
        (verb, *rest), out = got
        if verb != "ok" or len(rest) != 1:
            if out is not None:
                os.close(out)
            raise LocalPathRefused(f"the hub refused: {rest[0] if rest else verb}"[:300])
        return rest[0], out

    def put(self, memfd: Memfd) -> str:
        ticket, _ = self._call(["put"], memfd.fd)
        return str(ticket)

    def get(self, ticket: str) -> Memfd:
        size, fd = self._call(["get", ticket])
        if fd is None or not isinstance(size, int):
            raise LocalPathRefused("the hub sent no descriptor for a local-path ticket")
        return Memfd(fd, size)

    def share(self, arr: np.ndarray) -> str | None:
        """A ticket for ``arr`` (the protocol's ``share`` hook), or None: below ``min_bytes``,
        or when the hub refuses it (then the array goes in the message, as between nodes).
        An array mapped from a whole memfd goes as it is; any other is sealed in a new one."""
        if arr.nbytes < self.min_bytes or self.gone:
            return None
        memfd = whole_memfd(arr) or seal_array(arr)
        try:
            return self.put(memfd)
        except LocalPathRefused as exc:
            # The hub holds as many of this peer's arrays as it takes until their messages
            # come (many in flight), or its end went away: this one rides in its message.
            logger.debug("an array goes in its message, not by the link: %s", exc.message)
            return None

    def fetch(self, ticket: str, dtype: np.dtype[Any], shape: tuple[int, ...]) -> Any:
        """The array the hub issued ``ticket`` for (the protocol's ``fetch`` hook)."""
        return map_array(self.get(ticket), dtype, shape)


def open_link(offer: Any) -> LocalLink | None:
    """A link from the hub's ``offer``, or None (said once) where the path cannot apply:
    the hub has it off, the caller is on another node, no memfds, the socket unreachable."""
    if not isinstance(offer, dict) or not offer.get("socket"):
        say_once("the hub does not offer it")
        return None
    if not available():
        say_once("this system has no sealed memfds")
        return None
    if offer.get("boot_id") != wire.boot_id():
        say_once("the hub runs on another node")
        return None
    try:
        return LocalLink.connect(offer)
    except (OSError, LocalPathRefused, KeyError, TypeError) as exc:
        say_once(f"its socket cannot be used ({exc})")
        return None


def refused_batch(sock: Any, frames: list[Any], error: DlhubHpcError) -> bool:
    """Answer a batch whose arrays could not be taken (an expired ticket, a link the hub
    dropped) with ``error`` for all its items, so its callers hear why at once."""
    peeked = peek(frames)
    if peeked is None or peeked[0] != Tag.BATCH or type(peeked[1]) is not int:
        return False
    sock.send_multipart(encode(BatchResult(peeked[1], [[False, error.to_wire()]])))
    return True
