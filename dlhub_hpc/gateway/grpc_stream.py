"""Many calls on one stream (Triton's ``ModelStreamInfer``): requests are read as they come
and answered as each finishes, so one stream keeps many in flight at the hub (which
batches them) without a call per request. Answers come in the order they finish; a
caller matches them to its requests by ``id``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TypeVar

In = TypeVar("In")
Out = TypeVar("Out")

IN_FLIGHT = 256  # requests of one stream answered at once; reading waits past this


async def as_finished(requests: AsyncIterable[In], answer: Callable[[In], Awaitable[Out]],
                      in_flight: int = IN_FLIGHT) -> AsyncIterator[Out]:
    """``answer(request)`` for each of ``requests``, at most ``in_flight`` at once (running,
    or done and not yet taken), yielded as each finishes. ``answer`` must not raise: its
    errors are answers too. Leaving early (the caller went away) cancels what is still
    running; an error reading ``requests`` is raised once those read before it are
    answered."""
    finished: asyncio.Queue[Out | _End] = asyncio.Queue()
    room = asyncio.Semaphore(in_flight)
    running: set[asyncio.Task[None]] = set()

    async def one(request: In) -> None:
        finished.put_nowait(await answer(request))

    broke: list[Exception] = []  # why reading stopped early, raised after the answers

    async def read() -> None:
        try:
            async for request in requests:
                await room.acquire()
                task = asyncio.create_task(one(request))
                running.add(task)
                task.add_done_callback(running.discard)
        except Exception as exc:
            broke.append(exc)
        if running:
            await asyncio.wait(set(running))
        finished.put_nowait(_END)

    reader = asyncio.create_task(read())
    try:
        while not isinstance(out := await finished.get(), _End):
            yield out
            # Room is made once an answer is taken, not once it is ready: a caller that
            # sends and never reads holds at most in_flight answers here.
            room.release()
        if broke:
            raise broke[0]
    finally:
        for task in (reader, *running):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.gather(reader, *running, return_exceptions=True)


class _End:
    """Put once reading is done and every answer is in the queue."""


_END = _End()
