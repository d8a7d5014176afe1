"""How DLHub calls a servable's function: default ``parameters`` as keyword arguments,
``unpack`` (a list or tuple input as positional arguments) and ``autobatch`` (an input
list, the function called once per element). Shims wrap each method's callable with
``dlhub_call`` so a record imported from DLHub answers as it did there."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from dlhub_hpc.errors import InvalidInput
from dlhub_hpc.servable.spec import MethodSpec

logger = logging.getLogger(__name__)


def dlhub_call(func: Callable[..., Any], method: MethodSpec) -> Callable[[Any], Any]:
    """``func`` called on one input as DLHub's home_run shims call it."""
    params = dict(method.parameters)
    if not (params or method.unpack or method.autobatch):
        return func  # the plain call: nothing to add

    def one(x: Any) -> Any:
        if not method.unpack:
            return func(x, **params)
        if not isinstance(x, list | tuple):
            raise InvalidInput(f"input should be a list or tuple of arguments (the method "
                               f"unpacks it), got {type(x).__name__}", path="input")
        return func(*x, **params)

    if not method.autobatch:
        return one

    def each(x: Any) -> list[Any]:
        if not isinstance(x, list | tuple):
            raise InvalidInput(f"input should be a list (the method runs once per element), "
                               f"got {type(x).__name__}", path="input")
        return [one(e) for e in x]

    return each
