"""Admission to a servable's queue: whether one more request of a user may wait, the
``QueueFull`` a refused one gets, and the recount ``BrokerState.validate`` checks the
shares' books against.

The counts themselves (queued per servable and per user, the bounds) are
``fairshare.QueueShares``; this module applies the hub's limits to them and says what a
caller can do about a refusal.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping

from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.broker.events import RequestQueue, ServableInfo, ServableKey
from dlhub_hpc.broker.fairshare import QueueShares
from dlhub_hpc.broker.pools import ref_of
from dlhub_hpc.errors import QueueFull

logger = logging.getLogger(__name__)

__all__ = ["admission_refusal", "queue_full", "share_problems"]


def admission_refusal(shares: QueueShares[ServableKey], config: HubConfig, info: ServableInfo,
                      user: str) -> QueueFull | None:
    """Why ``user``'s request for ``info`` may not queue (its servable's bound, the user's
    share of it, or the ceiling); None when it may."""
    limit = config.queue_limits.get(info.name, config.max_queue_length)
    refused = shares.refusal(info.key, user, limit)
    return None if refused is None else queue_full(info, limit, *refused)


def queue_full(info: ServableInfo, limit: int, bound: str, queued: int, theirs: int,
               share: int) -> QueueFull:
    """The refusal of a request the servable's queue has no room for, naming the bound hit
    (``QueueShares.refusal``) and what to do."""
    ref = f"{info.name}@{info.version}"
    if bound == "ceiling":
        return QueueFull(
            f"{ref} has {queued} requests queued, twice its bound of {limit}: no caller "
            "may queue more; retry later or start more workers",
            servable=info.name, queued=queued, limit=limit)
    if bound == "share":
        return QueueFull(
            f"{ref} has {queued} requests queued (the bound is {limit}) over all its methods, "
            f"and {theirs} are yours, your fair share of it while others wait ({share}); "
            "retry once some of yours are answered",
            servable=info.name, queued=queued, limit=limit, yours=theirs, share=share)
    return QueueFull(
        f"{ref} has {queued} requests queued (the bound is {limit}) over all its methods; "
        "retry later or start more workers",
        servable=info.name, queued=queued, limit=limit)


def share_problems(queues: Mapping[ServableKey, Mapping[str, RequestQueue]],
                   shares: QueueShares[ServableKey]) -> list[str]:
    """The admission counts against a recount of the queues: one line per servable whose
    counts per user differ from what its queues hold unanswered."""
    counted: dict[ServableKey, Counter[str]] = {}
    for key, methods in queues.items():
        for queue in methods.values():
            for p in queue.items:
                if not p.done:
                    counted.setdefault(key, Counter())[p.user] += 1
    keys = set(counted) | {k for k in queues if shares.queued(k)}
    return [f"{ref_of(k)} counts {shares.of_users(k)} queued per user for admission; "
            f"the queues hold {dict(counted.get(k, {}))}"
            for k in keys if shares.of_users(k) != dict(counted.get(k, {}))]
