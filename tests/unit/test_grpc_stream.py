"""``as_finished``: a stream's requests answered at once, up to a bound, yielded as each
finishes; leaving early cancels the rest; a reading error ends the stream with it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from dlhub_hpc.gateway.grpc_stream import as_finished


async def items(values: list[int], fail_after: int | None = None) -> AsyncIterator[int]:
    for i, value in enumerate(values):
        if fail_after is not None and i == fail_after:
            raise ConnectionResetError("the caller's stream broke")
        yield value


def test_answers_come_as_they_finish_not_as_they_were_asked() -> None:
    async def main() -> list[int]:
        gates = {v: asyncio.Event() for v in (1, 2, 3)}

        async def answer(v: int) -> int:
            # The last asked finishes first and lets 2 go, which lets 1 go.
            if v == 3:
                gates[2].set()
            else:
                await gates[v].wait()
            if v == 2:
                gates[1].set()
            return v * 10

        return [out async for out in as_finished(items([1, 2, 3]), answer)]

    assert asyncio.run(main()) == [30, 20, 10]


def test_no_more_than_in_flight_are_answered_at_once() -> None:
    async def main() -> tuple[list[int], int]:
        running, most = 0, 0

        async def answer(v: int) -> int:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            running -= 1
            return v

        got = [out async for out in as_finished(items(list(range(50))), answer, in_flight=4)]
        return got, most

    got, most = asyncio.run(main())
    assert sorted(got) == list(range(50)) and most == 4


def test_leaving_early_cancels_what_still_runs() -> None:
    async def main() -> tuple[int, int]:
        cancelled = 0
        blocker = asyncio.Event()

        async def answer(v: int) -> int:
            nonlocal cancelled
            if v == 0:
                return v
            try:
                await blocker.wait()
            except asyncio.CancelledError:
                cancelled += 1
                raise
            return v

        stream = as_finished(items([0, 1, 2, 3]), answer)
        first = await anext(stream)
        await stream.aclose()  # the caller went away
        return first, cancelled

    assert asyncio.run(main()) == (0, 3)


def test_a_broken_request_stream_ends_the_answers_with_its_error_after_the_rest() -> None:
    async def main() -> list[int]:
        got: list[int] = []

        async def answer(v: int) -> int:
            return v

        with pytest.raises(ConnectionResetError):
            async for out in as_finished(items([1, 2, 3, 4], fail_after=2), answer):
                got.append(out)
        return got

    assert sorted(asyncio.run(main())) == [1, 2]


def test_answers_not_taken_stop_the_reading() -> None:
    """A caller that sends and never reads: at most ``in_flight`` answers wait, and no
    more requests are read meanwhile."""
    async def main() -> tuple[int, int]:
        read = 0

        async def endless() -> AsyncIterator[int]:
            nonlocal read
            while True:
                read += 1
                yield read

        async def answer(v: int) -> int:
            return v

        stream = as_finished(endless(), answer, in_flight=8)
        first = await anext(stream)
        for _ in range(20):  # the loop runs the reader and answers as far as they can go
            await asyncio.sleep(0)
        await stream.aclose()
        return first, read

    first, read = asyncio.run(main())
    assert first == 1 and read <= 8 + 2  # the window, the one taken, and one waiting for room
