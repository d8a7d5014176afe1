"""The soak, bounded: a pilot-served servable under load, two workers SIGKILLed, a walltime
crossed; not one request lost, wrong or answered twice, and the hub alive throughout.

Runs ``benchmarks/soak.py``'s own functions: a hub process, a pilot of LocalProvider blocks
with a 20 s walltime, a few thousand requests, kills when 1,000 and 2,000 were answered
(events, not timers), and requests sent on until a block was replaced at its walltime and
its workers drained."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from benchmarks.soak import OFFSET, SoakSettings, Tally, failed, print_report, run_soak
from dlhub_hpc.errors import DlhubHpcError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def _future(value: Any = None, error: BaseException | None = None) -> Future[Any]:
    f: Future[Any] = Future()
    if error is None:
        f.set_result(value)
    else:
        f.set_exception(error)
    return f


def test_the_tally_tells_wrong_crossed_and_typed_errors_apart() -> None:
    tally = Tally(marks=[2])
    tally.track(0, _future(0 + OFFSET))
    tally.track(1, _future(0 + OFFSET))  # request 0's answer given to request 1
    tally.track(2, _future(error=TimeoutError("late")))
    unanswered: Future[Any] = Future()
    tally.track(3, unanswered)
    assert (tally.sent, tally.answered, tally.wrong, tally.crossed) == (4, 2, 1, 1)
    assert tally.errors == {"TimeoutError": 1}
    assert tally.marks[2].is_set()
    tally.freeze()  # past the deadline: what is open is lost, whatever closing it does
    unanswered.set_exception(DlhubHpcError("the client was closed"))
    assert tally.lost() == [3] and tally.errors == {"TimeoutError": 1}


def test_soak_loses_no_request_across_kills_and_a_walltime(tmp_path: Path) -> None:
    settings = SoakSettings(requests=3000, walltime=20, concurrency=3, window=64,
                            kill_at=[1000, 2000], min_crossings=1, deadline=120,
                            sample_every=0.5, heartbeat_interval=0.2, heartbeat_timeout=1.5)
    result = run_soak(settings, tmp_path / "hub", progress_every=5)
    print_report(result)
    assert result["hub_deaths"] == 0
    assert result["sent"] >= 3000
    assert result["lost"] == 0, result["lost_examples"]
    assert result["wrong"] == 0 and result["duplicated"] == 0, result["examples"]
    assert result["hub_extra_replies"] == 0, result["hub_stats"]
    # Every request was answered, or failed with the typed error of a twice-lost worker.
    assert set(result["errors"]) <= {"WorkerLost"}, result["examples"]
    assert result["answered"] + sum(result["errors"].values()) == result["sent"]
    assert result["workers_killed"] == 2, result["kills"]
    stats = result["hub_stats"]
    assert stats["workers_lost"] >= 2, stats  # the hub noticed both kills
    assert result["walltime_crossings"] >= 1 and stats["workers_drained"] >= 1, stats
    assert not failed(result)
