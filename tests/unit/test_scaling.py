"""The scaling strategy as a pure function: blocks and load in, a decision out."""

from __future__ import annotations

from dataclasses import replace

from dlhub_hpc.pilot.profiles import ScalingSpec
from dlhub_hpc.pilot.scaling import BlockView, Load, WalltimePlan, decide

SPEC = ScalingSpec(min_blocks=1, max_blocks=3, queue_per_worker=4, idle_release=30,
                   start_grace=60)
NOW = 1000.0


def running(block_id: str = "b1", **kw: object) -> BlockView:
    base = BlockView(block_id, "RUNNING", submitted_at=NOW - 100, started_at=NOW - 90,
                     connected=2, ever_connected=True, busy=2)
    return replace(base, **kw)  # type: ignore[arg-type]


def test_floor_submits_up_to_min_blocks() -> None:
    d = decide(ScalingSpec(min_blocks=2, max_blocks=3), [], Load(), NOW)
    assert d.submit == 2 and "fewer than min_blocks" in d.reasons[0]
    assert not decide(SPEC, [running()], Load(), NOW)


def test_queue_depth_adds_one_block_when_all_workers_busy() -> None:
    d = decide(SPEC, [running()], Load(queued=9, workers=2, busy=2), NOW)
    assert d.submit == 1 and "one more block" in d.reasons[0]
    # At the threshold, or with an idle worker left, or at max_blocks: nothing.
    assert not decide(SPEC, [running()], Load(queued=8, workers=2, busy=2), NOW)
    assert not decide(SPEC, [running()], Load(queued=50, workers=2, busy=1), NOW)
    three = [running("b1"), running("b2"), running("b3")]
    assert not decide(SPEC, three, Load(queued=500, workers=6, busy=6), NOW)


def test_no_second_scale_up_while_a_block_is_pending() -> None:
    pending = BlockView("b2", "PENDING", submitted_at=NOW - 5)
    assert not decide(SPEC, [running(), pending], Load(queued=100, workers=2, busy=2), NOW)


def test_idle_block_released_above_the_floor_only() -> None:
    idle_old = running("b1", busy=0, idle_since=NOW - 40, started_at=NOW - 500)
    idle_new = running("b2", busy=0, idle_since=NOW - 40)
    d = decide(SPEC, [idle_old, idle_new], Load(workers=4), NOW)
    assert d.cancel == ["b1"], "the block with the least walltime left goes first"
    assert not decide(SPEC, [idle_old], Load(workers=2), NOW), "min_blocks stays"
    assert not decide(SPEC, [idle_old, running("b2", busy=0, idle_since=NOW - 10)],
                      Load(queued=1, workers=4), NOW), "queued work keeps blocks"
    short = replace(idle_new, idle_since=NOW - 10)
    assert not decide(SPEC, [replace(idle_old, idle_since=NOW - 10), short], Load(workers=4),
                      NOW), "not idle long enough"


def test_walltime_replacement_is_submitted_ahead_even_at_max() -> None:
    plan = WalltimePlan(walltime=600, replace_lead=120)
    spec = ScalingSpec(min_blocks=1, max_blocks=1)
    young = running(started_at=NOW - 400)
    assert not decide(spec, [young], Load(workers=2), NOW, plan)
    old = running(started_at=NOW - 481)
    d = decide(spec, [old], Load(workers=2), NOW, plan)
    assert d.replace == ["b1"] and d.submit == 0 and not d.cancel
    # Once replaced it is not replaced again, nor counted, nor called dead when it leaves.
    done = replace(old, replaced=True, connected=0)
    fresh = BlockView("b2", "PENDING", submitted_at=NOW)
    assert not decide(spec, [done, fresh], Load(), NOW + 5, plan)
    assert not decide(spec, [replace(done, state="COMPLETED"), fresh], Load(), NOW + 200, plan)


def test_dead_blocks_are_noticed_and_replaced() -> None:
    killed = running(state="CANCELLED", connected=0)
    d = decide(SPEC, [killed], Load(), NOW)
    assert d.dead == ["b1"] and d.submit == 1 and "ended (CANCELLED)" in d.reasons[0]
    silent = running(connected=0)  # provider says RUNNING, heartbeats stopped
    d = decide(SPEC, [silent], Load(), NOW)
    assert d.dead == ["b1"] and "missed heartbeats" in d.reasons[0]
    never = BlockView("b1", "RUNNING", submitted_at=NOW - 100, started_at=NOW - 61)
    assert decide(SPEC, [never], Load(), NOW).dead == ["b1"]
    assert not decide(SPEC, [replace(never, started_at=NOW - 30)], Load(), NOW).dead
    stopped = running(state="CANCELLED", stopping=True)
    assert not decide(SPEC, [stopped, running("b2")], Load(workers=2), NOW).dead


def test_blocks_that_never_connect_halt_the_pilot_after_max_failures() -> None:
    spec = ScalingSpec(min_blocks=1, max_blocks=2, max_failures=3)
    broken = BlockView("b3", "FAILED", submitted_at=NOW - 5, started_at=NOW - 4)
    d = decide(spec, [broken], Load(), NOW, failures=1)
    assert d.failed == 1 and d.submit == 1 and not d.halted, "two in a row: try again"
    d = decide(spec, [broken], Load(), NOW, failures=2)
    assert d.halted and d.dead == ["b3"] and d.submit == 0
    assert "3 blocks in a row ended before a worker connected" in d.reasons[-1]
    # A block that once served resets the count: a later death is not a broken command.
    served = running("b4", state="CANCELLED", connected=0)
    d = decide(spec, [served], Load(), NOW, failures=2)
    assert d.failed == 0 and d.submit == 1 and not d.halted


def test_one_job_per_user_drains_then_resubmits_instead_of_overlapping() -> None:
    plan = WalltimePlan(walltime=100, replace_lead=20)
    near = running(started_at=NOW - 85)  # 15 s left: due for replacement
    d = decide(SPEC, [near], Load(queued=3, workers=2, busy=2), NOW, plan, jobs_per_user=1)
    assert d.replace == [] and d.submit == 0, "a second job would not run beside the first"
    assert d.drain == ["b1"] and "serving pauses" in d.reasons[0]
    # While it drains it still serves: nothing more is submitted, and it is not 'dead'.
    draining = replace(near, draining=True)
    assert not decide(SPEC, [draining], Load(queued=3, workers=2, busy=2), NOW, plan,
                      jobs_per_user=1)
    # Once it has ended, its slot is free: the replacement goes in, and no failure counts.
    ended = replace(draining, state="TIMEOUT", connected=0)
    d = decide(SPEC, [ended], Load(), NOW + 30, plan, jobs_per_user=1)
    assert d.submit == 1 and not d.dead and d.failed == 0
    # With room for two jobs the replacement overlaps, as before.
    d = decide(SPEC, [near], Load(queued=3, workers=2, busy=2), NOW, plan, jobs_per_user=2)
    assert d.replace == ["b1"] and not d.drain


def test_jobs_per_user_caps_scaling_up() -> None:
    busy = Load(queued=100, workers=2, busy=2)
    assert decide(SPEC, [running()], busy, NOW, jobs_per_user=2).submit == 1
    assert not decide(SPEC, [running()], busy, NOW, jobs_per_user=1)
    stopping = BlockView("b0", "RUNNING", NOW - 50, NOW - 40, stopping=True)
    assert not decide(SPEC, [running(), stopping], busy, NOW, jobs_per_user=2), (
        "a cancelled job still in the queue holds its slot")
