"""Model names: a servable ``owner/name`` is the model ``owner/name``.

In a URL the name is two path segments (``/v2/models/alice/add/infer``, as ``tritonclient``
sends it) or one with the slash percent-encoded (``/v2/models/alice%2Fadd/infer``). Owner
and name are ``[a-z0-9][a-z0-9_.-]*``, so either form is URL-safe as it stands. A version is
the servable's version; a method is the request's ``parameters.method`` (default: the
servable's default method).
"""

from __future__ import annotations

import logging

from dlhub_hpc.errors import InvalidInput
from dlhub_hpc.servable.spec import MAX_VERSION

logger = logging.getLogger(__name__)


def servable_of(match: dict[str, str]) -> str:
    """The servable a route's match names (``owner`` and ``name``, or ``model``)."""
    if "model" in match:
        name = match["model"]
        if name.count("/") != 1:
            raise InvalidInput(f"model name {name!r} should be owner/name (in a URL: "
                               "/v2/models/OWNER/NAME or /v2/models/OWNER%2FNAME)")
        return name
    return f"{match['owner']}/{match['name']}"


def version_of(match: dict[str, str]) -> int | None:
    raw = match.get("version")
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19 and 1 <= int(raw) <= MAX_VERSION):
        raise InvalidInput(f"model version {raw!r} should be a positive integer")
    return int(raw)


def reference(servable: str, version: int | None) -> str:
    return servable if version is None else f"{servable}@{version}"
