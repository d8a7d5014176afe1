"""dlhub-hpc: publish scientific ML models and serve them warm on supercomputers."""

from typing import TYPE_CHECKING, Any

from dlhub_hpc._version import __version__
from dlhub_hpc.async_client import AsyncClient
from dlhub_hpc.bridge import ComputeLimits, RemoteClient
from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.client import USE_CLIENT_DEFAULT, Client
from dlhub_hpc.errors import (
    AuthenticationError,
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
    MethodNotFound,
    Overloaded,
    PayloadTooLarge,
    PermissionDenied,
    PilotError,
    ProfileError,
    ProtocolError,
    RateLimited,
    RecordError,
    RuntimeNotFound,
    ServableDeprecated,
    ServableError,
    ServableLoadError,
    ServableNotFound,
    ServableWithdrawn,
    ServingError,
    SpecError,
    Timeout,
    WorkerLost,
)
from dlhub_hpc.security.keys import KeyPair
from dlhub_hpc.servable import ArgType, ServableSpec, make_bundle
from dlhub_hpc.servable.builders import PythonFunctionServable, ScikitLearnServable

if TYPE_CHECKING:
    from dlhub_hpc.hub import Hub
    from dlhub_hpc.parsl_executor import DLHubExecutor, servable_app


__all__ = [
    "USE_CLIENT_DEFAULT",
    "ArgType",
    "AsyncClient",
    "AuthenticationError",
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
    "Hub",
    "HubConfig",
    "HubUnavailable",
    "ImageBuildError",
    "ImageDigestMismatch",
    "InvalidInput",
    "IsolationUnavailable",
    "KeyPair",
    "LimitExceeded",
    "MethodNotFound",
    "Overloaded",
    "PayloadTooLarge",
    "PermissionDenied",
    "PilotError",
    "ProfileError",
    "ProtocolError",
    "PythonFunctionServable",
    "RateLimited",
    "RecordError",
    "RemoteClient",
    "RuntimeNotFound",
    "ScikitLearnServable",
    "ServableDeprecated",
    "ServableError",
    "ServableLoadError",
    "ServableNotFound",
    "ServableSpec",
    "ServableWithdrawn",
    "ServingError",
    "SpecError",
    "Timeout",
    "WorkerLost",
    "__version__",
    "make_bundle",
    "servable_app",
]


def __getattr__(name: str) -> Any:
    # The hub and the Parsl executor pull in Parsl (most of a second to import); clients
    # and workers never need it.
    if name == "Hub":
        from dlhub_hpc.hub import Hub

        return Hub
    if name in ("DLHubExecutor", "servable_app"):
        from dlhub_hpc import parsl_executor

        return getattr(parsl_executor, name)
    raise AttributeError(f"module 'dlhub_hpc' has no attribute {name!r}")
