"""A worker that spent a while moving a batch's arrays counts the hub's relayed chunks and
credits as word from the hub: it neither registers again nor gives the hub up afterwards.
Time moves on the worker's own clock; the test plays the hub on a real ROUTER socket."""

from __future__ import annotations

from typing import Any

import numpy as np

from dlhub_hpc.protocol import (
    Batch,
    BatchResult,
    Bye,
    Chunk,
    Credit,
    Heartbeat,
    Hello,
    decode,
)
from dlhub_hpc.transfer.window import new_ref
from dlhub_hpc.worker import Worker, WorkerOptions
from tests.unit.test_worker_drain import FakeHub, GatedRunner, ManualClock, ready_worker
from tests.unit.test_worker_drain import fake_hub as fake_hub

HUB_TIMEOUT = 30.0


def main_socket_messages_while(hub: FakeHub, clock: ManualClock, step: float,
                               heartbeats: int) -> list[Any]:
    """What the worker's main socket sends while ``heartbeats`` come from its heartbeat
    socket (each heartbeat interval the worker's loop also looks at the hub's silence).
    Heartbeats are due on the worker's clock: it moves ``step`` whenever nothing comes."""
    seen, sent, idle = 0, [], 0
    while seen < heartbeats:
        if not hub.sock.poll(250):
            idle += 1
            assert idle < 200, f"{seen} of {heartbeats} heartbeats, then nothing"
            clock.advance(step)
            continue
        identity, *frames = hub.sock.recv_multipart()
        msg = decode(frames)
        if identity.endswith(b"/hb"):
            seen += isinstance(msg, Heartbeat)
        else:
            sent.append(msg)
            if isinstance(msg, Bye):  # it gave the hub up: no more heartbeats come
                break
    return sent


def test_a_long_transfer_counts_as_word_from_the_hub(fake_hub: FakeHub) -> None:
    clock = ManualClock()
    opts = WorkerOptions(hub=fake_hub.address, servable="demo/add", heartbeat_interval=0.1,
                         hub_timeout=HUB_TIMEOUT)
    worker = Worker(opts, GatedRunner(), clock=clock)
    identity, thread = ready_worker(fake_hub, worker)
    x = np.arange(2**17, dtype=np.float64)  # 1 MiB, sent in two chunks
    ref = new_ref(x)
    fake_hub.send(identity, Batch(1, "run", [ref]))
    _, credit = fake_hub.expect(Credit)
    assert (credit.transfer_id, credit.offset) == (ref.transfer_id, 0)
    data = np.frombuffer(x.tobytes(), dtype=np.uint8)
    half = data.size // 2
    clock.advance(HUB_TIMEOUT / 2)  # the hub relays slowly: the clock runs on meanwhile
    fake_hub.send(identity, Chunk(ref.transfer_id, 0, data[:half]))
    assert fake_hub.expect(Credit)[1].offset == half
    clock.advance(HUB_TIMEOUT / 2 + 1.0)  # past hub_timeout since the batch came
    fake_hub.send(identity, Chunk(ref.transfer_id, half, data[half:]))
    assert fake_hub.expect(Credit)[1].offset == data.size
    _, result = fake_hub.expect(BatchResult)
    assert result.results[0][0] is True and np.array_equal(result.results[0][1], 2 * x)
    # Several turns of the worker's loop look at the silence: it is short (the chunks came).
    sent = main_socket_messages_while(fake_hub, clock, opts.heartbeat_interval, heartbeats=5)
    assert not [m for m in sent if isinstance(m, (Hello, Bye))], sent
    assert thread.is_alive() and worker.exit_reason == ""
    worker.request_stop("test over")
    fake_hub.expect(Bye)
    thread.join(10)
    assert not thread.is_alive()

