"""The Open Inference Protocol (KServe v2) gateway in front of a hub: REST, and gRPC with
``--grpc-port`` (``grpc_service``).

``dlhub-hpc gateway start`` runs it; callers send ``Authorization: Bearer TOKEN`` with a
token the hub's admin made (``dlhub-hpc keys token create --identity NAME``). See
``docs/oip.md``.
"""

from dlhub_hpc.gateway.app import GATEWAY_KEY, SETUP_HOOKS, GatewayConfig, build_app, serve

__all__ = ["GATEWAY_KEY", "SETUP_HOOKS", "GatewayConfig", "build_app", "serve"]
