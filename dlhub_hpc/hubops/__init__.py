"""The hub's control operations (``publish``, ``status``, ``start_workers``, ``pilot_*``,
``shutdown``), one class per concern, over the collaborators ``Hub`` composes (``HubParts``).

Each handler runs on the broker's loop thread: it checks the caller and its arguments
there, and hands slow work (providers, the registry's bundle reads) to the hub's executor
as a future. Off the loop nothing reads the broker's state: what a reply needs of it is
taken on the loop, or read from the snapshot the loop publishes.
"""

from __future__ import annotations

import logging

from dlhub_hpc.broker.server import ControlHandler
from dlhub_hpc.hubops.hubwide import HubOps
from dlhub_hpc.hubops.ondemand import OnDemandStarter, request_status
from dlhub_hpc.hubops.parts import HubParts
from dlhub_hpc.hubops.pilots import PilotOps
from dlhub_hpc.hubops.pools import pool_counters
from dlhub_hpc.hubops.recovery import Recovery
from dlhub_hpc.hubops.workers import WorkerOps

logger = logging.getLogger(__name__)

__all__ = ["HubOps", "HubParts", "OnDemandStarter", "PilotOps", "Recovery", "WorkerOps",
           "control_operations"]


def control_operations(parts: HubParts) -> dict[str, ControlHandler]:
    """Every operation a hub answers, by name."""
    hub, workers, pilots = HubOps(parts), WorkerOps(parts), PilotOps(parts)
    return {
        "publish": hub.publish,
        "status": hub.status,
        "start_workers": workers.start_workers,
        "stop_workers": workers.stop_workers,
        "pilot_start": pilots.pilot_start,
        "pilot_status": pilots.pilot_status,
        "pilot_stop": pilots.pilot_stop,
        "request_status": lambda args: request_status(parts, args),
        "pool_counters": lambda args: pool_counters(parts, args),
        "images_changed": hub.images_changed,
        "shutdown": hub.shutdown,
        **parts.security.operations(),
    }
