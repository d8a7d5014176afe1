"""dlhub-hpc: publish scientific ML models and serve them warm on supercomputers."""

from typing import TYPE_CHECKING, Any

from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.client import USE_CLIENT_DEFAULT, Client
from dlhub_hpc.errors import (
    ConfigError,
    DlhubHpcError,
    ExecutionError,
    HubUnavailable,
    InvalidInput,
    MethodNotFound,
    Overloaded,
    PilotError,
    ProtocolError,
    ServableError,
    ServableLoadError,
    ServableNotFound,
    ServingError,
    SpecError,
    Timeout,
    WorkerLost,
)
from dlhub_hpc.servable import ArgType, ServableSpec, make_bundle

if TYPE_CHECKING:
    from dlhub_hpc.hub import Hub

__version__ = "0.1.0"

__all__ = [
    "USE_CLIENT_DEFAULT",
    "ArgType",
    "Client",
    "ConfigError",
    "DlhubHpcError",
    "ExecutionError",
    "Hub",
    "HubConfig",
    "HubUnavailable",
    "InvalidInput",
    "MethodNotFound",
    "Overloaded",
    "PilotError",
    "ProtocolError",
    "ServableError",
    "ServableLoadError",
    "ServableNotFound",
    "ServableSpec",
    "ServingError",
    "SpecError",
    "Timeout",
    "WorkerLost",
    "__version__",
    "make_bundle",
]


def __getattr__(name: str) -> Any:
    # The hub pulls in Parsl (most of a second to import); clients and workers never need it.
    if name == "Hub":
        from dlhub_hpc.hub import Hub

        return Hub
    raise AttributeError(f"module 'dlhub_hpc' has no attribute {name!r}")
