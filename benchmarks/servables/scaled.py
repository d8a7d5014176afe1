"""Servables of the same code and different weights (``weight * sum(x)``), for pools.

The pools benchmark publishes hundreds of them and the pool tests a few: only the weights
file tells them apart, so a pool's workers load and evict them like real models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.servables.floats import write_float_servable

MODEL = """\
import pathlib

import numpy as np

_W = np.load(pathlib.Path(__file__).with_name("weights.npy"))


def run(x):
    return float(_W[0] * sum(x))
"""


def write_scaled(root: Path, name: str, weight: float, nbytes: int, tag: str, *,
                 owner: str = "bench", max_batch_size: int = 8) -> Path:
    """A servable ``name`` in ``root/name`` answering ``weight * sum(x)``, its weights
    ``nbytes`` of ``weight`` in weights.npy, tagged ``tag`` (a ``tag:`` pool's)."""
    d = write_float_servable(root, name, title=f"Scaled sum {name}", model=MODEL, tag=tag,
                             owner=owner, max_batch_size=max_batch_size)
    np.save(d / "weights.npy", np.full(max(1, nbytes // 8), weight))
    return d
