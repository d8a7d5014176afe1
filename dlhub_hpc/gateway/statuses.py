"""HTTP statuses for typed errors, and the protocol's error body ``{"error": "..."}``."""

from __future__ import annotations

import json
import logging

from aiohttp import web

from dlhub_hpc import errors

logger = logging.getLogger(__name__)

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
