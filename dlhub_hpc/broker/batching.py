"""How the broker forms a batch from a servable's queues: which queue goes first, how many
of its requests, and whether a part-full batch should wait a little longer.

A free worker gets everything queued for its servable, up to ``max_batch_size``. A part-full
batch waits (at most ``max_batch_delay`` after its oldest request arrived, or, where the
servable sets none, a tenth of its recent batch time) only while the servable is under
concurrent load: its newest request found others still unanswered. A lone request, or the
next call of a caller that waits for each answer, goes at once.
"""

from __future__ import annotations

from itertools import islice
from typing import Any

import numpy as np

from dlhub_hpc.broker.events import Pending, RequestQueue, ServableInfo
from dlhub_hpc.protocol import Encoded, StreamRef

# A servable that sets no max_batch_delay waits a tenth of its recent batch time: a model
# whose batch takes 25 ms gains a fuller batch for 2.5 ms, a fast one waits next to nothing.
AUTO_DELAY_SHARE = 0.1
AUTO_DELAY_MIN = 0.001
AUTO_DELAY_MAX = 0.05
# A batch sent ahead waits for the one its worker runs: only where that is brief is it
# worth it (the trip is then a real share of the cycle), and its same-node arrays wait as
# memfd tickets, which expire (localpath TICKET_TTL, 60 s).
AHEAD_MAX_SECONDS = 5.0
# ... and only with data worth hiding the trip of (CurveZMQ both ways, a copy): a batch of
# small inputs gains little, and would make a caller arriving now wait one batch more
AHEAD_MIN_BYTES = 64 * 1024


def batch_delay(info: ServableInfo, batch_seconds: float | None) -> float:
    """How long a part-full batch of ``info`` may wait: its own ``max_batch_delay``, else
    (unset) ``AUTO_DELAY_SHARE`` of ``batch_seconds``, its batches' recent run time."""
    if info.max_batch_delay is not None:
        return info.max_batch_delay
    if batch_seconds is None:
        return AUTO_DELAY_MIN
    return min(max(AUTO_DELAY_SHARE * batch_seconds, AUTO_DELAY_MIN), AUTO_DELAY_MAX)


def release_time(info: ServableInfo, queue: RequestQueue, under_load: bool,
                 batch_seconds: float | None = None) -> float:
    """When this queue's part-full batch must go; -inf when it should go now."""
    delay = batch_delay(info, batch_seconds)
    if delay <= 0 or queue.live >= info.max_batch_size or not under_load:
        return float("-inf")
    return queue.items[0].arrived + delay


def oldest_queue(queues: dict[str, RequestQueue]) -> tuple[RequestQueue | None, str]:
    """The method queue whose first live request arrived first (answered ones dropped)."""
    best: tuple[RequestQueue | None, str] = (None, "")
    best_seq = 0
    for method, queue in queues.items():
        while queue.items and queue.items[0].done:
            queue.items.popleft()
        if queue.items and (best[0] is None or queue.items[0].seq < best_seq):
            best, best_seq = (queue, method), queue.items[0].seq
    return best


def take(queue: RequestQueue, n: int) -> list[Pending]:
    """Up to ``n`` live requests from the front of ``queue``, in arrival order. A request
    whose input streams in chunks goes alone: a small request batched with it would wait
    for the whole transfer to reach the worker (a second, for 255 MiB)."""
    items: list[Pending] = []
    while queue.items and len(items) < n:
        p = queue.items[0]
        if p.done:
            queue.items.popleft()
            continue
        streamed = type(p.payload) is StreamRef
        if streamed and items:
            break  # it goes in the next batch, alone
        queue.items.popleft()
        p.queued = False
        queue.live -= 1
        items.append(p)
        if streamed:
            break
    return items


def ahead_to(room: dict[bytes, None] | None, info: ServableInfo,
             queues: dict[str, RequestQueue], batch_seconds: float | None) -> bytes | None:
    """A busy worker (of ``room``, the longest busy first) to send a batch ahead to: only a
    full one (a part-full batch waits to fill while the workers are busy), of inputs that
    do not stream in chunks (a worker receives those only once it runs them), and only
    for a servable whose batches are known to run briefly (``AHEAD_MAX_SECONDS``), with
    data enough to be worth it (``AHEAD_MIN_BYTES``)."""
    if not room or batch_seconds is None or batch_seconds > AHEAD_MAX_SECONDS:
        return None
    queue = oldest_queue(queues)[0]
    if queue is None or queue.live < info.max_batch_size:
        return None
    front = list(islice(queue.items, info.max_batch_size))
    if streams_in(front):
        return None
    if sum(payload_bytes(p.payload) for p in front) < AHEAD_MIN_BYTES:
        return None
    return next(iter(room))


def payload_bytes(payload: Any) -> int:
    """The bytes an input carries in arrays, bytes or encoded form (other values: 0)."""
    kind = type(payload)
    if kind is np.ndarray:
        return int(payload.nbytes)
    if kind is Encoded:
        return memoryview(payload.data).nbytes
    if kind is bytes or kind is bytearray:
        return len(payload)
    return 0


def streams_in(items: list[Pending]) -> bool:
    """Whether a batch's input streams in chunks: a batch sent ahead to its worker would
    wait behind the whole transfer."""
    return any(type(p.payload) is StreamRef for p in items)
