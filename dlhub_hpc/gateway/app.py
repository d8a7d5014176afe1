"""The gateway's aiohttp application and how it is served (loopback, TLS when given).

``build_app(hub, setup=...)`` is the one place the application is made: each ``setup``
callable gets the application before it starts, to add routes or middlewares of its own
(``/metrics`` is added so). ``serve(config)`` runs it until cancelled, and with
``grpc_port`` the protocol's gRPC endpoint too, in the same event loop over the same
``Gateway`` (``grpc_service``; needs ``tritonclient[grpc]``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dlhub_hpc.gateway.hubclient import HubClient
from dlhub_hpc.gateway.service import Gateway
from dlhub_hpc.gateway.statuses import MAX_BODY_KEY, protocol_errors
from dlhub_hpc.metrics.exporter import loopback_host
from dlhub_hpc.metrics.gateway import METRICS_KEY, metrics_setup
from dlhub_hpc.protocol import DEFAULT_MAX_MESSAGE_BYTES

logger = logging.getLogger(__name__)

AppSetup = Callable[[web.Application], None]
GATEWAY_KEY = web.AppKey("dlhub_gateway", Gateway)
# Added to every gateway's application: other parts (metrics) register here on import.
SETUP_HOOKS: list[AppSetup] = [metrics_setup]  # GET /metrics: the gateway's own series


class GatewayConfig(BaseModel):
    """Where the gateway listens, and the hub it serves (None: the one ``hub.json`` names)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    grpc_port: int | None = Field(default=None, ge=0, le=65535)  # None: no gRPC endpoint
    tls_cert: Path | None = None
    tls_key: Path | None = None
    hub_address: str | None = None
    timeout: float | None = Field(default=60.0, gt=0)
    max_body_bytes: int = Field(default=DEFAULT_MAX_MESSAGE_BYTES, gt=0)

    @model_validator(mode="after")
    def _tls_pair(self) -> GatewayConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both tls_cert and tls_key")
        if self.tls_cert is None and not loopback_host(self.host):
            raise ValueError(f"the gateway may listen on {self.host!r} only with TLS "
                             "(--tls-cert and --tls-key): bearer tokens must not cross a "
                             "network in clear")
        return self

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.tls_cert is None or self.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls_cert, self.tls_key)
        return context

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_cert else 'http'}://{self.host}:{self.port}"

    @property
    def grpc_url(self) -> str:
        return f"{'grpcs' if self.tls_cert else 'grpc'}://{self.host}:{self.grpc_port}"


def build_app(hub: HubClient, *, timeout: float | None = None,
              max_body_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
              setup: Iterable[AppSetup] = ()) -> web.Application:
    """The gateway's application over ``hub``; ``setup`` callables may add to it. Serve it
    with ``auto_decompress=False``, as ``serve`` does: its handlers inflate bodies
    themselves, within ``max_body_bytes`` (``bodies``)."""
    app = web.Application(client_max_size=max_body_bytes, middlewares=[protocol_errors])
    app[MAX_BODY_KEY] = max_body_bytes
    gateway = Gateway(hub, timeout)
    app[GATEWAY_KEY] = gateway
    app.add_routes(gateway.routes())
    for extend in (*SETUP_HOOKS, *setup):
        extend(app)

    async def close_hub(app: web.Application) -> None:
        await hub.close()

    app.on_cleanup.append(close_hub)
    return app


async def serve(config: GatewayConfig, started: Callable[[str], None] | None = None,
                setup: Iterable[AppSetup] = ()) -> None:
    """Serve until cancelled; ``started`` gets each URL once both endpoints listen: REST's,
    then gRPC's (``grpc://HOST:PORT``, ``grpcs://`` with TLS) where ``grpc_port`` asks."""
    app = build_app(HubClient(config.hub_address, timeout=config.timeout),
                    timeout=config.timeout, max_body_bytes=config.max_body_bytes, setup=setup)
    # Bodies come as sent: the handler inflates them within max_body_bytes (bodies.py).
    runner = web.AppRunner(app, access_log=None, auto_decompress=False)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, ssl_context=config.ssl_context())
    grpc_server: Any = None
    try:
        urls = []
        if config.grpc_port is not None:
            grpc_server, grpc_port = _grpc_server(app, config, config.grpc_port)
            await grpc_server.start()
            urls.append(config.model_copy(update={"grpc_port": grpc_port}).grpc_url)
        await site.start()
        port = config.port
        if port == 0 and runner.addresses:
            port = int(runner.addresses[0][1])
        urls.insert(0, config.model_copy(update={"port": port}).url)
        for url in urls:
            logger.info("the Open Inference Protocol gateway listens on %s", url)
            if started is not None:
                started(url)
        await asyncio.Event().wait()
    finally:
        if grpc_server is not None:
            await grpc_server.stop(1.0)  # calls in flight get a second to finish
        await runner.cleanup()


def _grpc_server(app: web.Application, config: GatewayConfig, port: int) -> tuple[Any, int]:
    """The gRPC endpoint over the application's ``Gateway`` and metrics, bound."""
    from dlhub_hpc.gateway.grpc_service import InferenceServicer, grpc_server

    servicer = InferenceServicer(app[GATEWAY_KEY], app.get(METRICS_KEY))
    tls = None if config.tls_cert is None or config.tls_key is None else (
        config.tls_cert, config.tls_key)
    return grpc_server(servicer, config.host, port, config.max_body_bytes, tls)
