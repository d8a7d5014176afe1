"""A pooled worker's loaded servables: several at once, within a memory budget, LRU out.

The hub tells a pooled worker to load a servable (``Assign``) while it holds others and
names the servable of each batch. Before a load the least recently used models are let go
until the new one's first estimate (its bundle size) fits the budget; after it, until what
it measured fits. A model's size is the growth of the process's resident set while it
loaded, what it allocated and still holds (numpy arrays and Python objects, traced while
it loads: memory reused from an evicted model does not show as growth), or its bundle
size, whichever is largest. The ``Ready`` report says what it holds, least recently used first,
and what it evicted, so the hub's books mirror it (``broker/pools.py``).

A Python process cannot unload a package: the hub keeps servables whose pinned packages
conflict off a worker that imported another version. A bundle's own modules are another
matter: servables of the same code (``model.py`` in each) must each get their own, so each
servable's bundle folder and modules are in place while it loads and runs, and only then
(``bundle_imports.py``): a call may import a module of its bundle lazily, and gets its own.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import resource
import time
import tracemalloc
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlhub_hpc.errors import ServableLoadError
from dlhub_hpc.protocol import Assign
from dlhub_hpc.servable.shims import Shim
from dlhub_hpc.servable.shims.calling import ItemParameters
from dlhub_hpc.servable.spec import ServableSpec
from dlhub_hpc.worker.bundle_imports import BundleImports, BundleSwitch
from dlhub_hpc.worker.runner import Runner, WireResult, check_ranks, load_assigned, run_shim

logger = logging.getLogger(__name__)


def resident_bytes() -> int:
    """This process's resident set now (Linux), else its peak (other systems)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextlib.contextmanager
def traced() -> Iterator[Callable[[], int]]:
    """Bytes allocated meanwhile and still held (Python objects and numpy arrays): memory
    freed by an evicted model and reused does not show in the resident set's growth."""
    held = [0]
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield lambda: held[0]
    finally:
        held[0] = max(0, tracemalloc.get_traced_memory()[0] - base)
        if started:
            tracemalloc.stop()


@dataclass(slots=True)
class Loaded:
    spec: ServableSpec
    shim: Shim
    nbytes: int
    imports: BundleImports  # its bundle's own: in place while it runs, emptied when evicted


class PoolRunner(Runner):
    """Runs whichever loaded servable the batch names (``select``), in this process."""

    def __init__(self, cache_dir: Path, budget: int) -> None:
        self.cache_dir = cache_dir
        self.budget = budget
        self.models: OrderedDict[str, Loaded] = OrderedDict()  # least recently used first
        self.selected: str | None = None
        self.bundles = BundleSwitch()  # whose bundle modules are in place
        self.last_report: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"PoolRunner(cache_dir={str(self.cache_dir)!r}, budget={self.budget})"

    @property
    def held_bytes(self) -> int:
        return sum(m.nbytes for m in self.models.values())

    def load(self, assign: Assign) -> ServableSpec:
        """Load ``assign``'s servable beside the others; ``last_report`` says what happened."""
        ref = f"{assign.servable}@{assign.version}"
        spec = ServableSpec.from_data(assign.spec, ref)
        check_ranks(spec, self.ranks)
        evicted: list[str] = []
        started = time.perf_counter()
        if ref in self.models:  # sent again: it is the most recent now, nothing to load
            self.models.move_to_end(ref)
        else:
            estimate = len(assign.bundle)
            evicted += self._evict(self.budget - estimate)
            before = resident_bytes()
            with self.bundles.loading() as imports, traced() as allocated:
                spec, shim = load_assigned(assign, self.cache_dir)
            nbytes = max(resident_bytes() - before, allocated(), estimate)
            self.models[ref] = Loaded(spec, shim, nbytes, imports)
            evicted += self._evict(self.budget, keep=ref)
        self.last_report = {
            "loaded": ref, "nbytes": self.models[ref].nbytes, "evicted": evicted,
            "seconds": time.perf_counter() - started,  # the load's own time, for status
            "holds": [[r, m.nbytes] for r, m in self.models.items()],
        }
        return spec

    def _evict(self, room: int, keep: str | None = None) -> list[str]:
        """Let the least recently used go until what is held fits in ``room`` bytes."""
        gone = []
        while self.models and self.held_bytes > max(room, 0):
            ref = next(iter(self.models))
            if ref == keep:
                break
            self.bundles.drop(self.models.pop(ref).imports)  # its arrays go now, not at a gc
            gone.append(ref)
        if gone:
            gc.collect(0)  # the youngest objects only: a full collection costs tens of ms
            logger.info("evicted %s (budget %s bytes)", ", ".join(gone), self.budget)
        return gone

    def select(self, ref: str | None) -> None:
        """The servable the next batch runs (the hub names it in the batch)."""
        self.selected = ref

    def run(self, method: str, payloads: list[Any],
            parameters: ItemParameters = None) -> list[WireResult]:
        model = self.models.get(self.selected or "")
        if model is None:  # the hub's books and ours disagree: say so per item
            error = ServableLoadError(
                f"{self.selected} is not loaded on this pooled worker; it holds "
                f"{sorted(self.models)}", servable=self.selected or "").to_wire()
            return [[False, error] for _ in payloads]
        self.models.move_to_end(self.selected or "")
        self.bundles.enter(model.imports)  # a no-op when its modules are in place already
        return run_shim(model.shim, method, payloads, parameters)

    def close(self) -> None:
        """Put the bundle modules in place aside: the process may load other code."""
        self.bundles.leave()
