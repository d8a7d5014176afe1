"""Serving a registry of series over HTTP: the hub's own port, or any web app's route.

``MetricsServer`` runs prometheus-client's HTTP server in a daemon thread on a loopback
address by default. ``metrics_page`` gives the body and content type for a web app (the
gateway's ``/metrics``) that serves the same series on a route of its own.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.exposition import start_http_server

from dlhub_hpc.errors import ConfigError

logger = logging.getLogger(__name__)


def metrics_page(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The text exposition of ``registry`` and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


class MetricsServer:
    """An HTTP server of ``/metrics`` for one registry; ``port`` 0 takes a free one."""

    def __init__(self, registry: CollectorRegistry, address: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.registry = registry
        self.address = address
        self.port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"MetricsServer(address={self.address!r}, port={self.port!r})"

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> MetricsServer:
        try:
            self._server, self._thread = start_http_server(self.port, self.address,
                                                           self.registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {self.address}:{self.port}: {exc}; choose another "
                "metrics_port (0 takes a free one) or metrics_address",
                address=self.address, port=self.port,
            ) from exc
        self.port = int(self._server.server_address[1])
        logger.info("metrics at %s", self.url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
