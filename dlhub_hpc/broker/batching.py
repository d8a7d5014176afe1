"""How the broker forms a batch from a servable's queues: which queue goes first, how many
of its requests, and whether a part-full batch should wait a little longer.

A free worker gets everything queued for its servable, up to ``max_batch_size``. A part-full
batch waits (at most ``max_batch_delay`` after its oldest request arrived) only while the
servable is under concurrent load: its newest request found others still unanswered. A
lone request, or the next call of a caller that waits for each answer, goes at once.
"""

from __future__ import annotations

from dlhub_hpc.broker.events import Pending, RequestQueue, ServableInfo


def release_time(info: ServableInfo, queue: RequestQueue, under_load: bool) -> float:
    """When this queue's part-full batch must go; -inf when it should go now."""
    if info.max_batch_delay <= 0 or queue.live >= info.max_batch_size or not under_load:
        return float("-inf")
    return queue.items[0].arrived + info.max_batch_delay


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
    """Up to ``n`` live requests from the front of ``queue``, in arrival order."""
    items: list[Pending] = []
    while queue.items and len(items) < n:
        p = queue.items.popleft()
        if p.done:
            continue
        p.queued = False
        queue.live -= 1
        items.append(p)
    return items
