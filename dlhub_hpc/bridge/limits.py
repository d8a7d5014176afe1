"""Globus Compute's limits, checked before anything is sent, and batches split to fit them.

The service takes at most 10 MB per submitted task and returns at most 10 MB per result,
and allows about 20 requests per 10 seconds per client. A call that cannot fit fails here
with a :class:`~dlhub_hpc.errors.LimitExceeded` that says what to do instead; a batch is cut
into calls that each fit (:func:`plan_chunks`); calls beyond the rate either fail with
:class:`~dlhub_hpc.errors.RateLimited` or wait their turn (:class:`RateLimiter`).

Sizes are counted on the encoded call (base64 of msgpack) plus a fixed allowance for the
service's own framing (the JSON serializer's header, the buffer lengths, the task record),
so an estimate here is never below what the service measures.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from dlhub_hpc.bridge.codec import encoded_size, max_raw_size
from dlhub_hpc.errors import LimitExceeded, RateLimited

logger = logging.getLogger(__name__)

#: characters the service adds around one task's argument (serializer headers, lengths)
SUBMISSION_OVERHEAD = 4096
#: characters the endpoint adds around one result (serializer header, quotes)
RESULT_OVERHEAD = 1024
#: bytes one packed item adds to a call besides its own (a msgpack bin header)
ITEM_OVERHEAD = 5


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class ComputeLimits(BaseModel):
    """The limits a :class:`~dlhub_hpc.RemoteClient` keeps to (Globus Compute's, by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_submission_bytes: int = Field(default=10_000_000, gt=2 * SUBMISSION_OVERHEAD)
    max_result_bytes: int = Field(default=10_000_000, gt=2 * RESULT_OVERHEAD)
    max_requests: int = Field(default=20, ge=1, description="calls per window")
    window: float = Field(default=10.0, gt=0, description="seconds")
    max_items_per_call: int = Field(default=1000, ge=1)

    def submission_budget(self) -> int:
        """The most bytes a packed call may have."""
        return max_raw_size(self.max_submission_bytes - SUBMISSION_OVERHEAD)

    def result_budget(self) -> int:
        """The most bytes a packed reply may have."""
        return max_raw_size(self.max_result_bytes - RESULT_OVERHEAD)


def submission_size(packed_call_bytes: int) -> int:
    """What the service will count for a call of ``packed_call_bytes`` (an upper bound)."""
    return encoded_size(packed_call_bytes) + SUBMISSION_OVERHEAD


def result_size(packed_reply_bytes: int) -> int:
    """What the endpoint will count for a reply of ``packed_reply_bytes`` (an upper bound)."""
    return encoded_size(packed_reply_bytes) + RESULT_OVERHEAD


def check_submission(encoded_chars: int, limits: ComputeLimits, servable: str) -> None:
    """Raise ``LimitExceeded`` if a call of ``encoded_chars`` (base64) is too big to submit."""
    size = encoded_chars + SUBMISSION_OVERHEAD
    if size > limits.max_submission_bytes:
        raise LimitExceeded(
            f"the call to {servable} is {megabytes(size)} encoded, over Globus Compute's "
            f"{megabytes(limits.max_submission_bytes)} per submission; send fewer inputs "
            "per call (run_batch splits them for you), call the hub from the site with "
            "dlhub_hpc.Client, or stage the data on the site's file system and send its path",
            servable=servable, size=size, limit=limits.max_submission_bytes,
        )


def plan_chunks(
    sizes: Sequence[int],
    *,
    header: int,
    limits: ComputeLimits,
    servable: str = "",
    positions: Sequence[int] | None = None,
) -> list[list[int]]:
    """Cut items of packed ``sizes`` into consecutive calls that each fit the limits.

    ``header`` is the packed size of the call without its items. Returns the calls as lists
    of ``positions`` (default: the indices of ``sizes``), in order. An item too big to go
    even alone raises ``LimitExceeded`` naming it.
    """
    if positions is None:
        positions = range(len(sizes))
    if len(positions) != len(sizes):
        raise ValueError("positions and sizes differ in length")
    budget = limits.submission_budget()
    chunks: list[list[int]] = []
    current: list[int] = []
    used = header
    for position, size in zip(positions, sizes, strict=True):
        cost = size + ITEM_OVERHEAD
        if header + cost > budget:
            total = submission_size(header + cost)
            raise LimitExceeded(
                f"inputs[{position}] is {megabytes(total)} encoded, over Globus Compute's "
                f"{megabytes(limits.max_submission_bytes)} per submission even alone; call "
                f"{servable or 'the servable'} from the site with dlhub_hpc.Client, or stage "
                "the data on the site's file system and send its path",
                servable=servable, index=position, size=total,
                limit=limits.max_submission_bytes,
            )
        if current and (used + cost > budget or len(current) >= limits.max_items_per_call):
            chunks.append(current)
            current, used = [], header
        current.append(position)
        used += cost
    if current:
        chunks.append(current)
    return chunks


class RateLimiter:
    """At most ``max_requests`` acquisitions in any ``window`` seconds (a sliding window)."""

    def __init__(
        self,
        max_requests: int,
        window: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.max_requests = max_requests
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self._times: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RateLimiter(max_requests={self.max_requests!r}, window={self.window!r})"

    def acquire(self, wait: bool) -> float:
        """Take one request; returns the seconds waited, or raises ``RateLimited``."""
        waited = 0.0
        with self._lock:
            while True:
                now = self._clock()
                while self._times and self._times[0] <= now - self.window:
                    self._times.popleft()
                if len(self._times) < self.max_requests:
                    self._times.append(now)
                    return waited
                retry_after = self._times[0] + self.window - now
                if not wait:
                    raise RateLimited(
                        f"{self.max_requests} calls in {self.window:g} s is Globus Compute's "
                        "limit and this call would go over it; send many inputs in one call "
                        "with run_batch(servable, inputs), or create the RemoteClient with "
                        f"on_rate_limit='wait' to pace calls (next free in {retry_after:.1f} s)",
                        limit=self.max_requests, window=self.window,
                        retry_after=round(retry_after, 3),
                    )
                logger.info("pacing calls to Globus Compute: waiting %.2f s", retry_after)
                self._sleep(retry_after)
                waited += retry_after
