"""A worker's side of chunked transfers (``dlhub_hpc.transfer``).

A batch whose inputs hold ``StreamRef``s is filled in before it runs: each array is
preallocated and written chunk by chunk as the hub relays them, so the servable sees a
plain ndarray and the bytes are copied once, from the socket into it. An item whose
transfer fails is not run; it answers with its ``TransferFailed``. Outputs over
``STREAM_BYTES`` go back the same way: the result names a ``StreamRef``, and its chunks
follow once the caller gives credit. Messages that arrive meanwhile wait in ``stash``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import zmq

from dlhub_hpc.errors import DlhubHpcError
from dlhub_hpc.protocol import Batch, Message
from dlhub_hpc.transfer import DEFAULT_TRANSFER_TIMEOUT, STREAM_BYTES
from dlhub_hpc.transfer.pump import Pump
from dlhub_hpc.transfer.window import Outgoing, refs_in, split_streams
from dlhub_hpc.worker.runner import Runner, WireResult

logger = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)
class Unread:
    """A message's frames, taken off the socket before its turn (by the look for a Recall
    behind a batch): decoded when its turn comes, as if read then."""

    frames: list[Any]


class WorkerStreams:
    """The transfers of the batch in hand, and what arrived while they moved."""

    def __init__(self, timeout: float = 2 * DEFAULT_TRANSFER_TIMEOUT,
                 max_bytes: int = 2**62, threshold: int = STREAM_BYTES) -> None:
        self.timeout = timeout  # longer than the hub's, whose Abort then says why
        self.max_bytes = max_bytes
        self.threshold = threshold
        self.failed: dict[int, WireResult] = {}
        self.pending: list[Outgoing] = []
        self.stash: list[Message | Unread] = []  # in the order they came

    def __repr__(self) -> str:
        return f"WorkerStreams(threshold={self.threshold}, stash={len(self.stash)})"

    def receive(self, sock: zmq.Socket[Any], batch: Batch) -> Batch:
        """``batch`` with its streamed inputs received (those that failed: in ``failed``)."""
        self.failed = {}
        refs = refs_in(batch.payloads)
        if not refs:
            return batch
        pump = Pump(sock, self.timeout)
        for _, ref in refs:
            pump.receive(ref, self.max_bytes)
        pump.run()
        self.stash += pump.stash
        payloads = list(batch.payloads)
        for i, ref in refs:
            try:
                payloads[i] = pump.array(ref)
            except DlhubHpcError as exc:
                logger.warning("batch %s item %s: %s", batch.batch_id, i, exc.message)
                self.failed[i] = [False, exc.to_wire()]
                payloads[i] = None
        return dataclasses.replace(batch, payloads=payloads)

    def run(self, runner: Runner, batch: Batch) -> list[WireResult]:
        """Run the items whose inputs arrived; the others answer with their failure."""
        if not self.failed:
            return runner.run(batch.method, batch.payloads, batch.parameters)
        keep = [i for i in range(len(batch.payloads)) if i not in self.failed]
        params = batch.parameters
        ran = runner.run(batch.method, [batch.payloads[i] for i in keep],
                         None if params is None else [params[i] for i in keep]) if keep else []
        results = dict(zip(keep, ran, strict=True)) | self.failed
        return [results[i] for i in range(len(batch.payloads))]

    def split(self, results: list[WireResult]) -> list[WireResult]:
        """``results`` with outputs over the threshold standing as refs (sent by ``send``)."""
        values, self.pending = split_streams(
            [r[1] if r[0] is True else None for r in results], self.threshold)
        return [[True, v] if r[0] is True else r for r, v in zip(results, values, strict=True)]

    def send(self, sock: zmq.Socket[Any]) -> None:
        """Send the streamed outputs of the result just sent, as the callers give credit."""
        if not self.pending:
            return
        pump = Pump(sock, self.timeout)
        for end in self.pending:
            pump.send(end)
        self.pending = []
        pump.run()
        self.stash += pump.stash
        for tid, exc in pump.failures.items():
            logger.warning("result transfer %s failed: %s", tid, exc.message)
