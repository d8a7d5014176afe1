"""The hub's end of the local path: a thread that trades memfd descriptors for tickets.

Who may do what is decided by the identities CurveZMQ authenticated, never by names on
this node: a connection acts for the identity whose one-time token (handed out on that
identity's CurveZMQ channel) it presented; a ticket it puts is taken only from a message
of that identity, and a ticket the hub issues is handed only to a connection of the
identity it was issued to. Tickets are 128-bit secrets, used once, and expire. The
socket is in the abstract namespace (reachable from a bubblewrap sandbox that shares the
network namespace, where a path socket would need a bind); listing its name in
/proc/net/unix gives a process nothing without a token.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import resource
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dlhub_hpc.errors import LocalPathRefused
from dlhub_hpc.localpath import wire
from dlhub_hpc.localpath.memfd import Memfd, check_sealed

logger = logging.getLogger(__name__)

TICKET_TTL = 60.0  # seconds a ticket waits for its taker
MAX_HELD = 64  # tickets one identity may have waiting at once, each way
MAX_CONNECTIONS = 1024  # and never more than a quarter of the hub's descriptor limit
MAX_PER_UID = 256  # connections from one Unix user (a node's ranks of one job share it)
REGISTER_TIMEOUT = 5.0  # seconds a new connection has to present its token
ACCEPT_BACKOFF = 0.5  # seconds accept rests when the hub is out of descriptors


@dataclass(slots=True)
class _Held:
    memfd: Memfd
    principal: str
    expires: float


@dataclass(slots=True)
class _Conn:
    sock: socket.socket
    pid: int
    uid: int
    since: float  # when accepted: it must register within REGISTER_TIMEOUT
    principal: str | None = None


@dataclass
class _Books:
    """The tables, under one lock: the loop thread and the exchange thread both use them."""

    tokens: dict[str, tuple[str, str, float]] = field(default_factory=dict)
    inbox: dict[str, _Held] = field(default_factory=dict)  # put by peers, taken by the loop
    outbox: dict[str, _Held] = field(default_factory=dict)  # issued by the loop, got by peers
    links: Counter[str] = field(default_factory=Counter)  # live registered connections


class FdExchange:
    """Serves one abstract AF_UNIX socket; ``offer``/``take``/``issue`` are the loop's side."""

    def __init__(self, ttl: float = TICKET_TTL, max_held: int = MAX_HELD,
                 clock: Callable[[], float] = time.monotonic,
                 max_per_uid: int = MAX_PER_UID,
                 register_timeout: float = REGISTER_TIMEOUT) -> None:
        self.name = wire.abstract_name()
        self._ttl, self._max_held, self._clock = ttl, max_held, clock
        self._max_per_uid, self._register_timeout = max_per_uid, register_timeout
        self._resume_accept = 0.0  # clock time accept may run again after running out
        self._lock = threading.Lock()
        self._books = _Books()
        self.refused = 0  # refusals of either side, for the hub's status
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def __repr__(self) -> str:
        return f"FdExchange(name={self.name[1:]!r})"

    # -- the loop's side --

    def offer(self, principal: str) -> tuple[str, str]:
        """A one-time token (and the hub's proof) for ``principal`` to register a link."""
        token, proof = wire.new_secret(), wire.new_secret()
        with self._lock:
            self._sweep()
            self._books.tokens[token] = (principal, proof, self._clock() + self._ttl)
        return token, proof

    def linked(self, principal: str) -> bool:
        with self._lock:
            return self._books.links[principal] > 0

    def take(self, ticket: str, principal: str) -> Memfd:
        """The memfd ``principal`` put under ``ticket``; the ticket is spent either way."""
        with self._lock:
            held = self._books.inbox.pop(ticket, None)
            ok = held is not None and held.expires > self._clock() and hmac.compare_digest(
                held.principal, principal)
            if not ok:
                self.refused += 1
        if not ok or held is None:
            raise LocalPathRefused("a local-path ticket in this message is unknown, used "
                                   "already, expired or another caller's; send the array again")
        return held.memfd

    def issue(self, memfd: Memfd, principal: str) -> str:
        """A ticket by which a link of ``principal`` (and nobody else) gets ``memfd``."""
        ticket = wire.new_secret()
        with self._lock:
            self._sweep()
            self._books.outbox[ticket] = _Held(memfd, principal, self._clock() + self._ttl)
        return ticket

    def held(self) -> int:
        with self._lock:
            return len(self._books.inbox) + len(self._books.outbox)

    def _sweep(self) -> None:  # under the lock
        now = self._clock()
        books = self._books
        for table in (books.inbox, books.outbox):
            for key in [k for k, v in table.items() if v.expires <= now]:
                del table[key]
        for key in [k for k, v in books.tokens.items() if v[2] <= now]:
            del books.tokens[key]

    # -- the exchange thread --

    def start(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        listener.bind(self.name)
        listener.listen(64)
        listener.setblocking(False)
        self._listener = listener
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, name="hub-local-path", daemon=True)
        self._thread.start()
        logger.info("local fast path listening on @%s", self.name[1:])

    def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join(timeout=5)
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._thread = None
        with self._lock:
            self._books = _Books()

    def _serve(self) -> None:
        assert self._listener is not None
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        conns: dict[int, _Conn] = {}
        try:
            while not self._stopping.is_set():
                # wake at least this often to drop connections that never registered
                for key, _ in sel.select(timeout=min(1.0, self._register_timeout)):
                    if key.fileobj is self._listener:
                        self._accept(sel, conns)
                    elif key.data is not None:
                        self._on_readable(sel, conns, key.data)
                self._expire_unregistered(sel, conns)
                self._resume_accepting(sel)
        finally:
            for conn in list(conns.values()):
                self._drop(sel, conns, conn)
            sel.close()
            self._listener.close()

    def _accept(self, sel: selectors.BaseSelector, conns: dict[int, _Conn]) -> None:
        try:
            sock, _ = self._listener.accept()  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # out of descriptors (EMFILE, ENFILE) or memory: rest, go on
            logger.warning("local fast path cannot accept (%s); pausing %.1f s",
                           exc, ACCEPT_BACKOFF)
            self._pause_accepting(sel, conns)
            return
        try:
            pid, uid, _gid = wire.peer_credentials(sock)
        except OSError:
            sock.close()
            return
        if len(conns) >= _max_connections() or sum(
                c.uid == uid for c in conns.values()) >= self._max_per_uid:
            self.refused += 1
            sock.close()
            return
        sock.setblocking(False)
        conn = _Conn(sock, pid, uid, self._clock())
        conns[sock.fileno()] = conn
        sel.register(sock, selectors.EVENT_READ, conn)

    def _pause_accepting(self, sel: selectors.BaseSelector, conns: dict[int, _Conn]) -> None:
        """Stop polling the listener for a while (it would wake the thread at once, over
        and over), and free the oldest connection that has not registered."""
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(self._listener)  # type: ignore[arg-type]
        self._resume_accept = self._clock() + ACCEPT_BACKOFF
        waiting = [c for c in conns.values() if c.principal is None]
        if waiting:
            self._drop(sel, conns, min(waiting, key=lambda c: c.since))

    def _resume_accepting(self, sel: selectors.BaseSelector) -> None:
        if self._resume_accept and self._clock() >= self._resume_accept:
            self._resume_accept = 0.0
            sel.register(self._listener, selectors.EVENT_READ, None)  # type: ignore[arg-type]

    def _expire_unregistered(self, sel: selectors.BaseSelector,
                             conns: dict[int, _Conn]) -> None:
        deadline = self._clock() - self._register_timeout
        for conn in [c for c in conns.values() if c.principal is None and c.since <= deadline]:
            logger.debug("local connection from pid %s uid %s did not register in time",
                         conn.pid, conn.uid)
            self._drop(sel, conns, conn)

    def _drop(self, sel: selectors.BaseSelector, conns: dict[int, _Conn], conn: _Conn) -> None:
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(conn.sock)
        conns.pop(conn.sock.fileno(), None)
        if conn.principal is not None:
            with self._lock:
                self._books.links[conn.principal] -= 1
                if self._books.links[conn.principal] <= 0:
                    del self._books.links[conn.principal]
        conn.sock.close()

    def _on_readable(self, sel: selectors.BaseSelector, conns: dict[int, _Conn],
                     conn: _Conn) -> None:
        try:
            got = wire.receive(conn.sock)
            if got is None:
                self._drop(sel, conns, conn)
                return
            reply, out = self._answer(conn, *got)  # it owns (closes or keeps) the fd
            # ``out`` is held until sent: its descriptor closes with the last reference.
            wire.send(conn.sock, reply, None if out is None else out.fd)
        except LocalPathRefused as exc:
            self.refused += 1
            self._reply_or_drop(sel, conns, conn, ["error", exc.message])
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:  # the peer went, or will not read its answers: it loses its link
            logger.debug("local link of %s dropped: %s", conn.principal, exc)
            self._drop(sel, conns, conn)

    def _reply_or_drop(self, sel: selectors.BaseSelector, conns: dict[int, _Conn],
                       conn: _Conn, reply: list[Any]) -> None:
        try:
            wire.send(conn.sock, reply)
        except OSError:
            self._drop(sel, conns, conn)

    def _answer(self, conn: _Conn, message: list[Any], fd: int | None,
                ) -> tuple[list[Any], Memfd | None]:
        verb, args = message[0], message[1:]
        if verb == "register" and fd is None and len(args) == 1 and isinstance(args[0], str):
            return self._register(conn, args[0]), None
        if conn.principal is None:
            if fd is not None:
                os.close(fd)
            raise LocalPathRefused("register this connection with a token first")
        if verb == "put" and fd is not None and not args:
            return ["ok", self._put(conn.principal, fd)], None
        if verb == "get" and fd is None and len(args) == 1 and isinstance(args[0], str):
            memfd = self._get(conn.principal, args[0])
            return ["ok", memfd.size], memfd
        if fd is not None:
            os.close(fd)
        raise LocalPathRefused(f"unknown local-path request {verb!r}"[:80])

    def _register(self, conn: _Conn, token: str) -> list[Any]:
        if conn.principal is not None:
            raise LocalPathRefused("this connection is registered already")
        with self._lock:
            entry = self._books.tokens.pop(token, None)
            if entry is None or entry[2] <= self._clock():
                raise LocalPathRefused("the local-path token is unknown, used or expired; "
                                       "ask the hub for a new one")
            principal, proof, _ = entry
            self._books.links[principal] += 1
        conn.principal = principal
        logger.debug("local link for %s from pid %s uid %s", principal, conn.pid, conn.uid)
        return ["ok", proof]

    def _put(self, principal: str, fd: int) -> str:
        try:
            size = check_sealed(fd)
        except LocalPathRefused:
            os.close(fd)
            raise
        memfd = Memfd(fd, size)
        ticket = wire.new_secret()
        with self._lock:
            self._sweep()
            if sum(h.principal == principal for h in self._books.inbox.values()) >= self._max_held:
                raise LocalPathRefused(f"{self._max_held} arrays of this caller wait for their "
                                       "messages already; send those first")
            self._books.inbox[ticket] = _Held(memfd, principal, self._clock() + self._ttl)
        return ticket

    def _get(self, principal: str, ticket: str) -> Memfd:
        with self._lock:
            held = self._books.outbox.pop(ticket, None)
        if held is None or held.expires <= self._clock() or not hmac.compare_digest(
                held.principal, principal):
            raise LocalPathRefused("the local-path ticket is unknown, used already, expired "
                                   "or another caller's")
        return held.memfd


def _max_connections() -> int:
    """MAX_CONNECTIONS, or a quarter of the descriptors this process may hold if fewer:
    the hub needs the rest for its own sockets, files and workers."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, soft // 4))
