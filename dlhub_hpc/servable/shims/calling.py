"""How DLHub calls a servable's function: default ``parameters`` as keyword arguments,
``unpack`` (a list or tuple input as positional arguments) and ``autobatch`` (an input
list, the function called once per element). Shims wrap each method's callable with
``dlhub_call`` so a record imported from DLHub answers as it did there.

Every such call but the plain one carries ``with_parameters(overrides)``: the same call with keyword
arguments merged over the method's defaults (a request's ``parameters``, as DLHub's
``run(..., parameters=)``, which passed any keyword the caller gave; a function that does
not take one fails per item, naming it). ``overridden`` finds it on any shim's call."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from dlhub_hpc.errors import InvalidInput
from dlhub_hpc.servable.spec import MethodSpec

logger = logging.getLogger(__name__)

Call = Callable[[Any], Any]
# the servable types whose calls take any keyword a request passes (as DLHub's shims did)
KEYWORD_TYPES = frozenset({"python_function", "python_class_method", "sklearn"})


def dlhub_call(func: Callable[..., Any], method: MethodSpec,
               overrides: dict[str, Any] | None = None) -> Call:
    """``func`` called on one input as DLHub's home_run shims call it, with the method's
    default parameters, ``overrides`` replacing some of them."""
    params = dict(method.parameters) | (overrides or {})
    if not (params or method.unpack or method.autobatch):
        return func  # the plain call: nothing to add (``Shim.call_for`` wraps it for overrides)

    def one(x: Any) -> Any:
        if not method.unpack:
            return named(func, x, params, overrides)
        if not isinstance(x, list | tuple):
            raise InvalidInput(f"input should be a list or tuple of arguments (the method "
                               f"unpacks it), got {type(x).__name__}", path="input")
        return named(func, x, params, overrides, unpack=True)

    call: Any = one
    if method.autobatch:
        def each(x: Any) -> list[Any]:
            if not isinstance(x, list | tuple):
                raise InvalidInput(f"input should be a list (the method runs once per "
                                   f"element), got {type(x).__name__}", path="input")
            return [one(e) for e in x]

        call = each
    return with_parameters(call, lambda more: dlhub_call(func, method,
                                                         (overrides or {}) | more))


def named(func: Callable[..., Any], x: Any, params: dict[str, Any],
          overrides: dict[str, Any] | None, unpack: bool = False) -> Any:
    """``func`` called on ``x``; a ``TypeError`` names the request's parameters (a builtin
    says only "takes no keyword arguments")."""
    try:
        return func(*x, **params) if unpack else func(x, **params)
    except TypeError as exc:
        if not overrides:
            raise
        raise TypeError(f"{exc} (the request passed parameters "
                        f"{', '.join(sorted(overrides))})") from exc


def with_parameters(call: Call, make: Callable[[dict[str, Any]], Call]) -> Call:
    """Mark ``call`` as taking overrides: ``make(overrides)`` builds the overridden call."""
    call.with_parameters = make  # type: ignore[attr-defined]
    return call


def overridden(call: Call, parameters: dict[str, Any] | None, where: str) -> Call:
    """``call`` with ``parameters`` overriding its defaults; ``InvalidInput`` if it takes
    none (the hub checks names against the method's declared parameters first)."""
    if not parameters:
        return call
    make = getattr(call, "with_parameters", None)
    if make is None:
        raise InvalidInput(f"{where} declares no parameters to override; drop 'parameters' "
                           f"(got {sorted(parameters)})", path="parameters")
    return make(parameters)


ItemParameters = list[dict[str, Any] | None] | None  # a batch's, one per item


def _packable(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return [str(obj.dtype), list(obj.shape), obj.tobytes()]
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"a {type(obj).__name__} cannot be a parameter")


def parameters_key(parameters: dict[str, Any] | None) -> bytes:
    """The same bytes for equal parameters, whatever their order (b'' for none)."""
    if not parameters:
        return b""
    return msgpack.packb(sorted(parameters.items()), default=_packable, use_bin_type=True)


def group_by_parameters(parameters: list[dict[str, Any] | None]
                        ) -> dict[bytes, tuple[dict[str, Any] | None, list[int]]]:
    """Item indexes by equal parameters (in order), so each set runs as one call."""
    groups: dict[bytes, tuple[dict[str, Any] | None, list[int]]] = {}
    for i, params in enumerate(parameters):
        groups.setdefault(parameters_key(params), (params or None, []))[1].append(i)
    return groups
