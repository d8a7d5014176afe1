"""Python functions in a module of the bundle."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dlhub_hpc.errors import ServableLoadError
from dlhub_hpc.servable.shims.base import Shim, import_attr
from dlhub_hpc.servable.shims.calling import dlhub_call
from dlhub_hpc.servable.spec import ServableSpec

logger = logging.getLogger(__name__)


def _import_function(ref: str, root: Path) -> Callable[[Any], Any]:
    func = import_attr(ref, root)
    if not callable(func):
        raise ServableLoadError(f"{ref} is not callable")
    return func


class PythonFunctionShim(Shim):
    """Each method is a plain function in a module of the bundle (or an installed module, as
    DLHub's static methods such as ``numpy:max``), called with its default parameters."""

    @classmethod
    def load(cls, spec: ServableSpec, root: Path) -> Shim:
        calls = {
            name: dlhub_call(_import_function(str(m.function), root), m)
            for name, m in spec.servable.methods.items()
        }
        return cls(spec, calls)
