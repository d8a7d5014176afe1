"""Thread pools beside the hub's loop whose results come back to the loop.

Work runs on a pool's thread; its continuation goes through a queue and runs on the
loop's thread, in ``run_finished`` once ``wake`` has fired, so only the loop ever touches
the broker's state. The large-message lane and reference routing both hand work off so.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class Handoff:
    """Named thread pools (made on first use) and the queue of their continuations."""

    def __init__(self, wake: Callable[[], None], threads: Mapping[str, int],
                 expected: type[Exception], log: logging.Logger, failure: str) -> None:
        """``threads``: each pool's thread name prefix and size. An exception of type
        ``expected`` is an answer to the caller, not a fault: only others are logged, on
        the owner's ``log`` with ``failure`` as the message."""
        self._wake = wake
        self._threads = dict(threads)
        self._expected = expected
        self._log = log
        self._failure = failure
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._done: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()

    def submit(self, pool: str, work: Callable[[], T],
               then: Callable[[T | Exception], None]) -> None:
        """Run ``work`` on ``pool``; ``then`` gets its result (or exception) on the loop."""
        executor = self._pools.get(pool)
        if executor is None:
            executor = self._pools[pool] = ThreadPoolExecutor(
                self._threads[pool], thread_name_prefix=pool)

        def run() -> None:
            try:
                result: T | Exception = work()
            except Exception as exc:  # handed to the loop, which answers it
                if not isinstance(exc, self._expected):
                    self._log.exception(self._failure)
                result = exc
            self._done.put(lambda: then(result))
            self._wake()

        executor.submit(run)

    def run_finished(self) -> None:
        """Run the continuations of finished work (loop thread)."""
        while True:
            try:
                then = self._done.get_nowait()
            except queue.Empty:
                return
            then()

    def close(self) -> None:
        for executor in self._pools.values():
            executor.shutdown(wait=False, cancel_futures=True)
