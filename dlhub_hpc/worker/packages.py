"""Which versions of a servable's pinned packages this worker has installed.

A pooled worker reports them with each load (``Ready``): every servable in the process
imports the one installed version, so the hub checks a servable's pins against it
(``broker/pools.py``) rather than against what other servables pinned.
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import Any

logger = logging.getLogger(__name__)

MAX_PACKAGES = 64  # pins one load reports; the hub reads at most a few hundred


def pinned_packages(spec: Any) -> list[str]:
    """The package names a servable spec (as the hub sends it, plain data) pins."""
    dlhub = spec.get("dlhub") if isinstance(spec, dict) else None
    pins = dlhub.get("dependencies") if isinstance(dlhub, dict) else None
    return [p for p in pins if isinstance(p, str)][:MAX_PACKAGES] if isinstance(pins, dict) else []


def installed_versions(packages: list[str]) -> dict[str, str]:
    """Each of ``packages`` that is installed here, with its version."""
    found: dict[str, str] = {}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except (metadata.PackageNotFoundError, ValueError):  # not installed, or no name
            logger.debug("%s is not installed here", package)
    return found


__all__ = ["installed_versions", "pinned_packages"]
