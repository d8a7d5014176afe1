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
matter: servables of the same code (``model.py`` in each) must each get their own, so the
modules a load imported from its bundle leave ``sys.modules`` (and its folder ``sys.path``)
once it has loaded; its functions keep what they need. A pooled servable imports its own
modules at load, not later in a call.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import resource
import sys
import time
import tracemalloc
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from dlhub_hpc.errors import ServableLoadError
from dlhub_hpc.protocol import Assign
from dlhub_hpc.servable.shims import Shim
from dlhub_hpc.servable.shims.calling import ItemParameters
from dlhub_hpc.servable.spec import ServableSpec
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


@contextlib.contextmanager
def own_modules() -> Iterator[list[ModuleType]]:
    """Forget, afterwards, the modules imported from folders put on ``sys.path`` meanwhile
    (a bundle's), so the next servable's ``import model`` finds its own; the list yielded
    then holds them, for ``release``."""
    paths = set(sys.path)
    forgotten: list[ModuleType] = []
    try:
        yield forgotten
    finally:
        added = [p for p in sys.path if p not in paths]
        for name, module in list(sys.modules.items()):
            where = getattr(module, "__file__", None) or ""
            if any(where.startswith(os.path.join(p, "")) for p in added):
                forgotten.append(sys.modules.pop(name))
        sys.path[:] = [p for p in sys.path if p in paths]


def release(modules: list[ModuleType]) -> None:
    """Empty an evicted servable's own modules: a module's functions and its globals refer
    to each other, a cycle only a full garbage collection (tens of ms in a worker) would
    free; emptied, its weights go as soon as the shim does."""
    for module in modules:
        module.__dict__.clear()


@dataclass(slots=True)
class Loaded:
    spec: ServableSpec
    shim: Shim
    nbytes: int
    modules: list[ModuleType]  # its bundle's own, emptied when it is evicted


class PoolRunner(Runner):
    """Runs whichever loaded servable the batch names (``select``), in this process."""

    def __init__(self, cache_dir: Path, budget: int) -> None:
        self.cache_dir = cache_dir
        self.budget = budget
        self.models: OrderedDict[str, Loaded] = OrderedDict()  # least recently used first
        self.selected: str | None = None
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
            with own_modules() as modules, traced() as allocated:
                spec, shim = load_assigned(assign, self.cache_dir)
            nbytes = max(resident_bytes() - before, allocated(), estimate)
            self.models[ref] = Loaded(spec, shim, nbytes, modules)
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
            release(self.models.pop(ref).modules)  # its arrays go now, before the next load
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
        return run_shim(model.shim, method, payloads, parameters)
