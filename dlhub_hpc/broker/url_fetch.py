"""Fetch a ``URLRef`` for a caller: HTTPS only (redirects too), no credentials, a size cap.

The hub fetches, not the worker: a sandboxed worker has no network of its own to rely on,
and the hub can hold every download to ``max_reference_bytes`` before a worker sees it.
Certificates are verified against the system's store, or the CA bundle the hub's config
names (``reference_ca_file``: a site's own CA, or a test's self-signed one).
"""

from __future__ import annotations

import logging
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dlhub_hpc.errors import ReferenceFormatError, ReferenceTooLarge, URLFetchFailed

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to another https:// URL (never down to http or file)."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> Any:
        if urlsplit(newurl).scheme != "https":
            raise URLFetchFailed(f"{req.full_url} redirects to {newurl[:200]}, which is not "
                                 "https://; the hub follows https redirects only",
                                 reference=req.full_url, status=code)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def opener(ca_file: Path | None) -> urllib.request.OpenerDirector:
    """An opener that verifies certificates (against ``ca_file`` if given), sends no
    cookies nor auth, and uses no proxy settings but the hub's environment's."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=context),
                                       _HttpsOnlyRedirects())


def fetch(url: str, limit: int, timeout: float,
          via: urllib.request.OpenerDirector) -> bytes:
    """The body at ``url``, at most ``limit`` bytes (``ReferenceTooLarge`` past it);
    ``URLFetchFailed`` with the status or the reason on any failure."""
    if urlsplit(url).scheme != "https":
        raise ReferenceFormatError(f"{url[:200]} is not an https:// URL; the hub fetches "
                                   "https only", reference=url[:200])
    request = urllib.request.Request(url, headers={"User-Agent": "dlhub-hpc"})
    try:
        with via.open(request, timeout=timeout) as response:
            size = response.headers.get("Content-Length")
            if size is not None and size.isdigit() and int(size) > limit:
                raise _too_large(url, int(size), limit)
            return _read_capped(response, url, limit)
    except urllib.error.HTTPError as exc:
        raise URLFetchFailed(f"{url[:200]} answered HTTP {exc.code} {exc.reason}",
                             reference=url[:200], status=exc.code) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise URLFetchFailed(f"could not fetch {url[:200]}: {reason}", reference=url[:200],
                             reason=str(reason)) from None


def _read_capped(response: Any, url: str, limit: int) -> bytes:
    body = bytearray()
    while chunk := response.read(_CHUNK):
        body += chunk
        if len(body) > limit:
            raise _too_large(url, len(body), limit)
    return bytes(body)


def _too_large(url: str, size: int, limit: int) -> ReferenceTooLarge:
    return ReferenceTooLarge(
        f"{url[:200]} is over {limit} bytes (at least {size}); fetch it where the data is, "
        "or ask the admin to raise HubConfig.max_reference_bytes",
        reference=url[:200], size=size, limit=limit, setting="HubConfig.max_reference_bytes")
