"""Servables of the same code and different weights (``weight * sum(x)``), for pools.

The pools benchmark publishes hundreds of them and the pool tests a few: only the weights
file tells them apart, so a pool's workers load and evict them like real models.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np


def write_scaled(root: Path, name: str, weight: float, nbytes: int, tag: str, *,
                 owner: str = "bench", max_batch_size: int = 8) -> Path:
    """A servable ``name`` in ``root/name`` answering ``weight * sum(x)``, its weights
    ``nbytes`` of ``weight`` in weights.npy, tagged ``tag`` (a ``tag:`` pool's)."""
    d = root / name
    d.mkdir(parents=True)
    (d / "servable.yaml").write_text(textwrap.dedent(f"""\
        datacite:
          title: Scaled sum {name}
          creators: ["Bench, B"]
          subjects: [{tag}]
        dlhub:
          owner: {owner}
          name: {name}
        servable:
          type: python_function
          max_batch_size: {max_batch_size}
          methods:
            run:
              function: "model:run"
              input: {{type: list, item_type: {{type: float}}}}
              output: {{type: float}}
        """))
    (d / "model.py").write_text(textwrap.dedent("""\
        import pathlib

        import numpy as np

        _W = np.load(pathlib.Path(__file__).with_name("weights.npy"))


        def run(x):
            return float(_W[0] * sum(x))
        """))
    np.save(d / "weights.npy", np.full(max(1, nbytes // 8), weight))
    return d
