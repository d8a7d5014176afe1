"""The on-demand part of the broker's state machine (``BrokerState`` inherits it): when a
request starts a servable, the loop's turn of the board (``ondemand.py``), and how far a
start got as callers and ``status`` see it, be it on demand or in a pool.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from dlhub_hpc.broker.events import Action, InFlight, ServableInfo, ServableKey
from dlhub_hpc.broker.ondemand import NOT_STARTED, OnDemand, find_request
from dlhub_hpc.broker.pool_state import PoolDispatch

logger = logging.getLogger(__name__)


class OnDemandStages(PoolDispatch):
    """Hooks the state calls for starts on demand; the state's own tables are shared."""

    ondemand: OnDemand
    _in_flight: Counter[ServableKey]
    _batches: dict[int, InFlight]

    if TYPE_CHECKING:  # the state's (worker_state.py), found first in its MRO
        def _live_workers(self, servable: ServableKey) -> int: ...

    def _on_demand_request(self, info: ServableInfo, now: float, out: list[Action]) -> None:
        """A request for ``info`` queued: start it when nothing serves it (not even a pool
        pilot at zero) and its profile says how. Only on a hub that starts some on demand."""
        serves = self._live_workers(info.key) or self._pool_pilot_serves(info.key)
        start = None if serves else self.ondemand.wanted(info.key, now)
        self.ondemand.used(info.key, now)
        if start is not None:
            out.append(start)

    def _on_demand_tick(self, now: float, out: list[Action]) -> None:
        """Failed starts answer their waiting callers; deferred starts and idle releases."""
        for key, error in self.ondemand.take_failures():
            self._fail_queued(key, error, now, out)

        def waiting(key: ServableKey) -> int:
            return self._in_flight[key] + sum(q.live for q in self._queues.get(key, {}).values())

        out.extend(self.ondemand.tick(now, waiting, self._live_workers))

    def start_stage(self, key: ServableKey) -> str | None:
        """How far ``key``'s start got: on demand, or in a pool (a pooled worker loads it,
        or a pool pilot at zero starts its block); None when it serves or is not starting."""
        if any(w.servable == key and w.state == "loading" for w in self._workers.values()):
            if self.ondemand.stage(key) or self._pool_loading(key):
                return "model loading"
            return None
        if self._live_workers(key):
            return None
        return self.ondemand.stage(key) or self._pool_pilot_stage(key)

    def starting(self) -> dict[str, dict[str, Any]]:
        """The starts on demand under way, and the servables requests wait for that none
        starts (their own profile refused), by ``name@version`` (``OnDemand.view``)."""
        waiting: dict[ServableKey, float] = {}
        for key, methods in self._queues.items():
            arrived = [next((p.arrived for p in q.items if not p.done), None)
                       for q in methods.values() if q.live]
            if any(a is not None for a in arrived):
                waiting[key] = min(a for a in arrived if a is not None)
        return self.ondemand.view(self.start_stage, waiting)

    def request_status(self, user: str, request_id: str) -> dict[str, Any] | None:
        """``user``'s unanswered request: queued or running, its servable's start stage, and
        why none starts it when it is ``not started`` (``reason``; else None)."""
        found = find_request(self._queues, self._batches.values(), user, request_id)
        if found is None:
            return None
        p, where = found
        stage = self.start_stage(p.servable)
        why = self.ondemand.refusal(p.servable) if stage == NOT_STARTED else None
        return {"request_id": request_id, "servable": f"{p.servable[0]}@{p.servable[1]}",
                "state": where, "stage": stage, "reason": None if why is None else why.reason}
