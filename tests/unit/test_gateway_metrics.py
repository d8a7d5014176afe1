"""The gateway's /metrics: requests by route pattern, never by the path a caller sent."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("aiohttp", reason="pip install dlhub-hpc[gateway] (aiohttp)")

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from dlhub_hpc.metrics.gateway import GATEWAY_METRIC_NAMES, GatewayMetrics, metrics_setup


async def infer(request: web.Request) -> web.Response:
    if request.match_info["name"] == "missing":
        raise web.HTTPNotFound(text="no such model")
    return web.json_response({"outputs": []})


async def scrape_after_requests() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    app = web.Application()
    app.router.add_post("/v2/models/{owner}/{name}/infer", infer)
    metrics_setup(app)
    async with TestClient(TestServer(app)) as client:
        for name in ("alice/a", "bob/b"):
            assert (await client.post(f"/v2/models/{name}/infer", data=b"{}")).status == 200
        assert (await client.post("/v2/models/x/missing/infer", data=b"{}")).status == 404
        reply = await client.get("/metrics")
        assert reply.status == 200
        text = await reply.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_requests_are_counted_by_route_pattern_and_status() -> None:
    found = asyncio.run(scrape_after_requests())
    route = ("route", "/v2/models/{owner}/{name}/infer")
    assert found[("dlhub_gateway_requests_total", (("method", "POST"), route,
                                                   ("status", "200")))] == 2
    assert found[("dlhub_gateway_requests_total", (("method", "POST"), route,
                                                   ("status", "404")))] == 1
    assert found[("dlhub_gateway_request_latency_seconds_count", (route,))] == 3
    assert found[("dlhub_gateway_received_bytes_total", ())] == 6
    assert not any("alice" in str(labels) for _, labels in found)
    assert {name for name, _ in found} <= GATEWAY_METRIC_NAMES


def test_made_up_http_methods_share_one_label() -> None:
    """aiohttp's pure-Python parser takes any token as a method: the label set stays closed."""
    metrics = GatewayMetrics()
    for i in range(1000):
        metrics.record("(no route)", f"XMETHOD{i}", 405, 0.001, 0, 0)
    metrics.record("(no route)", "GET", 404, 0.001, 0, 0)
    assert set(metrics.requests) == {("(no route)", "other", "405"),
                                     ("(no route)", "GET", "404")}
    assert metrics.requests[("(no route)", "other", "405")] == 1000
