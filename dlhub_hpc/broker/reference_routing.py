"""Where the hub's loop hands requests with references, and results with ``result_to``,
to threads of their own, and takes them back.

The loop calls ``takes`` on each caller request and ``takes_reply`` on each reply; a
request it takes comes back through ``deliver`` with its references replaced by their
content and its input checked (off the loop, like the large-message lane's), or is
answered with a typed error; a reply it takes is sent once its value is written. Every
continuation runs on the loop (``run_finished``, after ``wake``), so only the loop touches
the broker's state.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, TypeVar

from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.broker.events import Checked, InputPlan
from dlhub_hpc.broker.handoff import Handoff
from dlhub_hpc.broker.lane import check_input
from dlhub_hpc.broker.references import References, ReferenceSettings
from dlhub_hpc.errors import DlhubHpcError, Overloaded
from dlhub_hpc.protocol import Encoded, Message, Reply, Request
from dlhub_hpc.references import URLRef, has_references

logger = logging.getLogger(__name__)

T = TypeVar("T")
_THREADS = 4  # file reads, input checks and result writes wait on I/O: a few side by side
_URL_THREADS = 8  # downloads, apart: a slow server holds none of the file threads
# Requests of one caller resolving at once, per kind: fewer than the threads, so one
# caller never holds them all; its further requests wait their turn behind its own,
# up to MAX_WAITING, past which they are Overloaded at once.
MAX_PER_USER = {"files": 2, "urls": 2}
MAX_WAITING = 1000
Deliver = Callable[[bytes, str, Request, Checked | None], None]


class ReferenceRouting:
    """The loop's side of references: which requests and replies go by them, and back."""

    def __init__(self, config: HubConfig, wake: Callable[[], None], admin: Callable[[], str],
                 plan: Callable[[str, Request], InputPlan | None], deliver: Deliver,
                 send: Callable[[bytes, Message], None]) -> None:
        self._config = config
        self._admin = admin  # the hub's admin identity, known once the hub runs
        self._plan = plan
        self._deliver = deliver
        self._send = send
        self._refs: References | None = None  # made on first use
        # A DlhubHpcError is the caller's answer; anything else is a fault to log.
        self._handoff = Handoff(
            wake, {_pool("files"): _THREADS, _pool("urls"): _URL_THREADS}, DlhubHpcError,
            logger, "a reference could not be resolved or written")
        self._running: Counter[tuple[str, str]] = Counter()  # (kind, user): loop thread only
        self._waiting: dict[tuple[str, str], deque[Callable[[], None]]] = {}  # loop thread
        self._results_to: dict[tuple[bytes, str], tuple[str, str]] = {}  # loop thread only
        # What the content read becomes before it goes on (on the reading thread): the
        # server has large arrays put in memfds for workers on its node (localpath).
        self.prepare: Callable[[Any], Any] = _as_read

    def __repr__(self) -> str:
        return f"ReferenceRouting(pending_results={len(self._results_to)})"

    # -- loop thread --

    def takes(self, identity: bytes, user: str, msg: Message, checked: Checked | None) -> bool:
        """Take ``msg`` if it is a request with references or a ``result_to``."""
        if not isinstance(msg, Request):
            return False
        refs = not isinstance(msg.payload, Encoded) and has_references(msg.payload)
        if not refs and msg.result_to is None:
            return False
        key = ("urls" if refs and _has_url(msg.payload) else "files", user)

        def then(out: Any) -> None:
            self._finished(key)
            self._resolved(identity, user, msg, checked, out)

        def start() -> None:
            self._running[key] += 1
            self._submit(lambda: self.prepare(
                self._references().resolve(msg.payload, user, msg.result_to)), then, key[0])

        if self._running[key] < MAX_PER_USER[key[0]]:
            start()
            return True
        waiting = self._waiting.setdefault(key, deque())
        if len(waiting) >= MAX_WAITING:
            busy = Overloaded(f"{MAX_WAITING} of your requests with references wait to be "
                              "resolved already; wait for their answers, then send more",
                              limit=MAX_WAITING)
            self._send(identity, Reply(msg.request_id, False, None, busy.to_wire()))
        else:
            waiting.append(start)
        return True

    def _finished(self, key: tuple[str, str]) -> None:
        """One resolution of ``key`` ended: the caller's next waiting one starts."""
        self._running[key] -= 1
        if self._running[key] <= 0:
            del self._running[key]
        waiting = self._waiting.get(key)
        if waiting:
            waiting.popleft()()
            if not waiting:
                del self._waiting[key]

    def _resolved(self, identity: bytes, user: str, req: Request, checked: Checked | None,
                  out: Any) -> None:
        if isinstance(out, Exception):
            self._send(identity, Reply(req.request_id, False, None, _error(out).to_wire()))
            return
        if req.result_to is not None:
            self._results_to[(identity, req.request_id)] = (user, req.result_to)
        resolved = dataclasses.replace(req, payload=out, result_to=None)
        plan = None if out is req.payload else self._plan(user, resolved)
        if plan is None:  # nothing was read (the state checks it), or it fails before
            self._deliver(identity, user, resolved, checked if out is req.payload else None)
            return

        def then(result: Checked | Exception) -> None:
            if isinstance(result, Exception):
                result = Checked(plan.declared, error=_error(result))
            now = self._plan(user, resolved)
            same = now is not None and now.declared is plan.declared
            self._deliver(identity, user, resolved, result if same else None)

        self._submit(lambda: check_input(plan, resolved), then)

    def takes_reply(self, identity: bytes, msg: Message) -> bool:
        """Take a reply whose request named ``result_to``: send it once written."""
        if not self._results_to or not isinstance(msg, Reply):
            return False
        target = self._results_to.pop((identity, msg.request_id), None)
        if target is None:
            return False
        if not msg.ok:
            self._send(identity, msg)
            return True
        user, path = target

        def then(out: Any) -> None:
            if isinstance(out, Exception):
                self._send(identity, Reply(msg.request_id, False, None, _error(out).to_wire(),
                                           msg.timing, msg.warning))
            else:
                self._send(identity, Reply(msg.request_id, True, out, None, msg.timing,
                                           msg.warning))

        self._submit(lambda: self._references().write(path, user, msg.value), then)
        return True

    def run_finished(self) -> None:
        """Run the continuations of finished work (loop thread)."""
        self._handoff.run_finished()

    def close(self) -> None:
        self._handoff.close()

    def _references(self) -> References:
        """Made on a reference thread at first use (it reads the CA bundle); two threads
        making one each at once is harmless."""
        if self._refs is None:
            self._refs = References(ReferenceSettings.of(self._config, self._admin()))
        return self._refs

    def _submit(self, work: Callable[[], T], then: Callable[[Any], None],
                kind: str = "files") -> None:
        self._handoff.submit(_pool(kind), work, then)


def _pool(kind: str) -> str:
    """The thread pool (and its threads' name prefix) for references of ``kind``."""
    return f"hub-references-{kind}"


def _has_url(value: Any) -> bool:
    kind = type(value)
    if kind is URLRef:
        return True
    if kind is list:
        return any(_has_url(v) for v in value)
    if kind is dict:
        return any(_has_url(v) for v in value.values())
    return False


def _as_read(value: Any) -> Any:
    return value


def _error(exc: Exception) -> DlhubHpcError:
    if isinstance(exc, DlhubHpcError):
        return exc
    return DlhubHpcError(f"the hub could not use a reference ({type(exc).__name__}: {exc}); "
                         "please report it with the hub's log")
