"""Globus Compute's limits: sizes checked before sending, batches cut to fit, calls paced."""

from __future__ import annotations

import pytest

from dlhub_hpc.bridge.codec import encode_envelope, envelope_size, pack_value
from dlhub_hpc.bridge.limits import (
    ITEM_OVERHEAD,
    ComputeLimits,
    RateLimiter,
    check_submission,
    plan_chunks,
    submission_size,
)
from dlhub_hpc.errors import LimitExceeded, RateLimited


def test_default_limits_are_globus_computes() -> None:
    limits = ComputeLimits()
    assert (limits.max_submission_bytes, limits.max_result_bytes) == (10_000_000, 10_000_000)
    assert (limits.max_requests, limits.window) == (20, 10.0)
    # base64 of the budget, plus the allowance, stays within 10 MB
    assert submission_size(limits.submission_budget()) <= 10_000_000
    assert submission_size(limits.submission_budget() + 3) > 10_000_000


@pytest.mark.parametrize("field, value", [("max_requests", 0), ("window", 0),
                                          ("max_submission_bytes", 100),
                                          ("max_items_per_call", 0), ("surprise", 1)])
def test_bad_limits_are_refused(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        ComputeLimits(**{field: value})


def test_a_batch_is_cut_into_calls_that_each_fit() -> None:
    limits = ComputeLimits(max_submission_bytes=20_000)
    budget = limits.submission_budget()
    header = 100
    sizes = [3000] * 12
    chunks = plan_chunks(sizes, header=header, limits=limits)
    assert [i for chunk in chunks for i in chunk] == list(range(12)), "order is kept"
    per_call = (budget - header) // (3000 + ITEM_OVERHEAD)
    assert [len(c) for c in chunks] == [per_call, per_call, per_call, 12 - 3 * per_call]
    for chunk in chunks:
        assert header + sum(sizes[i] + ITEM_OVERHEAD for i in chunk) <= budget


def test_calls_hold_at_most_max_items() -> None:
    chunks = plan_chunks([1] * 10, header=10, limits=ComputeLimits(max_items_per_call=4))
    assert chunks == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_chunks_name_the_callers_positions() -> None:
    chunks = plan_chunks([10, 10], header=10, limits=ComputeLimits(), positions=[7, 3])
    assert chunks == [[7, 3]]
    with pytest.raises(ValueError):
        plan_chunks([10], header=10, limits=ComputeLimits(), positions=[1, 2])


def test_an_item_too_big_even_alone_is_named() -> None:
    limits = ComputeLimits(max_submission_bytes=20_000)
    with pytest.raises(LimitExceeded, match=r"inputs\[4\] is .* even alone.*dlhub_hpc.Client") \
            as raised:
        plan_chunks([10, 20_000], header=10, limits=limits, servable="a/b", positions=[0, 4])
    assert raised.value.details["index"] == 4
    assert raised.value.details["limit"] == 20_000


def test_check_submission_says_what_to_do() -> None:
    limits = ComputeLimits(max_submission_bytes=20_000)
    check_submission(20_000 - 4096, limits, "a/b")
    with pytest.raises(LimitExceeded, match="run_batch splits them"):
        check_submission(20_000 - 4095, limits, "a/b")


def test_the_estimate_covers_what_the_sdk_submits() -> None:
    serialize = pytest.importorskip("globus_compute_sdk.serialize")
    from globus_compute_sdk.sdk.batch import Batch

    from dlhub_hpc.bridge.remote import make_serializer

    envelope = {"v": 1, "op": "run", "servable": "a/b", "method": "", "timeout": 60.0,
                "cache": True, "result_limit": 10_000_000,
                "items": [pack_value(list(range(n))) for n in (0, 10, 5000)]}
    text = encode_envelope(envelope)
    batch = Batch(None, serializer=make_serializer())
    batch.add("00000000-0000-0000-0000-000000000001", (text,), {})
    (payload,) = next(iter(batch.prepare()["tasks"].values()))
    assert payload.startswith(f"{len(text) + 7}\n{serialize.JSONData.identifier}")
    assert submission_size(envelope_size(envelope)) >= len(payload)
    assert len(text) + 4096 >= len(payload)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_over_the_rate_a_call_raises_with_advice() -> None:
    clock = FakeClock()
    limiter = RateLimiter(3, 10.0, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        limiter.acquire(wait=False)
        clock.now += 1
    with pytest.raises(RateLimited, match=r"run_batch.*on_rate_limit='wait'") as raised:
        limiter.acquire(wait=False)
    assert raised.value.details["retry_after"] == pytest.approx(7.0)
    clock.now += 7.0  # the first call leaves the window
    assert limiter.acquire(wait=False) == 0.0


def test_a_pacing_limiter_waits_for_the_window() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2, 10.0, clock=clock, sleep=clock.sleep)
    assert [limiter.acquire(wait=True) for _ in range(2)] == [0.0, 0.0]
    assert limiter.acquire(wait=True) == pytest.approx(10.0)
    assert clock.slept == [pytest.approx(10.0)]
    assert limiter.acquire(wait=True) == 0.0  # the second of the first pair left too
    assert limiter.acquire(wait=True) == pytest.approx(10.0)
