"""A request's ``parameters`` (keyword arguments merged over a method's defaults, as
DLHub's ``run(..., parameters=)``): for Python function, class-method and scikit-learn
servables any name is passed on, as DLHub did (a function that does not take it fails per
item, naming it); for other types the names are checked against what the method declares.
They are part of the memo key, so answers for other parameters are never shared."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from dlhub_hpc.broker.events import ServableInfo
from dlhub_hpc.errors import InvalidInput
from dlhub_hpc.servable.shims.calling import parameters_key

logger = logging.getLogger(__name__)


def check_parameters(info: ServableInfo, method: str, parameters: dict[str, Any] | None
                     ) -> dict[str, Any] | None:
    """``parameters`` (None for none) if ``info`` takes any keyword, or every name is one
    ``method`` declares; else ``InvalidInput`` naming the unknown ones and the allowed ones."""
    if not parameters:
        return None
    if info.any_keywords:
        return parameters
    allowed = info.params.get(method, ())
    unknown = sorted(set(parameters) - set(allowed))
    if unknown:
        may = f"it takes {', '.join(allowed)}" if allowed else "it declares none"
        raise InvalidInput(
            f"{info.name}@{info.version}.{method} has no parameters {', '.join(unknown)}; "
            f"{may} (a method's parameters are its record's defaults)",
            path="parameters", unknown=unknown, allowed=list(allowed),
        )
    return parameters


def memo_method(method: str, parameters: dict[str, Any] | None) -> str:
    """What the memo key names as the method: the method, with a digest of its parameters
    when a request overrides any (the plain request's key is unchanged)."""
    if not parameters:
        return method
    try:
        packed = parameters_key(parameters)
    except TypeError as exc:  # not something a worker could take either
        raise InvalidInput(f"parameters: {exc}", path="parameters") from None
    return f"{method}\0{hashlib.sha256(packed).hexdigest()}"
