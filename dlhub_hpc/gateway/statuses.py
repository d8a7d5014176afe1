"""HTTP statuses for typed errors, and the protocol's error body ``{"error": "..."}``."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from dlhub_hpc import errors

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY_KEY = web.AppKey("dlhub_max_body_bytes", int)  # the app's client_max_size

# Most specific first: the first class an error is an instance of gives its status.
STATUSES: list[tuple[type[errors.DlhubHpcError], int]] = [
    (errors.AuthenticationError, 401),
    (errors.PermissionDenied, 403),
    (errors.ServableNotFound, 404),
    (errors.MethodNotFound, 404),
    (errors.ServableWithdrawn, 404),
    (errors.PayloadTooLarge, 413),
    (errors.InvalidInput, 400),
    (errors.SpecError, 400),
    (errors.ProtocolError, 400),
    (errors.Timeout, 504),
    (errors.Overloaded, 503),
    (errors.HubUnavailable, 503),
    (errors.ServingError, 503),
    (errors.ServableLoadError, 503),
    (errors.ExecutionError, 500),
]


def status_of(error: errors.DlhubHpcError) -> int:
    for kind, status in STATUSES:
        if isinstance(error, kind):
            return status
    return 500


def error_response(error: errors.DlhubHpcError, status: int | None = None) -> web.Response:
    """The protocol's error body: the typed error's name and message."""
    text = f"{type(error).__name__}: {error.message}"
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, errors.AuthenticationError) \
        else None
    return web.Response(status=status or status_of(error), headers=headers,
                        body=json.dumps({"error": text}), content_type="application/json")


@web.middleware
async def protocol_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own refusals (no such route, a body over the limit) in the protocol's error
    format too, with what to change."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(_refusal(request, exc), exc.status)
    except Exception:  # a fault of ours: log it, answer in the protocol's format, serve on
        logger.exception("%s %s failed", request.method, request.path)
        return error_response(errors.DlhubHpcError(
            "the gateway failed on this request; its log says why"), 500)


def _refusal(request: web.Request, exc: web.HTTPException) -> errors.DlhubHpcError:
    if exc.status == 413:
        limit = request.app.get(MAX_BODY_KEY)
        return errors.PayloadTooLarge(
            f"the request body is over the gateway's limit of {limit} bytes; send a smaller "
            "input, or start the gateway with a larger max_body_bytes", limit=limit)
    if exc.status in (404, 405):
        return errors.DlhubHpcError(
            f"no endpoint {request.method} {request.path}; the protocol's are GET /v2, "
            "/v2/health/{live,ready}, /v2/models/OWNER/NAME[/versions/V][/ready|/config] and POST "
            "/v2/models/OWNER/NAME[/versions/V]/infer")
    return errors.DlhubHpcError(f"{exc.status} {exc.reason}")
