"""The package's version and folder, for parts that ship it (images) without importing it."""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"
PACKAGE_DIR = Path(__file__).resolve().parent  # the dlhub_hpc source tree, copied into images
