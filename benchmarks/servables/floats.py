"""One writer of the benchmarks' and pool tests' small servables: a ``python_function``
whose ``run`` takes a list of floats and answers a float, with the code given as
``model.py``'s text (``scaled.py``'s weights, ``sleeper.py``'s fixed cost, a test's gate).
"""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_float_servable(root: Path, name: str, *, title: str, model: str, tag: str,
                         owner: str = "bench", max_batch_size: int | None = None) -> Path:
    """A servable ``owner/name`` in ``root/name``: titled ``title``, tagged ``tag`` (what a
    ``tag:`` pool names), batches of ``max_batch_size`` (None: the spec's default), and
    ``model`` (source text that defines ``run(x)``) as its model.py."""
    d = root / name
    d.mkdir(parents=True)
    spec = textwrap.dedent(f"""\
        datacite:
          title: {title}
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
        """)
    if max_batch_size is not None:
        spec = spec.replace("  type: python_function\n",
                            f"  type: python_function\n  max_batch_size: {max_batch_size}\n")
    (d / "servable.yaml").write_text(spec)
    (d / "model.py").write_text(textwrap.dedent(model))
    return d
