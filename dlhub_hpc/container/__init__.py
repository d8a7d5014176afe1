"""Portable servable containers: definition files, image builds, and runtimes.

``runtimes`` (command builders) is imported eagerly and is cheap; the builder and the
launch helpers load on first use, so site profiles can check a runtime name without them.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from dlhub_hpc.container.runtimes import ContainerRuntime, get_runtime

if TYPE_CHECKING:
    from dlhub_hpc.container.build import BuildResult, ImageBuilder
    from dlhub_hpc.container.definition import BuildOptions
    from dlhub_hpc.container.launch import pick_image, runnable_image

logger = logging.getLogger(__name__)

_LAZY = {
    "BuildOptions": "dlhub_hpc.container.definition",
    "BuildResult": "dlhub_hpc.container.build",
    "ImageBuilder": "dlhub_hpc.container.build",
    "pick_image": "dlhub_hpc.container.launch",
    "runnable_image": "dlhub_hpc.container.launch",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dlhub_hpc.container' has no attribute {name!r}")


__all__ = [
    "BuildOptions",
    "BuildResult",
    "ContainerRuntime",
    "ImageBuilder",
    "get_runtime",
    "pick_image",
    "runnable_image",
]
