"""Why a servable's workers could not load it, kept until a new worker tries again.

When the last worker of a servable fails to load it (a bundle whose digest no longer
matches, an import error in the model's code), its callers are answered with that error at
once, typed as the worker (or hub) reported it, instead of waiting for their deadline.
"""

from __future__ import annotations

import logging
from typing import Any

from dlhub_hpc.errors import ServableError, ServableLoadError, error_from_wire

logger = logging.getLogger(__name__)

ServableKey = tuple[str, int]


def load_error(name: str, version: int, record: dict[str, Any]) -> dict[str, Any]:
    """The wire error for a failed load of ``name@version``: the reported type when it is a
    servable error (``BundleDigestMismatch``, ``ServableLoadError`` ...), else
    ``ServableLoadError``; the reported message, prefixed with the servable."""
    kind: type[ServableError] = ServableLoadError
    reported = error_from_wire({"type": record.get("type")})  # the class only: no details
    if isinstance(reported, ServableError):
        kind = type(reported)
    given = record.get("details")
    details = dict(given) if isinstance(given, dict) else {}
    details.update(servable=name, version=version)
    message = str(record.get("message") or "no reason given")
    return {"type": kind.__name__,
            "message": f"{name}@{version} could not be loaded by its worker: {message}",
            "details": details}


class LoadFailures:
    """The last load error of each servable whose workers all failed to load it."""

    def __init__(self) -> None:
        self._errors: dict[ServableKey, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"LoadFailures({sorted(self._errors)!r})"

    def record(self, key: ServableKey, record: dict[str, Any]) -> dict[str, Any]:
        """Remember (and return) the wire error for ``key``'s failed load."""
        error = self._errors[key] = load_error(key[0], key[1], record)
        return error

    def get(self, key: ServableKey) -> dict[str, Any] | None:
        return self._errors.get(key)

    def by_ref(self) -> dict[str, dict[str, Any]]:
        """Every held error by ``name@version`` (what ``status`` shows, for wait_for_workers)."""
        return {f"{name}@{version}": dict(error) for (name, version), error in self._errors.items()}

    def clear(self, key: ServableKey) -> None:
        """A new worker tries to load ``key``: its callers wait for it again."""
        self._errors.pop(key, None)

    def forget(self, name: str) -> None:
        """``name`` changed (a new version, a new status): its old errors may not hold."""
        for key in [k for k in self._errors if k[0] == name]:
            del self._errors[key]
