"""Where a hub keeps its state, and what a running hub says about itself (``hub.json``).

Below the broker, so that clients, workers and security code find a hub without
importing the hub's own settings.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

STATE_FILE = "hub.json"


def read_hub_file(home: Path) -> dict[str, Any] | None:
    """What a running hub wrote about itself in ``home`` (addresses, pid), or None."""
    try:
        data: dict[str, Any] = json.loads((home / STATE_FILE).read_text())
        return data
    except (OSError, ValueError):
        return None


def default_home() -> Path:
    """Where the hub keeps its registry and state: ``$DLHUB_HPC_HOME`` or ``~/.dlhub-hpc``."""
    return Path(os.environ.get("DLHUB_HPC_HOME", Path.home() / ".dlhub-hpc"))
