"""Errors raised by dlhub-hpc.

Every error is a :class:`DlhubHpcError`; each says what went wrong and what to change.
Errors that cross the wire (broker -> client) are rebuilt on the client side by name.

::

    DlhubHpcError
    ├── ConfigError              a hub, pilot or client setting is invalid
    │   └── ProfileError         a site profile is unknown or invalid (names the valid choices)
    ├── ProtocolError            a frame could not be decoded or has the wrong version
    │   └── LocalPathRefused     a same-node fast-path ticket or memfd was refused (why)
    ├── HubUnavailable           no hub answers at the address
    ├── AuthenticationError      the hub refused this connection's key (or the key is missing)
    │   └── TokenRefused         a bearer token is unknown, revoked, or its identity is gone
    ├── PermissionDenied         the caller's identity may not see or change this servable
    │   └── IsolationUnavailable the hub cannot start this owner's workers isolated from it
    ├── ServableError
    │   ├── SpecError            a servable spec or directory is invalid
    │   │   └── RecordError      a DLHub record cannot be imported (its field path, the fix)
    │   ├── ServableNotFound     no servable with that name (and version)
    │   ├── ServableWithdrawn    the version was withdrawn (the reason, and any replacement)
    │   ├── BundleDigestMismatch a stored bundle's sha256 differs from its record; not loaded
    │   ├── MethodNotFound       the servable has no such method
    │   ├── InvalidInput         the input does not match the declared type
    │   │   └── BadReference     a FileRef/URLRef or result_to cannot be used (subclasses say why)
    │   │       ├── ReferenceNotFound    the file (or a folder on its path) does not exist
    │   │       ├── ReferenceDenied      the caller's Unix account may not read (or write) it
    │   │       ├── NoUnixAccount        the caller's identity maps to no Unix account here
    │   │       ├── ReferenceTooLarge    the file or download is over the hub's cap
    │   │       ├── ReferenceFormatError a scheme, path or file format that is not taken
    │   │       └── URLFetchFailed       the URL could not be fetched (status or reason)
    │   ├── ServableLoadError    a worker could not load the servable
    │   └── ExecutionError       the model raised while running one item
    ├── ServingError
    │   ├── WorkerLost           the worker holding the request died, and no retry was possible
    │   ├── TransferFailed       a chunked transfer of a large array was dropped (why)
    │   │   └── TransferStalled  it made no progress within transfer_timeout
    │   ├── Timeout              the request's deadline passed
    │   │   ├── ServableStarting the deadline passed while the servable was starting (its stage)
    │   │   └── ServableNotStarted  and none started: the hub refused its default profile (why)
    │   └── Overloaded           the servable's queue is full
    │       └── QueueFull        one servable's queue is at its own limit (the setting to raise)
    ├── PilotError               workers could not be started or stopped
    ├── ContainerError           a servable image could not be built, found or run
    │   ├── RuntimeNotFound      the container runtime is not installed (says what to install)
    │   ├── ImageBuildError      one build step failed (the step's name and its log tail)
    │   └── ImageDigestMismatch  an image's sha256 differs from its record; it is refused
    ├── PayloadTooLarge          a message is over a size limit (its size, the limit, the setting)
    ├── NotSupportedHere         a DLHub SDK call with no meaning on a hub (says what replaces it)
    ├── BrokerInvariantError     the broker's books do not balance: a fault of the hub's own
    ├── EndpointError            Globus Compute could not run the forwarding call on the endpoint
    └── LimitExceeded            a call or its result does not fit Globus Compute's limits
        └── RateLimited          more calls in a window than Globus Compute allows

A call to a deprecated version succeeds, with a ``ServableDeprecated`` warning.
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


class ProfileError(ConfigError):
    """A site profile is unknown or invalid; the message lists the valid names or fields."""


class ProtocolError(DlhubHpcError):
    """A frame could not be decoded, or speaks another protocol version."""


class LocalPathRefused(ProtocolError):
    """A same-node fast-path ticket was unknown, used already, expired or not this
    caller's, or its descriptor was not a sealed memfd; send the array again."""


class HubUnavailable(DlhubHpcError):
    """No hub answered at the configured address."""


class AuthenticationError(DlhubHpcError):
    """The hub refused this connection's CurveZMQ key, or no key pair could be found."""


class TokenRefused(AuthenticationError):
    """A bearer token (the Open Inference Protocol gateway's) is unknown, revoked, or maps
    to an identity the hub no longer has."""


class PermissionDenied(DlhubHpcError):
    """The caller's identity may not run, see or change this servable (or hub setting)."""


class IsolationUnavailable(PermissionDenied):
    """The hub can neither switch to the owner's Unix user nor sandbox the owner's workers."""


class ServableError(DlhubHpcError):
    """Something about a servable, its spec or its input."""


class SpecError(ServableError):
    """A servable spec or servable directory is invalid."""


class RecordError(SpecError):
    """A DLHub ``dlhub.json`` record cannot be imported; ``details['field']`` is its path."""


class ServableNotFound(ServableError):
    """No servable is published under that name (and version)."""


