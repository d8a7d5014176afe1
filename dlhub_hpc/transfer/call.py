"""A caller's side of chunked transfers: one blocking call on the caller's own socket.

``stream_input`` swaps a large array input for a ``StreamRef``; ``exchange`` sends the
request and then the array's chunks as the hub grants credit, until the reply comes;
``fetch`` receives a streamed output into a preallocated array, so the caller gets a plain
ndarray back.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import zmq

from dlhub_hpc.errors import HubUnavailable, TransferFailed
from dlhub_hpc.protocol import Reply, StreamRef
from dlhub_hpc.transfer import DEFAULT_TRANSFER_TIMEOUT, STREAM_BYTES
from dlhub_hpc.transfer.pump import Pump
from dlhub_hpc.transfer.window import Outgoing, split_streams

logger = logging.getLogger(__name__)

_STALL = 2 * DEFAULT_TRANSFER_TIMEOUT  # longer than the hub's: its Abort then says why


def stream_input(inputs: Any, threshold: int = STREAM_BYTES) -> tuple[Any, Outgoing | None]:
    """``inputs`` as the request carries it, and its transfer when it is an array over
    ``threshold`` bytes (smaller ones travel in the request, as a raw frame)."""
    values, streams = split_streams([inputs], threshold)
    return values[0], (streams[0] if streams else None)


def exchange(sock: zmq.Socket[Any], request_id: str, frames: list[Any], upload: Outgoing,
             wait: float | None, address: str) -> Reply:
    """Send the request, then its input's chunks; the reply to ``request_id``."""
    sock.send_multipart(frames, copy=False)
    pump = Pump(sock, _STALL)
    pump.send(upload)
    deadline = None if wait is None else time.monotonic() + wait
    reply: list[Reply] = []

    def answered() -> bool:
        while pump.stash and not reply:
            msg = pump.stash.pop(0)
            if isinstance(msg, Reply) and msg.request_id == request_id:
                reply.append(msg)
        return bool(reply) or bool(pump.failures)

    pump.run(until=answered, deadline=deadline)
    if reply:
        return reply[0]
    for failure in pump.failures.values():
        raise failure
    raise HubUnavailable(f"no reply from the hub at {address} within {wait}s",
                         address=address)


def fetch(sock: zmq.Socket[Any], reply: Reply, max_bytes: int = 2**62) -> Reply:
    """``reply`` with a streamed output received (``TransferFailed`` if it cannot be)."""
    ref = reply.value
    if not reply.ok or type(ref) is not StreamRef:
        return reply
    pump = Pump(sock, _STALL)
    pump.receive(ref, max_bytes)
    pump.run()
    return dataclasses.replace(reply, value=pump.array(ref))


def plain(value: Any) -> Any:
    """``value``, unless it is a streamed output no call received (every ``Client`` and
    ``AsyncClient`` call receives its own): then ``TransferFailed`` says what to do."""
    if type(value) is not StreamRef:
        return value
    raise TransferFailed(
        f"the output is a {value.nbytes}-byte array, which comes back in chunks only to a "
        "Client or AsyncClient call; call one (or return less, or write it to a file)",
        transfer_id=value.transfer_id, size=value.nbytes)
