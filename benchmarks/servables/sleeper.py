"""Servables with a small fixed cost per item (``sum(x)`` after sleeping), for fairness.

A no-op answers a flood as fast as the hub can hand it out, so no backlog builds; a
millisecond per item (a batch of four costs four) keeps a real queue behind the workers,
which is what the fairness benchmark needs to measure who waits in it.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.servables.floats import write_float_servable


def write_sleeper(root: Path, name: str, seconds: float, *, owner: str = "bench",
                  tag: str = "fairbench") -> Path:
    """A servable ``name`` in ``root/name`` answering ``sum(x)`` after ``seconds`` per item
    (a plain function: a batch of ``n`` costs ``n * seconds``), tagged ``tag``."""
    model = (f"import time\n\n\n"
             f"def run(x):\n    time.sleep({seconds!r})\n    return float(sum(x))\n")
    return write_float_servable(root, name, title=f"Sleeping sum {name}", model=model, tag=tag,
                                owner=owner)
