"""The hub's side of chunked transfers: what the server's loop asks of the ``Relay``.

The server calls in at four places: a caller's request whose input is a ``StreamRef``
(opened here, its input checked by dtype and shape alone), a worker's batch result with
such outputs (opened here), each action the state sends out (a ``Batch`` or ``Reply``
holding a ref binds its transfer to that receiver), and every ``Chunk``, ``Credit`` or
``Abort`` (relayed). The state sees a streamed input as its ref: it is never memoized.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.broker.events import Checked, InputPlan
from dlhub_hpc.errors import DlhubHpcError, InvalidInput
from dlhub_hpc.protocol import (
    Abort,
    Batch,
    BatchResult,
    Chunk,
    Credit,
    Message,
    Reply,
    Request,
    StreamRef,
    Tag,
    peek,
)
from dlhub_hpc.servable.types import check_value
from dlhub_hpc.transfer.relay import Peer, Relay, Send

logger = logging.getLogger(__name__)

TRANSFER_MESSAGES = (Chunk, Credit, Abort)
_CHUNK_HEADER_MAX = 256  # a chunk's header holds an id, an offset and an array's ext record


def is_chunk(frames: list[Any]) -> bool:
    """Whether received ``frames`` (routing id first) are a chunk: its bytes are a raw
    frame, so it is decoded on the loop however large, never on the large-message lane."""
    if len(frames) != 3 or len(frames[1]) > _CHUNK_HEADER_MAX:
        return False
    peeked = peek(frames[1:])
    return peeked is not None and peeked[0] == Tag.CHUNK


def relay_of(config: HubConfig) -> Relay:
    return Relay(window_bytes=config.transfer_window_bytes,
                 chunk_bytes=config.transfer_chunk_bytes, timeout=config.transfer_timeout,
                 max_bytes=config.max_transfer_bytes)


def check_streamed(plan: InputPlan, ref: StreamRef) -> DlhubHpcError | None:
    """Check a streamed input against what the method declares, by its dtype and shape
    alone (on a stand-in array that holds no memory); None when it passes as sent."""
    fake = as_strided(np.zeros(1, dtype=np.dtype(ref.dtype)), shape=ref.shape,
                      strides=(0,) * len(ref.shape), writeable=False)
    try:
        checked = check_value(plan.declared, fake)
    except DlhubHpcError as exc:
        return exc
    if checked is not fake:  # it would be converted: that takes the whole array here
        return InvalidInput(
            f"the input should be {plan.declared.describe()}; a streamed array is not "
            f"converted, so send it as that (it is {ref.dtype}, shape {list(ref.shape)})",
            path="input")
    return None


SendTo = Callable[[bool, bytes, Message], None]  # (to a worker?, routing id, message)
PlanOf = Callable[[str, Request], InputPlan | None]


class HubStreams:
    """The relay, and the hooks the broker's loop calls."""

    def __init__(self, config: HubConfig) -> None:
        self.relay = relay_of(config)

    def __repr__(self) -> str:
        return f"HubStreams({self.relay!r})"

    def from_caller(self, identity: bytes, user: str, msg: Message, checked: Checked | None,
                    plan_of: PlanOf, send: SendTo) -> tuple[Message, Checked | None] | None:
        """A caller's message: a transfer's step is relayed (None); a request with a
        streamed input opens its transfer, and goes on to the state as it is to see it."""
        now = time.monotonic()
        if isinstance(msg, TRANSFER_MESSAGES):
            _send_all(self.relay.on_message(Peer("client", identity, user), msg, now), send)
            return None
        if not isinstance(msg, Request) or type(msg.payload) is not StreamRef:
            return msg, checked
        return self.on_request(identity, user, msg, plan_of(user, msg), now)

    def from_worker(self, identity: bytes, user: str, msg: Message, send: SendTo,
                    stale: bool = False) -> bool:
        """A worker's message: whether it was a transfer's step (relayed here). ``stale``:
        a result the hub holds no batch for (taken back, or its worker counted lost)."""
        now = time.monotonic()
        if isinstance(msg, TRANSFER_MESSAGES):
            _send_all(self.relay.on_message(Peer("worker", identity, user), msg, now), send)
            return True
        if isinstance(msg, BatchResult):
            if stale:  # no caller waits for its outputs: the worker must not wait either
                _send_all(self.refuse_outputs(identity, user, msg), send)
            else:
                self.on_result(identity, user, msg, now)
        return False

    def refuse_outputs(self, identity: bytes, user: str, msg: BatchResult) -> list[Send]:
        """An Abort for each streamed output of a stale result, at once, rather than after
        the transfer timeout of a relay that no caller will ever take from."""
        why = f"batch {msg.batch_id} is no longer this worker's (taken back or given up)"
        return [send for ref in _output_refs(msg.results)
                for send in self.relay.refuse(ref.transfer_id, Peer("worker", identity, user),
                                              why)]

    def before(self, actions: list[Any], send: SendTo) -> None:
        """Before the state's actions go out: bind the transfers they carry refs of."""
        now = time.monotonic()
        for action in actions:
            msg = getattr(action, "message", None)
            identity = getattr(action, "identity", None)
            if isinstance(msg, Batch) and identity is not None:
                _send_all(self.on_batch(identity, msg, now), send)
            elif isinstance(msg, Reply) and identity is not None:
                _send_all(self.on_reply(identity, msg, now), send)

    def expire(self, now: float, send: SendTo) -> None:
        if len(self.relay):
            _send_all(self.relay.expire(now), send)

    def on_request(self, identity: bytes, user: str, req: Request, plan: InputPlan | None,
                   now: float) -> tuple[Request, Checked | None]:
        """Open the transfer of ``req``'s streamed input; the request as the state is to
        see it (never memoized: the ref is no value to key on) and its checked input."""
        ref = req.payload
        assert isinstance(ref, StreamRef)
        req = dataclasses.replace(req, cache=False)
        if plan is None:  # the state answers why (no such servable, not allowed, ...)
            return req, None
        error = check_streamed(plan, ref) or self.relay.open(
            ref, Peer("client", identity, user), now, req.request_id, req.timeout)
        return req, Checked(plan.declared, ref, error=error)

    def on_result(self, identity: bytes, user: str, msg: BatchResult, now: float) -> None:
        """Open the transfers of a worker's streamed outputs (``[True, ref]`` items)."""
        for ref in _output_refs(msg.results):
            error = self.relay.open(ref, Peer("worker", identity, user), now)
            if error is not None:  # the caller's credit for it is refused, and it fails
                logger.warning("a worker's result transfer was refused: %s", error.message)

    def on_batch(self, identity: bytes, batch: Batch, now: float) -> list[Send]:
        """A batch goes to a worker: its streamed inputs flow there."""
        out: list[Send] = []
        for payload in batch.payloads:
            if type(payload) is StreamRef:
                out += self.relay.bind(payload, Peer("worker", identity), now)
        return out

    def on_reply(self, identity: bytes, reply: Reply, now: float) -> list[Send]:
        """A reply goes to a caller: its upload is over; a streamed output flows there."""
        out = self.relay.replied(identity, reply.request_id)
        if type(reply.value) is StreamRef:
            out += self.relay.bind(reply.value, Peer("client", identity), now)
        return out


def _output_refs(results: list[Any]) -> Iterator[StreamRef]:
    """The streamed outputs of a worker's results (``[True, ref]`` items)."""
    for item in results:
        if isinstance(item, list) and len(item) == 2 and type(item[1]) is StreamRef:
            yield item[1]


def _send_all(sends: list[Send], send: SendTo) -> None:
    for s in sends:
        send(s.to.side == "worker", s.to.identity, s.message)
