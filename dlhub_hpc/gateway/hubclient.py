"""The gateway's connection to the hub: an ``AsyncClient`` whose requests carry a token.

The hub acts as the identity a request's bearer token maps to; this connection's own key
pair only lets the gateway connect (``dlhub_hpc.security.tokens``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from dlhub_hpc.async_client import AsyncClient
from dlhub_hpc.protocol import Request

logger = logging.getLogger(__name__)

SPEC_TTL = 5.0  # how long a servable's methods are reused before asking the hub again
_GRACE = 5.0  # past a request's deadline, how long the hub may take to say Timeout


class HubClient(AsyncClient):
    """``infer`` and ``describe`` on behalf of the holder of a token."""

    def __init__(self, address: str | None = None, **kwargs: Any) -> None:
        super().__init__(address, **kwargs)
        self._specs: dict[tuple[str, str, int | None], tuple[float, dict[str, Any]]] = {}

    async def infer(self, token: str, servable: str, version: int | None, method: str,
                    payload: Any, parameters: dict[str, Any] | None,
                    timeout: float | None) -> Any:
        seconds = self.timeout if timeout is None else timeout
        await self.path_for(payload)  # a large tensor goes as a sealed memfd on this node
        request_id = self._new_id()
        # The id the hub's and the worker's log records carry too (--log-format json).
        logger.debug("infer %s@%s.%s", servable, version or "latest", method,
                     extra={"request_id": request_id})
        frames = self._frames(Request(request_id, servable, version, method, payload, seconds,
                                      True, parameters or None, None, token))
        return await self._send(request_id, frames, None if seconds is None else seconds + _GRACE)

    async def describe_as(self, token: str, servable: str, version: int | None,
                          cached: bool = False) -> dict[str, Any]:
        """The record of ``servable`` as the token's identity may see it. ``cached``: one
        fetched in the last ``SPEC_TTL`` seconds will do (per token, so what one caller may
        see says nothing to another); only for requests the hub checks again themselves."""
        key = (token, servable, version)
        now = time.monotonic()
        entry = self._specs.get(key)
        if cached and entry is not None and now - entry[0] < SPEC_TTL:
            return entry[1]
        ref = servable if version is None else f"{servable}@{version}"
        record: dict[str, Any] = await self.control("describe", servable=ref, token=token)
        if len(self._specs) > 4096:
            self._specs.clear()
        self._specs[key] = (now, record)
        return record

    async def whoami_as(self, token: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self.control("whoami", token=token)
        return answer
