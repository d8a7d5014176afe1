"""dlhub-hpc: publish scientific ML models and serve them warm on supercomputers."""

import importlib
from typing import TYPE_CHECKING, Any

from dlhub_hpc._version import __version__
from dlhub_hpc.errors import (
    AuthenticationError,
    BadReference,
    BrokerInvariantError,
    BundleDigestMismatch,
    ConfigError,
    ContainerError,
    DlhubHpcError,
    EndpointError,
    ExecutionError,
    HubUnavailable,
    ImageBuildError,
    ImageDigestMismatch,
    InvalidInput,
    IsolationUnavailable,
    LimitExceeded,
    LocalPathRefused,
    MethodNotFound,
    NotSupportedHere,
    NoUnixAccount,
    Overloaded,
    PayloadTooLarge,
    PermissionDenied,
    PilotError,
    ProfileError,
    ProtocolError,
    QueueFull,
    RateLimited,
    RecordError,
    ReferenceDenied,
    ReferenceFormatError,
    ReferenceNotFound,
    ReferenceTooLarge,
    RuntimeNotFound,
    ServableDeprecated,
    ServableError,
    ServableLoadError,
    ServableNotFound,
    ServableNotStarted,
    ServableStarting,
    ServableWithdrawn,
    ServingError,
    SpecError,
    Timeout,
    TokenRefused,
    TransferFailed,
    TransferStalled,
    URLFetchFailed,
    WorkerLost,
)

if TYPE_CHECKING:
    from dlhub_hpc.async_client import AsyncClient
    from dlhub_hpc.bridge import ComputeLimits, RemoteClient
    from dlhub_hpc.broker.config import HubConfig
    from dlhub_hpc.client import USE_CLIENT_DEFAULT, Client
    from dlhub_hpc.hub import Hub
    from dlhub_hpc.parsl_executor import DLHubExecutor, servable_app
    from dlhub_hpc.references import FileRef, URLRef
    from dlhub_hpc.security.keys import KeyPair
    from dlhub_hpc.servable import ArgType, ServableSpec, make_bundle
    from dlhub_hpc.servable.builders import PythonFunctionServable, ScikitLearnServable

# Imported on first use, so that a name costs only what it needs: the hub and the Parsl
# executor pull in Parsl (most of a second), the client numpy and pydantic, and the
# errors nothing. `import dlhub_hpc` alone (as the CLI does) stays cheap.
_LAZY: dict[str, str] = {
    "ArgType": "dlhub_hpc.servable",
    "AsyncClient": "dlhub_hpc.async_client",
    "Client": "dlhub_hpc.client",
    "ComputeLimits": "dlhub_hpc.bridge",
    "DLHubExecutor": "dlhub_hpc.parsl_executor",
    "FileRef": "dlhub_hpc.references",
    "Hub": "dlhub_hpc.hub",
    "HubConfig": "dlhub_hpc.broker.config",
    "KeyPair": "dlhub_hpc.security.keys",
    "PythonFunctionServable": "dlhub_hpc.servable.builders",
    "RemoteClient": "dlhub_hpc.bridge",
    "ScikitLearnServable": "dlhub_hpc.servable.builders",
    "ServableSpec": "dlhub_hpc.servable",
    "URLRef": "dlhub_hpc.references",
    "USE_CLIENT_DEFAULT": "dlhub_hpc.client",
    "make_bundle": "dlhub_hpc.servable",
    "servable_app": "dlhub_hpc.parsl_executor",
}


__all__ = [
    "USE_CLIENT_DEFAULT",
    "ArgType",
    "AsyncClient",
    "AuthenticationError",
    "BadReference",
    "BrokerInvariantError",
    "BundleDigestMismatch",
    "Client",
    "ComputeLimits",
    "ConfigError",
    "ContainerError",
    "DLHubExecutor",
    "DlhubHpcError",
    "EndpointError",
    "ExecutionError",
    "FileRef",
    "Hub",
    "HubConfig",
    "HubUnavailable",
    "ImageBuildError",
    "ImageDigestMismatch",
    "InvalidInput",
    "IsolationUnavailable",
    "KeyPair",
    "LimitExceeded",
    "LocalPathRefused",
    "MethodNotFound",
    "NoUnixAccount",
    "NotSupportedHere",
    "Overloaded",
    "PayloadTooLarge",
    "PermissionDenied",
    "PilotError",
    "ProfileError",
    "ProtocolError",
    "PythonFunctionServable",
    "QueueFull",
    "RateLimited",
    "RecordError",
    "ReferenceDenied",
    "ReferenceFormatError",
    "ReferenceNotFound",
    "ReferenceTooLarge",
    "RemoteClient",
    "RuntimeNotFound",
    "ScikitLearnServable",
    "ServableDeprecated",
    "ServableError",
    "ServableLoadError",
    "ServableNotFound",
    "ServableNotStarted",
    "ServableSpec",
    "ServableStarting",
    "ServableWithdrawn",
    "ServingError",
    "SpecError",
    "Timeout",
    "TokenRefused",
    "TransferFailed",
    "TransferStalled",
    "URLFetchFailed",
    "URLRef",
    "WorkerLost",
    "__version__",
    "make_bundle",
    "servable_app",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dlhub_hpc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
