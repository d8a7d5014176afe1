"""The gateway's own series, and its ``GET /metrics``: an aiohttp middleware records each
HTTP request (route pattern, method, status, latency, bytes) without locks. The gRPC
endpoint records its calls in the same ``GatewayMetrics`` (route ``grpc:ModelInfer``,
method ``grpc``, status the gRPC status's name), from the same event loop.

Labels name the route pattern (``/v2/models/{name}/infer``), never the path a caller sent:
model names in paths are the caller's, and series per name would grow without bound. The
hub's per-servable series are on the hub's own port.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from dlhub_hpc.metrics.exporter import metrics_page
from dlhub_hpc.metrics.recorder import LATENCY_BUCKETS, Histogram

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The method label's values: a caller may send any token as an HTTP method (aiohttp's
# pure-Python parser takes them all), and a series per made-up method would grow unbounded.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "grpc"})
OTHER_METHOD = "other"
GATEWAY_METRIC_NAMES = frozenset({
    "dlhub_gateway_requests_total", "dlhub_gateway_in_progress",
    "dlhub_gateway_received_bytes_total", "dlhub_gateway_sent_bytes_total",
    *(f"dlhub_gateway_request_latency_seconds_{s}" for s in ("bucket", "sum", "count")),
})


class GatewayMetrics(Collector):
    """Counts kept by the middleware (one event loop writes them), read at scrape time."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}  # (route, method, status)
        self.latency: dict[str, Histogram] = {}  # route -> seconds
        self.in_progress = 0
        self.received_bytes = 0
        self.sent_bytes = 0

    def __repr__(self) -> str:
        return f"GatewayMetrics(routes={len(self.latency)})"

    def record(self, route: str, method: str, status: int, seconds: float,
               received: int, sent: int) -> None:
        key = (route, method if method in METHODS else OTHER_METHOD, str(status))
        self.requests[key] = self.requests.get(key, 0) + 1
        hist = self.latency.get(route)
        if hist is None:
            hist = self.latency[route] = Histogram(LATENCY_BUCKETS)
        hist.observe(seconds)
        self.received_bytes += received
        self.sent_bytes += sent

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("dlhub_gateway_requests", "HTTP requests by route "
                                       "pattern, method and status", labels=["route", "method",
                                                                             "status"])
        for labels, n in sorted(dict(self.requests).items()):
            requests.add_metric(list(labels), n)
        latency = HistogramMetricFamily("dlhub_gateway_request_latency_seconds",
                                        "HTTP request to response, per route pattern",
                                        labels=["route"])
        for route, hist in sorted(dict(self.latency).items()):
            buckets, total = hist.cumulative()
            latency.add_metric([route], buckets, total)
        yield from (requests, latency)
        yield GaugeMetricFamily("dlhub_gateway_in_progress", "HTTP requests being answered",
                                value=self.in_progress)
        yield CounterMetricFamily("dlhub_gateway_received_bytes", "Request body bytes",
                                  value=self.received_bytes)
        yield CounterMetricFamily("dlhub_gateway_sent_bytes", "Response body bytes",
                                  value=self.sent_bytes)


METRICS_KEY = web.AppKey("dlhub_gateway_metrics", GatewayMetrics)


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(no route)"


def metrics_setup(app: web.Application) -> None:
    """Add the recording middleware and ``GET /metrics`` to a gateway application."""
    metrics = GatewayMetrics()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    app[METRICS_KEY] = metrics

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        metrics.in_progress += 1
        status = 500
        response: web.StreamResponse | None = None
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            metrics.in_progress -= 1
            sent = getattr(response, "content_length", None) or 0
            metrics.record(_route(request), request.method, status,
                           time.perf_counter() - started, request.content_length or 0, sent)

    async def page(request: web.Request) -> web.Response:
        body, content_type = metrics_page(registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    app.middlewares.append(record)
    app.router.add_get("/metrics", page)
