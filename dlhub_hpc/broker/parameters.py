"""A request's ``parameters`` (overrides of a method's default keyword parameters, as
DLHub's ``run(..., parameters=)``): checked against what the method declares, and part of
the memo key, so answers for other parameters are never shared."""

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
    """``parameters`` if every name is one ``method`` declares (None for none);
    ``InvalidInput`` naming the unknown ones and the allowed ones."""
    if not parameters:
        return None
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
