"""The embedded default: workers as local processes through Parsl's ``LocalProvider``."""

from __future__ import annotations

import logging

from parsl.launchers import SingleNodeLauncher
from parsl.providers import LocalProvider

logger = logging.getLogger(__name__)


def local_provider(worker_init: str = "") -> LocalProvider:
    """A ``LocalProvider`` whose blocks each run ``tasks_per_node`` workers on this machine."""
    return LocalProvider(
        launcher=SingleNodeLauncher(debug=False),
        init_blocks=0,
        min_blocks=0,
        max_blocks=64,
        worker_init=worker_init,
    )
