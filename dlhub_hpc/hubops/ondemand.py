"""Starts and releases pilots for servables started on demand (``broker/ondemand.py``).

The broker's loop emits ``StartServable`` when a request finds no worker for a servable
that has a default profile (HubConfig ``start_on_demand``, or the servable's own
``default_profile`` where ``servable_profiles`` allows it), and ``ReleaseServable`` when
one it started sat idle for ``idle_release_after``. This starter carries them out on the
hub's executor, through the same ``PilotService`` and Parsl providers as ``pilot start``:
the workers run as the servable's owner, confined as ``pilot start`` would confine them,
within ``max_workers_per_owner`` and ``max_nodes_per_pilot``. Profiles come from the hub's
own config (the admin's choice), or are installed ones, by name, that the admin lets
servables choose, so the trust rule of installed profiles holds.

It reports each stage to the board: ``queued at scheduler`` once the block is submitted,
``job running`` once the provider says it runs (seen on the scaling thread's ticks), and a
failure (a refused start, a halted pilot) as the error the waiting callers get.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.broker.events import ReleaseServable, ServableKey, StartServable
from dlhub_hpc.broker.ondemand import OnDemand
from dlhub_hpc.broker.pipeline import refuse_workers
from dlhub_hpc.errors import ConfigError, DlhubHpcError, PilotError
from dlhub_hpc.hubops.limits import check_pilot_nodes, check_worker_limit
from dlhub_hpc.hubops.parts import HubParts
from dlhub_hpc.hubops.pilots import build_pilot
from dlhub_hpc.pilot.pilots import Pilot
from dlhub_hpc.pilot.profiles import load_profile, profile_paths
from dlhub_hpc.pilot.scaling import TERMINAL

logger = logging.getLogger(__name__)

__all__ = ["OnDemandStarter", "check_servable_profiles", "has_profile", "request_status"]


def has_profile(name: str) -> bool:
    """Is ``name`` an installed site profile (or the embedded ``local``)? By name only: a
    servable's spec may not point the hub at a file."""
    return name == "local" or name in profile_paths()


def check_servable_profiles(config: HubConfig) -> None:
    """``ConfigError`` naming the setting for a ``servable_profiles`` entry the hub does not
    have: a typo would otherwise refuse every servable that names it."""
    unknown = [n for n in config.servable_profiles if n != "*" and not has_profile(n)]
    if unknown:
        known = ", ".join(sorted({"local", *profile_paths()}))
        raise ConfigError(f"servable_profiles: no site profile named {', '.join(unknown)}; "
                          f"known profiles: {known} (by name, as 'dlhub-hpc profiles list' "
                          "shows them)", setting="servable_profiles")


class OnDemandStarter:
    """Called by the broker's loop with each start or release; the work runs off it."""

    def __init__(self, parts: HubParts, board: OnDemand) -> None:
        self.parts = parts
        self.board = board
        self._mine: dict[str, ServableKey] = {}  # pilot id -> the servable it was started for
        parts.pilots.observers.append(self.observe)

    def __repr__(self) -> str:
        return f"OnDemandStarter({self.board!r})"

    def __call__(self, action: StartServable | ReleaseServable) -> None:
        if isinstance(action, StartServable):
            self.parts.executor.submit(self._start, action)
        else:
            self.parts.executor.submit(self._release, action)

    def _start(self, action: StartServable) -> None:
        key = action.servable
        try:
            pilot = self._pilot_for(key, action.profile)
        except Exception as exc:
            error = exc if isinstance(exc, DlhubHpcError) else PilotError(
                f"starting {key[0]}@{key[1]} on demand failed: {type(exc).__name__}: {exc}")
            logger.warning("could not start %s@%s on demand: %s", *key, error.message)
            self.board.fail(key, PilotError(
                f"{key[0]}@{key[1]} has no worker and could not be started on demand with "
                f"profile {action.profile!r}: {error.message}", servable=key[0],
                profile=action.profile).to_wire())
            return
        self._mine[pilot.pilot_id] = key
        self.board.set_stage(key, "queued at scheduler", time.monotonic(), pilot.pilot_id)
        self.observe(pilot)  # a local job may run already

    def _pilot_for(self, key: ServableKey, profile_name: str) -> Pilot:
        """A pilot of ``key`` that has a live block: one started before, else a new one."""
        parts, ref = self.parts, f"{key[0]}@{key[1]}"
        for pilot in parts.pilots.all():
            if pilot.servable == ref and not pilot.halted:
                with pilot._lock:
                    live = [b for b in pilot.blocks.values() if b.state not in TERMINAL]
                if not live:  # its own scaling released every block: one more
                    pilot.submit_block("a request found no worker")
                return pilot
        record = parts.registry.get(*key)
        refuse_workers(record.spec)
        profile = load_profile(profile_name)
        owner = parts.security.access.owner(key[0])
        check_pilot_nodes(parts, owner, int(getattr(profile.provider, "nodes_per_block", 1) or 1),
                          profile.scaling.max_blocks)
        check_worker_limit(parts, owner, key[0], profile.workers * profile.scaling.max_blocks)
        launch = parts.security.worker_launch(key[0], profile.container.runtime != "none")
        pilot = build_pilot(parts, record, profile, launch)
        return parts.pilots.add(pilot)

    def observe(self, pilot: Pilot) -> None:
        """After a scaling tick: move the start's stage on, or fail it if the pilot halted."""
        key = self._mine.get(pilot.pilot_id)
        if key is None or self.board.pilot_of(key) != pilot.pilot_id:
            return
        if pilot.halted:
            self.board.fail(key, PilotError(
                f"the pilot started on demand for {key[0]}@{key[1]} halted: its jobs ended "
                f"before any worker connected; see 'dlhub-hpc pilot status' "
                f"({'; '.join(pilot.events[-2:])})", servable=key[0],
                pilot=pilot.pilot_id).to_wire())
            return
        with pilot._lock:
            states = [b.state for b in pilot.blocks.values()]
        if "RUNNING" in states:
            self.board.set_stage(key, "job running", time.monotonic())

    def _release(self, action: ReleaseServable) -> None:
        pilot_id = action.pilot
        if not pilot_id:
            return
        self._mine.pop(pilot_id, None)
        try:
            self.parts.pilots.stop([pilot_id])
        except PilotError as exc:
            logger.warning("could not release %s@%s: %s", *action.servable, exc.message)


def request_status(parts: HubParts, args: dict[str, Any]) -> dict[str, Any]:
    """The caller's own unanswered request: ``queued`` or ``running``, and the stage of its
    servable's start on demand (None when it serves); ``answered`` when the hub holds it no
    more (answered, expired, or never sent by this caller). A servable whose own default
    profile the hub refused is ``not started``, with the ``reason``."""
    request_id = str(args.get("request_id", ""))
    if not request_id:
        raise DlhubHpcError("request_status needs request_id: the id of a request you sent")
    found = parts.state.request_status(str(args.get("caller", "")), request_id)
    if found is None:
        return {"request_id": request_id, "state": "answered", "stage": None, "reason": None}
    return found
