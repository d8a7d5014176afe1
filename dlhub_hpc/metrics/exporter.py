"""Serving a registry of series over HTTP: the hub's own port, or any web app's route.

``MetricsServer`` runs prometheus-client's WSGI app in a daemon thread on a loopback
address by default. Given a token, it answers only a request that carries it (``Authorization:
Bearer TOKEN``): on a login node every user reaches loopback, and the series name every
servable, private ones too. ``metrics_page`` gives the body and content type for a web app
(the gateway's ``/metrics``) that serves the same series on a route of its own.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

from dlhub_hpc.errors import ConfigError

logger = logging.getLogger(__name__)


def metrics_page(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The text exposition of ``registry`` and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


METRICS_TOKEN_FILE = "metrics.token"  # in the hub's home, which only its admin may read
Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def metrics_token(path: Path) -> str:
    """The token ``/metrics`` asks for, kept in ``path`` (0600); made on first use."""
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token


def bearer_only(app: WsgiApp, token: str) -> WsgiApp:
    """``app``, answering 401 to a request without ``Authorization: Bearer TOKEN``."""
    expected = f"Bearer {token}".encode()

    def guarded(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        given = str(environ.get("HTTP_AUTHORIZATION", "")).encode()
        if hmac.compare_digest(given, expected):
            return app(environ, start_response)
        start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"),
                                            ("WWW-Authenticate", 'Bearer realm="dlhub-hpc"')])
        return [b"send 'Authorization: Bearer TOKEN' with the token in the hub's "
                b"metrics.token (its home; only the hub's admin may read it)\n"]

    return guarded


def loopback_host(host: str) -> bool:
    """Whether a listener on ``host`` is reachable from this machine only (the metrics
    server's and the gateway's address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name or an interface: it may be reachable from elsewhere
        return False


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes come every few seconds: no line each on stderr."""


class MetricsServer:
    """An HTTP server of ``/metrics`` for one registry; ``port`` 0 takes a free one;
    ``token``: a request must carry it as a bearer token."""

    def __init__(self, registry: CollectorRegistry, address: str = "127.0.0.1",
                 port: int = 0, token: str | None = None) -> None:
        self.registry = registry
        self.address = address
        self.port = port
        self._token = token
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"MetricsServer(address={self.address!r}, port={self.port!r})"

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> MetricsServer:
        app: WsgiApp = make_wsgi_app(self.registry)
        if self._token is not None:
            app = bearer_only(app, self._token)
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET

        class Server(ThreadingWSGIServer):
            address_family = family

        try:
            self._server = make_server(self.address, self.port, app, Server, _Quiet)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {self.address}:{self.port}: {exc}; choose another "
                "metrics_port (0 takes a free one) or metrics_address",
                address=self.address, port=self.port,
            ) from exc
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="dlhub-metrics", daemon=True)
        self._thread.start()
        logger.info("metrics at %s", self.url)
        if not loopback_host(self.address):
            logger.warning("metrics at %s are reachable from other machines over plain HTTP: "
                           "the bearer token and the series (every servable's name) cross "
                           "the network in clear; scrape through an SSH tunnel or a TLS proxy",
                           self.url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