class ServableWithdrawn(ServableError):
    """The version was withdrawn by its owner; ``details`` has the reason and any replacement."""


class BundleDigestMismatch(ServableError):
    """A stored bundle's sha256 is not the digest its record names; it is never run."""


class MethodNotFound(ServableError):
    """The servable has no method of that name."""


class InvalidInput(ServableError):
    """The input does not match the type the servable declares."""


class BadReference(InvalidInput):
    """An input reference (``FileRef``, ``URLRef``) or a ``result_to`` cannot be used;
    ``details`` has ``reference`` (the path or URL) and, where known, ``item``."""


class ReferenceNotFound(BadReference):
    """The referenced file, or a folder on its path (``details['component']``), is missing."""


class ReferenceDenied(BadReference):
    """The caller's Unix account may not read (or, for ``result_to``, write) the reference;
    ``details['component']`` is the first path component that stops it."""


class NoUnixAccount(BadReference):
    """The caller's identity maps to no Unix account on the hub's node (``user_map`` in the
    hub's config names one), so file references cannot be checked for it."""


class ReferenceTooLarge(BadReference):
    """The file or download is larger than ``HubConfig.max_reference_bytes``."""


class ReferenceFormatError(BadReference):
    """A reference's scheme or path is not accepted (relative path, http:// to a remote host),
    or its file is not the format its name says (a ``.npy`` that numpy cannot read)."""


class URLFetchFailed(BadReference):
    """The hub could not fetch a ``URLRef``: ``details`` has the status or the reason."""


class ServableLoadError(ServableError):
    """A worker could not load the servable."""


class ExecutionError(ServableError):
    """The model raised while running one item of a batch."""


class ServingError(DlhubHpcError):
    """The hub could not serve the request."""


class WorkerLost(ServingError):
    """The worker holding the request died and no other worker could retry it."""


class TransferFailed(ServingError):
    """A large array's chunked transfer was dropped: its peer left, a chunk came out of
    order, too large or past its credit, or the receiver could not hold the array.
    ``details['transfer_id']`` names it; retry the call (a smaller input, or a file
    reference, if it keeps failing)."""


class TransferStalled(TransferFailed):
    """A chunked transfer made no progress for ``HubConfig.transfer_timeout`` seconds (its
    peer stopped reading or sending); retry, or raise the setting for slow links."""


class Timeout(ServingError):
    """The request's deadline passed before a result came back."""


class ServableStarting(Timeout):
    """The deadline passed while the servable was still starting on demand.

    ``details['stage']`` says how far it got: ``requested``, ``queued at scheduler``,
    ``job running`` or ``model loading``; retry with a longer timeout once it serves.
    """


class ServableNotStarted(Timeout):
    """The deadline passed with no worker serving the servable, and the hub starts none for
    it: the default profile its spec names is one this hub does not let servables choose
    (``servable_profiles``) or does not have. ``details``: ``profile``, ``allowed``.
    """


class Overloaded(ServingError):
    """The servable's queue is at its bound; retry later or start more workers."""


class QueueFull(Overloaded):
    """One servable's queue is at its limit (``details['limit']``, set by HubConfig
    ``queue_limits`` or ``max_queue_length``), or the caller holds their fair share of it
    while others wait (``details['yours']`` and ``details['share']``); retry later, or ask
    the admin to raise it."""


class PilotError(DlhubHpcError):
    """Workers could not be started or stopped."""


class ContainerError(DlhubHpcError):
    """A servable image could not be built, found or run."""


class RuntimeNotFound(ContainerError):
    """The container runtime's executable is not on PATH; the message says what to install."""


class ImageBuildError(ContainerError):
    """One step of an image build failed; ``details`` has the step and the tail of its log."""


class ImageDigestMismatch(ContainerError):
    """An image's sha256 differs from the one recorded when it was built; it is not run."""


class PayloadTooLarge(DlhubHpcError):
    """A request, or a result, is larger than the hub accepts.

    ``details`` has ``size`` and ``limit`` in bytes and ``setting``, the knob that raises
    the limit; a smaller input (or sending it as a file path) is the other fix.
    """


class NotSupportedHere(DlhubHpcError):
    """A DLHub SDK call that has no meaning on this hub (Globus login, cloud container
    builds); the message says what replaces it."""


class BrokerInvariantError(DlhubHpcError):
    """The broker's state broke one of its own invariants (``BrokerState.validate``): a bug
    in the hub, not in the call. ``details['problems']`` lists each; report them."""


class EndpointError(DlhubHpcError):
    """Globus Compute could not run the forwarding call on the site's endpoint.

    The endpoint is offline, does not allow the forwarding function, lacks dlhub-hpc in its
    Python, or the service refused the task; ``details`` says which endpoint and function.
    """


class LimitExceeded(DlhubHpcError):
    """A call, or its result, does not fit Globus Compute's size limits (10 MB each way)."""


class RateLimited(LimitExceeded):
    """More calls in a window than Globus Compute allows; batch them or let the client pace."""


class ServableDeprecated(UserWarning):
    """The version called is deprecated: it still runs; the message says why and what instead."""


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
