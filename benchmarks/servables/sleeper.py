"""Servables with a small fixed cost per item (``sum(x)`` after sleeping), for fairness.

A no-op answers a flood as fast as the hub can hand it out, so no backlog builds; a
millisecond per item (a batch of four costs four) keeps a real queue behind the workers,
which is what the fairness benchmark needs to measure who waits in it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_sleeper(root: Path, name: str, seconds: float, *, owner: str = "bench",
                  tag: str = "fairbench") -> Path:
    """A servable ``name`` in ``root/name`` answering ``sum(x)`` after ``seconds`` per item
    (a plain function: a batch of ``n`` costs ``n * seconds``), tagged ``tag``."""
    d = root / name
    d.mkdir(parents=True)
    (d / "servable.yaml").write_text(textwrap.dedent(f"""\
        datacite:
          title: Sleeping sum {name}
          creators: ["Bench, B"]
          subjects: [{tag}]
        dlhub:
          owner: {owner}
          name: {name}
        servable:
          type: python_function
          methods:
            run:
              function: "model:run"
              input: {{type: list, item_type: {{type: float}}}}
              output: {{type: float}}
        """))
    (d / "model.py").write_text(textwrap.dedent(f"""\
        import time


        def run(x):
            time.sleep({seconds!r})
            return float(sum(x))
        """))
    return d
