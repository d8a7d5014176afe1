"""How far apart workers' heartbeats go, and how long a silent worker is waited for.

Each heartbeat costs the hub a wake-up and a CurveZMQ box; at a fixed interval, a fleet of
1,024 workers kept an idle hub a fifth of a core busy. Past ``heartbeats_per_second`` the
hub spaces beats out with the fleet (it tells the workers so in its own heartbeats), and
waits as much longer before it counts a silent worker lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dlhub_hpc.protocol.constants import HEARTBEAT_NOTICE as NOTICE

MAX_SPREAD = 10.0  # a beat grows to at most this many heartbeat_intervals


@dataclass
class Pace:
    interval: float  # the configured heartbeat_interval: the beat of a small fleet
    timeout: float  # the configured heartbeat_timeout, at that beat
    per_second: float  # heartbeats a second the hub takes in all; 0: no spacing out
    beat: float = field(init=False)  # seconds between a worker's heartbeats now
    silence: float = field(init=False)  # seconds without word before a worker is lost
    _floor: tuple[float, float] = (0.0, 0.0)  # (a silence kept after a shrink, until)

    def __post_init__(self) -> None:
        self.beat, self.silence = self.interval, self.timeout

    def update(self, workers: int, now: float) -> None:
        """Set the beat and the silence for a fleet of ``workers`` at time ``now``."""
        beat = self.interval
        if self.per_second:
            beat = min(max(beat, workers / self.per_second), MAX_SPREAD * self.interval)
        if beat < self.beat:
            # A worker hears of the shorter beat at its next ping (within one new beat)
            # and beats within NOTICE of it; its last beat may be one old beat back.
            kept = self.beat + 3 * beat + NOTICE
            self._floor = (kept, now + kept)
        self.beat = beat
        floor, until = self._floor
        self.silence = max(self.timeout * beat / self.interval, floor if now < until else 0.0)
