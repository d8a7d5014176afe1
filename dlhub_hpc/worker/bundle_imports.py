"""Each pooled servable's own bundle modules, in place while it loads and runs.

Servables of one pooled worker may have modules of the same name (``model``, ``helper``)
with different code, and may import one lazily, inside a call. So the worker keeps one
servable's imports in place at a time: its bundle folders first on ``sys.path`` and its
modules in ``sys.modules`` under their names. Switching servables puts the previous one's
modules aside (with any it imported since) and the next one's in; a batch of the servable
already in place costs nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class BundleImports:
    """What one servable imported from its bundle: the folders its load put on ``sys.path``
    (the bundle's, and any its code added), and the modules from them, by name."""

    paths: list[str] = field(default_factory=list)
    modules: dict[str, ModuleType] = field(default_factory=dict)

    def release(self) -> None:
        """Empty the modules (an evicted servable's): a module's functions and its globals
        refer to each other, a cycle only a full garbage collection (tens of ms in a worker)
        would free; emptied, its weights go as soon as the shim does."""
        for module in self.modules.values():
            module.__dict__.clear()
        self.modules.clear()


def module_location(module: Any) -> str:
    """Where a module was imported from: its file, or a namespace package's first folder.
    Read from its ``__dict__``: a module's own ``__getattr__`` may import things."""
    namespace = getattr(module, "__dict__", None)
    if not isinstance(namespace, dict):
        return ""
    where = namespace.get("__file__")
    if isinstance(where, str):
        return where
    search = namespace.get("__path__")
    if search is not None:  # a namespace package: no file
        with contextlib.suppress(Exception):
            return str(next(iter(search), ""))
    return ""


def gather(imports: BundleImports, known: set[str]) -> None:
    """Add to ``imports.modules`` those of ``sys.modules`` from its folders, looking only at
    names not ``known``: a set difference, where a look at each module of the process would
    cost milliseconds (thousands of modules, with numpy and scipy) per switch."""
    if not imports.paths:
        return
    inside = tuple(os.path.join(p, "") for p in imports.paths)
    for name in sys.modules.keys() - known:
        module = sys.modules[name]
        if module_location(module).startswith(inside):
            imports.modules[name] = module


class BundleSwitch:
    """Keeps one servable's ``BundleImports`` in place, and remembers which."""

    def __init__(self) -> None:
        self.current: BundleImports | None = None
        self._displaced: dict[str, Any] = {}  # what its modules' names held before
        self._known: set[str] = set()  # sys.modules' names once it was in place

    def enter(self, imports: BundleImports) -> None:
        """Put ``imports`` in place for the code that runs next; nothing to do if it is."""
        if imports is self.current:
            return
        self.leave()
        sys.path[:] = imports.paths + [p for p in sys.path if p not in imports.paths]
        for name, module in imports.modules.items():
            if name in sys.modules:
                self._displaced[name] = sys.modules[name]
            sys.modules[name] = module
        self._known = set(sys.modules) if imports.paths else set()  # none to gather else
        self.current = imports

    def leave(self) -> None:
        """Put the servable in place aside: its modules (those imported since too) leave
        ``sys.modules`` and its folders ``sys.path``; what they displaced comes back."""
        imports, self.current = self.current, None
        if imports is None:
            return
        gather(imports, self._known)
        for name, module in imports.modules.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
        sys.path[:] = [p for p in sys.path if p not in imports.paths]
        sys.modules.update(self._displaced)
        self._displaced.clear()

    @contextlib.contextmanager
    def loading(self) -> Iterator[BundleImports]:
        """Load a servable with no other's imports in place; what its load put on
        ``sys.path`` is its own. It stays in place if the load succeeds, else is put aside."""
        self.leave()
        before = set(sys.path)
        self._known = set(sys.modules)
        imports = BundleImports()
        loaded = False
        try:
            yield imports
            loaded = True
        finally:
            imports.paths = [p for p in sys.path if p not in before]
            self.current = imports
            if loaded:
                gather(imports, self._known)
                self._known = set(sys.modules)
            else:  # nothing will run it: its modules go now
                self.leave()

    def drop(self, imports: BundleImports) -> None:
        """Let an evicted servable's imports go, emptied."""
        if imports is self.current:
            self.leave()
        imports.release()
