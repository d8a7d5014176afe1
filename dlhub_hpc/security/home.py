"""The hub's home is private: only the hub's user may list or read it.

It holds the registry (every private servable's bundle), the hub's keys and ``hub.json``.
With the home 0700 nothing inside it is reachable by other users, whatever mode the files
inside were made with, so the files need no umask of their own.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from dlhub_hpc.security.keys import _private_dirs

logger = logging.getLogger(__name__)


def private_home(home: Path) -> None:
    """Make ``home`` (and its missing parents) 0700; tighten an existing one that group or
    others may read or enter."""
    _private_dirs(home)
    mode = stat.S_IMODE(home.stat().st_mode)
    if mode & 0o077:
        logger.warning("the hub's home %s was mode %o, open to other users; made it 0700",
                       home, mode)
        os.chmod(home, 0o700)
