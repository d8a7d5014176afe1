"""``settle_heap``: a load's objects frozen; what an earlier load left collected first."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import gc, weakref
from dlhub_hpc.worker.heap import settle_heap

class Model:  # a model that refers to itself: only the collector frees it
    def __init__(self):
        self.me = self

first = Model()
gone = weakref.ref(first)
settle_heap()
frozen = gc.get_freeze_count()
del first  # evicted, or replaced by a new version
second = Model()
settle_heap()
print(frozen > 0, gone() is None, gc.get_freeze_count() > 0)
"""


def test_a_load_is_frozen_and_what_went_before_is_freed() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.split() == ["True", "True", "True"]
