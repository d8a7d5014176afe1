"""Portable servable containers: definition files, image builds, and runtimes."""

from __future__ import annotations

import logging

from dlhub_hpc.container.runtimes import ContainerRuntime, get_runtime

logger = logging.getLogger(__name__)

__all__ = ["ContainerRuntime", "get_runtime"]
