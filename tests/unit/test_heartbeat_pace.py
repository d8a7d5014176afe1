"""The hub's heartbeat pace: beats further apart as the fleet grows, within bounds."""

from __future__ import annotations

import pytest

from dlhub_hpc.broker.heartbeats import MAX_SPREAD, NOTICE, Pace


def test_a_small_fleet_beats_at_the_configured_interval() -> None:
    pace = Pace(1.0, 10.0, 256)
    pace.update(8, 0.0)
    assert (pace.beat, pace.silence) == (1.0, 10.0)
    pace.update(256, 1.0)
    assert (pace.beat, pace.silence) == (1.0, 10.0)


def test_a_large_fleet_beats_within_the_hubs_rate_and_is_waited_for_as_much_longer() -> None:
    pace = Pace(1.0, 10.0, 256)
    pace.update(1024, 0.0)
    assert pace.beat == pytest.approx(4.0) and pace.silence == pytest.approx(40.0)
    pace.update(100_000, 1.0)
    assert pace.beat == MAX_SPREAD and pace.silence == pytest.approx(10 * MAX_SPREAD)


def test_none_per_second_keeps_the_interval_at_any_size() -> None:
    pace = Pace(0.5, 3.0, 0)
    pace.update(100_000, 0.0)
    assert (pace.beat, pace.silence) == (0.5, 3.0)


def test_after_the_fleet_shrinks_a_worker_still_on_the_longer_beat_is_not_lost() -> None:
    pace = Pace(1.0, 2.0, 10)  # a timeout of only two beats
    pace.update(50, 0.0)
    assert pace.beat == pytest.approx(5.0)
    pace.update(5, 10.0)  # back to 1 s; a worker hears so only at its next ping
    kept = 5.0 + 3 * 1.0 + NOTICE  # its last old beat, a ping, a look, a new beat
    assert pace.beat == 1.0 and pace.silence == pytest.approx(kept)
    pace.update(5, 10.0 + kept - 0.1)
    assert pace.silence == pytest.approx(kept)
    pace.update(5, 10.0 + kept)
    assert pace.silence == 2.0  # every worker has heard and beaten since
