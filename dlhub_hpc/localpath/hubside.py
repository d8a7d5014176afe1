"""What the hub's loop does with the local path: offers, and the protocol's hooks.

Callers ask for an offer with the control operation ``local_path`` (on their CurveZMQ
channel); workers get one (``LocalOffer``) when their Hello says they run on the hub's
host. A request whose arrays came by the path is answered by the path too; a batch goes
by the path only to a worker whose link is registered, else its arrays travel as frames
(a worker on another node).
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import Callable
from typing import Any

import numpy as np

from dlhub_hpc.errors import DlhubHpcError
from dlhub_hpc.localpath import wire
from dlhub_hpc.localpath.exchange import FdExchange
from dlhub_hpc.localpath.memfd import available, map_array, seal_array, whole_memfd
from dlhub_hpc.protocol import Batch, Bye, Hello, LocalOffer, Message, Reply, Request

logger = logging.getLogger(__name__)

_MAX_REMEMBERED = 100_000  # requests awaiting a reply by the path (a bound, not a target)


class Fetch:
    """The protocol's ``fetch`` hook for one received message: takes tickets its sender
    put, and counts them. Who the sender is is worked out only when a ticket comes."""

    __slots__ = ("_exchange", "_principal_of", "principal", "used")

    def __init__(self, exchange: FdExchange, principal_of: Callable[[], str]) -> None:
        self._exchange = exchange
        self._principal_of = principal_of
        self.principal = ""
        self.used = 0

    def __call__(self, ticket: str, dtype: np.dtype[Any], shape: tuple[int, ...]) -> Any:
        if not self.used:
            self.principal = self._principal_of()
        self.used += 1
        return map_array(self._exchange.take(ticket, self.principal), dtype, shape)


class Share:
    """The protocol's ``share`` hook for one sent message: arrays the hub holds as whole
    memfds go as tickets for ``principal``; any other array goes as a frame."""

    __slots__ = ("_exchange", "_principal", "used")

    def __init__(self, exchange: FdExchange, principal: str) -> None:
        self._exchange = exchange
        self._principal = principal
        self.used = 0

    def __call__(self, arr: np.ndarray) -> str | None:
        memfd = whole_memfd(arr)
        if memfd is None:
            return None
        self.used += 1
        return self._exchange.issue(memfd, self._principal)


class HubLocalPath:
    """The hub's side; every method but ``start``/``close`` runs on the broker's loop."""

    def __init__(self, enabled: bool, min_bytes: int) -> None:
        self.enabled = enabled and available()
        self.min_bytes = min_bytes
        self.exchange = FdExchange()
        self._host = socket.gethostname()
        self._boot = wire.boot_id()
        self._replies: dict[tuple[bytes, str], str] = {}  # (caller, request id) -> principal
        self._workers: dict[bytes, str] = {}  # worker routing id -> principal
        # (user, request-id prefix) of clients that hold a link: their large outputs come
        # back by the path even when their inputs were small.
        self._linked_clients: dict[tuple[str, str], None] = {}

    def __repr__(self) -> str:
        return f"HubLocalPath(enabled={self.enabled}, min_bytes={self.min_bytes})"

    def start(self) -> None:
        if not self.enabled:
            return
        try:
            self.exchange.start()
        except OSError as exc:
            logger.warning("local fast path off: cannot listen (%s)", exc)
            self.enabled = False

    def close(self) -> None:
        self.exchange.close()

    def _offer(self, principal: str) -> dict[str, Any]:
        token, proof = self.exchange.offer(principal)
        return {"socket": self.exchange.name, "token": token, "proof": proof,
                "boot_id": self._boot, "min_bytes": self.min_bytes}

    def caller_offer(self, args: dict[str, Any]) -> dict[str, Any]:
        """The control operation ``local_path``: an offer for the calling identity; with
        ``linked`` (the prefix of a client's request ids), that client now holds a link."""
        if not self.enabled:
            raise DlhubHpcError("this hub has no same-node fast path (HubConfig."
                                "local_fast_path is off, or this system has no memfds)")
        user, linked = str(args.get("caller", "")), args.get("linked")
        if not isinstance(linked, str) or not linked:
            return self._offer(_caller_principal(user))
        if not self.exchange.linked(_caller_principal(user)):
            raise DlhubHpcError("no local-path link of this identity is registered; open "
                                "one with the offer first")
        if len(self._linked_clients) < _MAX_REMEMBERED:
            self._linked_clients[(user, linked[:64])] = None
        return {"replies": True}

    def on_worker_message(self, identity: bytes, user: str, msg: Message) -> LocalOffer | None:
        """An offer for a worker whose Hello says it runs on this host; None for others
        (their arrays travel as frames). A worker's Bye forgets it."""
        if isinstance(msg, Bye):
            self._workers.pop(identity, None)
            return None
        if not self.enabled or not isinstance(msg, Hello):
            return None
        if msg.host != self._host:
            logger.debug("worker on %s: its arrays travel through the hub", msg.host)
            return None
        principal = _worker_principal(user, identity)
        self._workers[identity] = principal
        return LocalOffer(self._offer(principal))

    def sealed_for_workers(self, value: Any) -> Any:
        """``value`` (an input the hub read by reference) with its large arrays copied into
        sealed memfds, so that a batch hands them to a worker on this node by the path, not
        through CurveZMQ. Runs on a reference thread, never on the loop; a no-op while no
        worker here holds a link (then the copy would buy nothing)."""
        if not self.enabled or not self.workers_linked():
            return value
        if isinstance(value, np.ndarray):
            return self._sealed(value)
        if isinstance(value, dict):
            return {k: self._sealed(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._sealed(v) for v in value]
        return value

    def workers_linked(self) -> int:
        """How many workers on this node hold a link now (safe from any thread)."""
        return sum(self.exchange.linked(p) for p in list(self._workers.values()))

    def _sealed(self, value: Any) -> Any:
        if (not isinstance(value, np.ndarray) or value.nbytes < self.min_bytes
                or value.dtype.hasobject or whole_memfd(value) is not None):
            return value
        return map_array(seal_array(value), value.dtype, value.shape)

    def caller_fetch(self, user_of: Callable[[], str]) -> Fetch | None:
        if not self.enabled:
            return None
        return Fetch(self.exchange, lambda: _caller_principal(user_of()))

    def worker_fetch(self, identity: bytes, user_of: Callable[[], str]) -> Fetch | None:
        if not self.enabled:
            return None
        return Fetch(self.exchange, lambda: _worker_principal(user_of(), identity))

    def came_by_path(self, caller: bytes, msg: Message, fetch: Fetch) -> Message:
        """The request as the state is to see it, answered by the path too (its caller has
        a link: it used it). Never memoized: its key would hash the whole array on the
        hub's loop, and a cached answer would hold the worker's memfd open."""
        if not isinstance(msg, Request):
            return msg
        if len(self._replies) < _MAX_REMEMBERED:
            self._replies[(caller, msg.request_id)] = fetch.principal
        return dataclasses.replace(msg, cache=False)

    def from_linked_client(self, caller: bytes, user: str, msg: Message) -> None:
        """A request whose inputs did not use the path, from a client that said it holds a
        link: its large outputs go back by the path all the same."""
        if not self._linked_clients or not isinstance(msg, Request):
            return
        prefix = msg.request_id.rpartition("-")[0]
        if (user, prefix) in self._linked_clients and len(self._replies) < _MAX_REMEMBERED:
            self._replies[(caller, msg.request_id)] = _caller_principal(user)

    def reply_share(self, caller: bytes, msg: Message) -> Share | None:
        if not self._replies or not isinstance(msg, Reply):
            return None
        principal = self._replies.pop((caller, msg.request_id), None)
        return None if principal is None else Share(self.exchange, principal)

    def batch_share(self, worker: bytes, msg: Message) -> Share | None:
        if not isinstance(msg, Batch):
            return None
        principal = self._workers.get(worker)
        if principal is None or not self.exchange.linked(principal):
            return None
        return Share(self.exchange, principal)


def _caller_principal(user: str) -> str:
    return f"caller:{user}"


def _worker_principal(user: str, identity: bytes) -> str:
    return f"worker:{user}:{identity.hex()}"
