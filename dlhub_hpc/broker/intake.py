"""Callers' messages into the hub's loop (``BrokerServer`` inherits it): who sent one,
its bearer token, its references and streams, then the state or a control operation.

A message past ``HubConfig.large_message_bytes`` goes by the ``LargeLane`` instead: it is
decoded and its input checked off the loop's thread, and the loop goes on serving others
meanwhile; one past ``max_message_bytes``, or past the lane's backlog, is refused.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, cast

import zmq

from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.broker.events import Checked, FromClient, InputPlan
from dlhub_hpc.broker.lane import (
    LargeLane,
    check_input,
    decode_large,
    expand,
    message_size,
    too_large,
)
from dlhub_hpc.broker.pipeline import PIPELINE_IDENTITY
from dlhub_hpc.broker.sending import LOCAL_PREFIX, ActionSender
from dlhub_hpc.broker.streams import is_chunk
from dlhub_hpc.broker.tracing import request_in as tracing_in
from dlhub_hpc.broker.tracing import tracing
from dlhub_hpc.errors import DlhubHpcError, Overloaded, ProtocolError
from dlhub_hpc.localpath.hubside import Fetch
from dlhub_hpc.protocol import Control, Message, Request
from dlhub_hpc.protocol.bundle import parts
from dlhub_hpc.security.tokens import TokenStore
from dlhub_hpc.security.zap import ServerAuth, user_id

logger = logging.getLogger(__name__)


class CallerIntake(ActionSender):
    """The loop's handlers for what clients and in-process callers send."""

    config: HubConfig
    auth: ServerAuth | None
    unauthenticated: tuple[str, str]
    tokens: TokenStore | None
    _lane: LargeLane
    _large_bytes: int

    # -- what the server provides --

    def _decode(self, frames: list[Any], fetch: Fetch | None = None) -> tuple[bytes, Message]:
        raise NotImplementedError

    def _on_control(self, identity: bytes, msg: Control, user: str = "") -> None:
        raise NotImplementedError

    def _on_bad_message(self, sock: zmq.Socket[bytes], frames: list[Any],
                        exc: Exception) -> None:
        raise NotImplementedError

    def _answer_bad(self, sock: zmq.Socket[bytes], frames: list[Any],
                    error: DlhubHpcError) -> bool:
        raise NotImplementedError

    # -- callers' messages --

    def _on_client_frames(self, frames: list[Any]) -> None:
        self._on_caller_frames(frames, None)

    def _on_local_frames(self, frames: list[Any]) -> None:
        # Only code in this process reaches the inproc socket: it acts as the hub's admin.
        self._on_caller_frames(frames, self.auth.local_user if self.auth is not None else "")

    def _on_caller_frames(self, frames: list[Any], local_user: str | None) -> None:
        bundled = parts(frames[1]) if len(frames) == 2 else None
        if bundled is None:
            self._on_caller_message_frames(frames, local_user)
            return
        self.state.count("bundles_in")
        if local_user is None:  # its replies may come bundled too
            self._bundles.learn(frames[0].bytes)
        sock = self._clients if local_user is None else self._local
        assert sock is not None
        for part in bundled:  # each as if it came alone: a bad one fails alone
            one = [frames[0], part]
            try:
                self._on_caller_message_frames(one, local_user)
            except Exception as exc:
                self._on_bad_message(sock, one, exc)

    def _on_caller_message_frames(self, frames: list[Any], local_user: str | None) -> None:
        if (len(frames) >= 2 and message_size(frames) > self._large_bytes
                and not is_chunk(frames)):
            sock = self._clients if local_user is None else self._local
            assert sock is not None
            self._on_large(sock, frames, local_user)
            return
        fetch = None if local_user is not None else self.fast.caller_fetch(
            lambda: user_id(frames[1]) if self.auth is not None else "")
        decoded = self._decode(frames, fetch)
        caller = self._caller(frames, local_user)
        if caller is not None:
            if fetch is not None and fetch.used:  # answer it by the same path
                self.state.count("local_path_in", fetch.used)
                decoded = decoded[0], self.fast.came_by_path(caller[0], decoded[1], fetch)
            elif fetch is not None:  # a linked client's large outputs come by the path too
                self.fast.from_linked_client(caller[0], caller[1], decoded[1])
            self._on_caller_message(*caller, decoded[1])


    def _caller(self, frames: list[Any], local_user: str | None) -> tuple[bytes, str] | None:
        """Who sent ``frames``: its routing id in the state's namespace, and its user."""
        identity = frames[0].bytes
        if local_user is not None:
            return LOCAL_PREFIX + identity, local_user  # one namespace for both sockets
        if identity == PIPELINE_IDENTITY or identity.startswith(LOCAL_PREFIX):
            # A peer may choose its own routing id: never let one pose as the hub's pipeline
            # runner, whose step answers would feed other callers' pipelines, or as a
            # caller in the hub's own process.
            self.state.count("malformed_frames")
            logger.warning("dropped a message from a client posing as the hub itself")
            return None
        return identity, (user_id(frames[1]) if self.auth is not None
                          else self.unauthenticated[0])

    def _on_caller_message(self, identity: bytes, user: str, msg: Message,
                           checked: Checked | None = None) -> None:
        if self.tokens is not None:  # first: every later step acts as the token's identity
            try:
                user = self.tokens.acting_user(user, msg)
            except DlhubHpcError as exc:
                self._reply_error(identity, getattr(msg, "request_id", ""), exc)
                return
        if self._references.takes(identity, user, msg, checked):
            return  # back here once its references are read
        streamed = self._streams.from_caller(identity, user, msg, checked,
                                             self.state.input_plan, self._send_to)
        if streamed is None:  # a transfer's step: relayed
            return
        msg, checked = streamed
        if isinstance(msg, Request):
            if tracing():
                tracing_in(msg, user)
            self._apply(self.state.handle(FromClient(identity, msg, user, checked),
                                          time.monotonic()))
        elif isinstance(msg, Control):
            self._on_control(identity, msg, user)
        else:
            self.state.count("unexpected_messages")

    # -- the large-message lane: decode and input check off the loop thread --

    def _on_large(self, sock: zmq.Socket[bytes], frames: list[Any],
                  local_user: str | None) -> None:
        """Refuse a message over the size limit (or past the lane's backlog); hand any
        other large one to the lane, and go on serving others while it is checked."""
        caller = self._caller(frames, local_user)
        if caller is None:
            return
        size, limit = message_size(frames), self.config.max_message_bytes
        error: DlhubHpcError | None = None
        if size > limit:  # the parts passed MAXMSGSIZE one by one, but not their sum
            self.state.count("too_large")
            error = too_large(size, limit, "HubConfig.max_message_bytes")
        elif not self._lane.has_room(size):
            self.state.count("large_overloaded")
            error = Overloaded(
                f"the hub is checking {self._lane.pending_bytes} bytes of large requests "
                f"already (the bound is {self.config.large_backlog_bytes}); retry later",
                queued=self._lane.pending_bytes,
            )
        if error is not None:
            logger.warning("refused a message of %s bytes: %s", size, error.message)
            self._answer_bad(sock, frames, error)
            return
        large = _Large(sock, frames, caller, size)
        self._lane.reserve(size)
        self._lane.submit(lambda: decode_large(frames[1:]),
                          lambda msg: self._on_large_decoded(large, msg))

    def _on_large_decoded(self, large: _Large, msg: Message | Exception) -> None:
        if isinstance(msg, Exception):
            self._large_failed(large, msg)
            return
        plan = self.state.input_plan(large.caller[1], msg) if isinstance(msg, Request) else None
        if plan is None:  # not a request, or one the state checks itself (or refuses)
            if isinstance(msg, Request):  # its payload may still be encoded
                self._lane.submit(lambda: expand(msg),
                                  lambda req: self._on_large_done(large, req))
            else:
                self._on_large_done(large, msg)
            return
        req = cast(Request, msg)
        self._lane.submit(lambda: check_input(plan, req),
                          lambda checked: self._on_large_checked(large, req, plan, checked))

    def _on_large_checked(self, large: _Large, req: Request, plan: InputPlan,
                          checked: Checked | Exception) -> None:
        if isinstance(checked, ProtocolError):
            self._large_failed(large, checked)
            return
        if isinstance(checked, Exception):
            checked = Checked(plan.declared, error=DlhubHpcError(
                f"the input could not be checked: {type(checked).__name__}: {checked}"))
        now = self.state.input_plan(large.caller[1], req)
        if now is None or now.declared is not plan.declared:  # changed while it was checked
            self._on_large_decoded(large, req)
            return
        self._on_large_done(large, req, checked)

    def _on_large_done(self, large: _Large, msg: Message | Exception,
                       checked: Checked | None = None) -> None:
        if isinstance(msg, Exception):
            self._large_failed(large, msg)
            return
        self._lane.release(large.size)
        self._on_caller_message(*large.caller, msg, checked)

    def _large_failed(self, large: _Large, exc: Exception) -> None:
        """A large message that did not decode: through the same boundary as any other."""
        self._lane.release(large.size)
        self._on_bad_message(large.sock, large.frames, exc)


@dataclass(frozen=True, slots=True)
class _Large:
    """A large caller message on its way through the lane."""

    sock: zmq.Socket[bytes]  # where it came in: a bad one is answered there
    frames: list[Any]
    caller: tuple[bytes, str]  # its routing id in the state's namespace, and its user
    size: int
