"""What the control operations work with: the collaborators ``Hub.__init__`` makes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.broker.state import BrokerState
from dlhub_hpc.pilot.service import PilotService
from dlhub_hpc.registry.store import Registry
from dlhub_hpc.security.hub import HubSecurity

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubParts:
    """One hub's collaborators. ``state`` is read on the loop thread only (the handlers
    run there); what is known only once the hub runs comes through the callables."""

    config: HubConfig
    registry: Registry
    security: HubSecurity
    state: BrokerState
    pilots: PilotService
    executor: ThreadPoolExecutor  # slow work, off the loop, one job at a time
    worker_address: Callable[[], str]  # the address workers reach, once bound
    about: Callable[[], dict[str, Any]]  # addresses, uptime and pid, for status
    stop: Callable[[str], None]  # stop the hub's loop, with the reason
