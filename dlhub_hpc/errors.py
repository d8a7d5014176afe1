"""Errors raised by dlhub-hpc.

Every error is a :class:`DlhubHpcError`; each says what went wrong and what to change.
Errors that cross the wire (broker -> client) are rebuilt on the client side by name.

::

    DlhubHpcError
    ├── ConfigError              a hub, pilot or client setting is invalid
    ├── ProtocolError            a frame could not be decoded or has the wrong version
    ├── HubUnavailable           no hub answers at the address
    ├── ServableError
    │   ├── SpecError            a servable spec or directory is invalid
    │   ├── ServableNotFound     no servable with that name (and version)
    │   ├── MethodNotFound       the servable has no such method
    │   ├── InvalidInput         the input does not match the declared type
    │   ├── ServableLoadError    a worker could not load the servable
    │   └── ExecutionError       the model raised while running one item
    ├── ServingError
    │   ├── WorkerLost           the worker holding the request died, and no retry was possible
    │   ├── Timeout              the request's deadline passed
    │   └── Overloaded           the servable's queue is full
    ├── PilotError               workers could not be started or stopped
    ├── EndpointError            Globus Compute could not run the forwarding call on the endpoint
    └── LimitExceeded            a call or its result does not fit Globus Compute's limits
        └── RateLimited          more calls in a window than Globus Compute allows
"""

from __future__ import annotations

from typing import Any


class DlhubHpcError(Exception):
    """Root of every dlhub-hpc error. ``details`` carries machine-readable context."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "message": self.message, "details": self.details}


class ConfigError(DlhubHpcError):
    """A hub, pilot or client setting is invalid."""


class ProtocolError(DlhubHpcError):
    """A frame could not be decoded, or speaks another protocol version."""


class HubUnavailable(DlhubHpcError):
    """No hub answered at the configured address."""


class ServableError(DlhubHpcError):
    """Something about a servable, its spec or its input."""


class SpecError(ServableError):
    """A servable spec or servable directory is invalid."""


class ServableNotFound(ServableError):
    """No servable is published under that name (and version)."""


class MethodNotFound(ServableError):
    """The servable has no method of that name."""


class InvalidInput(ServableError):
    """The input does not match the type the servable declares."""


class ServableLoadError(ServableError):
    """A worker could not load the servable."""


class ExecutionError(ServableError):
    """The model raised while running one item of a batch."""


class ServingError(DlhubHpcError):
    """The hub could not serve the request."""


class WorkerLost(ServingError):
    """The worker holding the request died and no other worker could retry it."""


class Timeout(ServingError):
    """The request's deadline passed before a result came back."""


class Overloaded(ServingError):
    """The servable's queue is at its bound; retry later or start more workers."""


class PilotError(DlhubHpcError):
    """Workers could not be started or stopped."""


class EndpointError(DlhubHpcError):
    """Globus Compute could not run the forwarding call on the site's endpoint.

    The endpoint is offline, does not allow the forwarding function, lacks dlhub-hpc in its
    Python, or the service refused the task; ``details`` says which endpoint and function.
    """


class LimitExceeded(DlhubHpcError):
    """A call, or its result, does not fit Globus Compute's size limits (10 MB each way)."""


class RateLimited(LimitExceeded):
    """More calls in a window than Globus Compute allows; batch them or let the client pace."""


def _all_error_types() -> dict[str, type[DlhubHpcError]]:
    found: dict[str, type[DlhubHpcError]] = {}
    pending: list[type[DlhubHpcError]] = [DlhubHpcError]
    while pending:
        cls = pending.pop()
        found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return found


def error_from_wire(data: dict[str, Any]) -> DlhubHpcError:
    """Rebuild an error sent by the hub; unknown names become a plain ``DlhubHpcError``."""
    cls = _all_error_types().get(str(data.get("type")), DlhubHpcError)
    details = data.get("details") or {}
    return cls(str(data.get("message", "")), **details)
