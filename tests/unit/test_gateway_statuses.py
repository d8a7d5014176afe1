"""The gateway's error middleware: every refusal and every fault in the protocol's format."""

from __future__ import annotations

import asyncio
import logging

import pytest

pytest.importorskip("aiohttp", reason="pip install dlhub-hpc[gateway] (aiohttp)")

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from dlhub_hpc.gateway.statuses import protocol_errors


async def broken(request: web.Request) -> web.Response:
    raise KeyError("a fault the handler did not expect")


async def fine(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def ask() -> list[tuple[int, str, object]]:
    app = web.Application(middlewares=[protocol_errors])
    app.router.add_post("/broken", broken)
    app.router.add_post("/fine", fine)
    out = []
    async with TestClient(TestServer(app)) as client:
        for path in ("/broken", "/fine", "/nowhere"):
            reply = await client.post(path, data=b"{}")
            out.append((reply.status, reply.content_type, await reply.json()))
    return out


def test_a_fault_of_the_gateways_is_a_protocol_error_and_the_next_request_is_served(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="dlhub_hpc.gateway.statuses"):
        (status, kind, body), after, missing = asyncio.run(ask())
    assert (status, kind) == (500, "application/json")
    assert body == {"error": "DlhubHpcError: the gateway failed on this request; its log says why"}
    assert "a fault the handler did not expect" not in str(body)  # no internals to the caller
    assert any(r.exc_info and "a fault the handler" in str(r.exc_info[1]) for r in caplog.records)
    assert after[:2] == (200, "application/json") and after[2] == {"ok": True}
    assert missing[0] == 404 and "no endpoint POST /nowhere" in str(missing[2])
