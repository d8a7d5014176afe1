"""A worker's result for a batch the hub no longer holds (taken back, or given up with the
worker): its streamed outputs have no caller, so the worker is told at once (Abort) rather
than left waiting for credit until the transfer times out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.broker.streams import HubStreams
from dlhub_hpc.protocol import Abort, BatchResult, StreamRef


def test_a_stale_results_streamed_outputs_are_refused_at_once(tmp_path: Path) -> None:
    streams = HubStreams(HubConfig(home=tmp_path))
    sent: list[tuple[bool, bytes, Any]] = []
    result = BatchResult(9, [[True, StreamRef("out-1", "<f8", (4,))], [True, 1.0],
                             [True, StreamRef("out-2", "<f8", (2,))]])
    relayed = streams.from_worker(b"w1", "worker:x", result,
                                  lambda *s: sent.append(s), stale=True)
    assert not relayed and len(streams.relay) == 0  # nothing opened for nobody
    assert [(to_worker, who, m.transfer_id) for to_worker, who, m in sent] == [
        (True, b"w1", "out-1"), (True, b"w1", "out-2")]
    assert all(isinstance(m, Abort) and "no longer this worker's" in m.error["message"]
               for _, _, m in sent)


def test_a_live_results_streamed_outputs_open_their_transfers(tmp_path: Path) -> None:
    streams = HubStreams(HubConfig(home=tmp_path))
    sent: list[Any] = []
    result = BatchResult(9, [[True, StreamRef("out-1", "<f8", (4,))]])
    assert not streams.from_worker(b"w1", "worker:x", result, lambda *s: sent.append(s))
    assert sent == [] and len(streams.relay) == 1 and streams.relay.sending(b"w1")
