"""PendingTransfers: the chunked transfers of a client's concurrent calls, moved message by
message (what Client.submit's I/O thread and AsyncClient's reader do with them)."""

from __future__ import annotations

from typing import Any

import numpy as np

from dlhub_hpc.errors import TransferFailed, TransferStalled, error_from_wire
from dlhub_hpc.protocol import Abort, Chunk, Credit, Message, Reply, encode
from dlhub_hpc.transfer.pending import PendingTransfers
from dlhub_hpc.transfer.window import Outgoing, new_ref


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def pending(clock: Clock | None = None) -> tuple[PendingTransfers, list[Message]]:
    sent: list[Message] = []
    return PendingTransfers(sent.append, timeout=5.0, clock=clock or Clock()), sent


def frames(msg: Message) -> list[Any]:
    return encode(msg)


def test_a_reply_without_a_stream_settles_at_once_and_ends_its_upload() -> None:
    p, sent = pending()
    arr = np.arange(1000.0)
    p.upload("r1", Outgoing(new_ref(arr), arr))
    got: list[Reply] = []
    reply = p.take(frames(Reply("r1", True, 3.0, None)))
    assert reply is not None
    p.settle(reply, got.append)
    assert [r.value for r in got] == [3.0] and not p.active and sent == []


def test_a_streamed_output_arrives_in_chunks_and_then_settles_with_the_array() -> None:
    p, sent = pending()
    arr = np.random.default_rng(0).standard_normal(1000)
    ref = new_ref(arr)
    got: list[Reply] = []
    p.settle(Reply("r1", True, ref, None), got.append)
    assert sent == [Credit(ref.transfer_id, 0)] and got == []
    source = Outgoing(ref, arr)
    source.grant(Credit(ref.transfer_id, arr.nbytes, 3000))
    for chunk in source.chunks():
        assert p.take(frames(chunk)) is None
    assert len(got) == 1 and got[0].ok and np.array_equal(got[0].value, arr)
    assert [m.offset for m in sent if isinstance(m, Credit)][-1] == arr.nbytes
    assert not p.active


def test_an_upload_sends_what_each_credit_allows() -> None:
    p, sent = pending()
    arr = np.arange(1000.0)
    ref = new_ref(arr)
    p.upload("r1", Outgoing(ref, arr))
    p.take(frames(Credit(ref.transfer_id, 4000, 2000)))
    assert [(c.offset, c.data.size) for c in sent if isinstance(c, Chunk)] == [(0, 2000),
                                                                               (2000, 2000)]
    p.take(frames(Credit(ref.transfer_id, arr.nbytes, 2000)))
    assert sum(c.data.size for c in sent if isinstance(c, Chunk)) == arr.nbytes
    assert not p.active


def test_an_abort_fails_only_its_own_call() -> None:
    p, _ = pending()
    refs = [new_ref(np.zeros(10)) for _ in range(2)]
    got: dict[str, Reply] = {}
    for i, ref in enumerate(refs):
        p.settle(Reply(f"r{i}", True, ref, None), lambda r: got.__setitem__(r.request_id, r))
    error = TransferFailed("dropped", transfer_id=refs[0].transfer_id)
    p.take(frames(Abort(refs[0].transfer_id, error.to_wire())))
    assert list(got) == ["r0"] and not got["r0"].ok
    assert isinstance(error_from_wire(got["r0"].error or {}), TransferFailed)
    assert p.active  # the other one goes on


def test_a_stalled_download_fails_and_tells_the_hub() -> None:
    clock = Clock()
    p, sent = pending(clock)
    ref = new_ref(np.zeros(10))
    got: list[Reply] = []
    p.settle(Reply("r1", True, ref, None), got.append)
    clock.now = 4.0
    p.expire()
    assert got == []
    clock.now = 5.0
    p.expire()
    assert isinstance(error_from_wire(got[0].error or {}), TransferStalled)
    assert isinstance(sent[-1], Abort) and sent[-1].transfer_id == ref.transfer_id


def test_an_output_nobody_waits_for_is_given_up_and_fail_all_ends_the_rest() -> None:
    p, sent = pending()
    ref = new_ref(np.zeros(10))
    p.settle(Reply("gone", True, ref, None), None)
    assert isinstance(sent[-1], Abort) and not p.active
    got: list[Reply] = []
    p.settle(Reply("r2", True, new_ref(np.zeros(10)), None), got.append)
    p.fail_all(TransferFailed("the client is closed"))
    assert len(got) == 1 and not got[0].ok and not p.active
