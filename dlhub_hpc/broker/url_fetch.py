"""Fetch a ``URLRef`` for a caller: HTTPS only (redirects too), a size cap, one deadline for
the whole download, and public addresses only. No credentials of the hub's are ever sent;
the caller's own bearer token, where the reference has one, goes to the URL's origin only
(a redirect elsewhere is followed without it, as curl and browsers do).

The hub fetches, not the worker: a sandboxed worker has no network of its own to rely on,
and the hub can hold every download to ``max_reference_bytes`` before a worker sees it.
Certificates are verified against the system's store, or the CA bundle the hub's config
names (``reference_ca_file``: a site's own CA, or a test's self-signed one).

The hub sits inside the site's network, so a caller could ask it to fetch what only the
hub can reach (a metadata service, an internal web page). Each host name is resolved
here, every address checked (loopback, link-local, private and other non-public ranges
are refused unless the admin lists them in ``reference_allow_networks``), and the
connection made to the checked address, so a second lookup cannot point elsewhere;
each redirect is checked the same way.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from dlhub_hpc.errors import (
    ReferenceDenied,
    ReferenceFormatError,
    ReferenceTooLarge,
    URLFetchFailed,
)

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def opener(ca_file: Path | None) -> ssl.SSLContext:
    """The TLS context downloads use: certificates verified (against ``ca_file`` if
    given); no cookies, auth or proxies are ever sent."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def networks(allowed: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in allowed)


def fetch(url: str, limit: int, timeout: float, via: ssl.SSLContext,
          allow: tuple[Network, ...] = (), token: str | None = None) -> bytes:
    """The body at ``url``, at most ``limit`` bytes (``ReferenceTooLarge`` past it), all
    of it within ``timeout`` seconds; ``URLFetchFailed`` with the status or the reason on
    any failure, ``ReferenceDenied`` for an address the hub may not fetch from. ``token``
    goes as a bearer token to ``url``'s origin, never to another."""
    deadline = time.monotonic() + timeout
    shown = url[:200]
    origin = _origin(url)
    for _ in range(_MAX_REDIRECTS + 1):
        if urlsplit(url).scheme != "https":
            raise ReferenceFormatError(f"{url[:200]} is not an https:// URL; the hub fetches "
                                       "https only (redirects too)", reference=shown)
        headers = {"User-Agent": "dlhub-hpc"}
        if token is not None and _origin(url) == origin:
            headers["Authorization"] = f"Bearer {token}"
        try:
            location, body = _get(url, limit, deadline, via, allow, timeout, headers)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if time.monotonic() >= deadline:
                raise URLFetchFailed(
                    f"{shown} did not arrive whole within reference_fetch_timeout "
                    f"({timeout} s); fetch it where the data is, or ask the admin to raise "
                    "it", reference=shown, reason="deadline") from None
            raise URLFetchFailed(f"could not fetch {shown}: {exc}", reference=shown,
                                 reason=str(exc)) from None
        if location is None:
            return body
        url = urljoin(url, location)
    raise URLFetchFailed(f"{shown} redirects more than {_MAX_REDIRECTS} times",
                         reference=shown, reason="redirects")


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    try:
        port = parts.port or 443
    except ValueError:  # not a port: _get says so, typed, before anything is sent
        port = -1
    return parts.scheme, (parts.hostname or "").lower(), port


def _get(url: str, limit: int, deadline: float, via: ssl.SSLContext,
         allow: tuple[Network, ...], timeout: float,
         headers: dict[str, str]) -> tuple[str | None, bytes]:
    """One GET: (a redirect's location or None, the body)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    address = _checked_address(host, port, allow, url)
    raw: socket.socket = socket.create_connection(
        (address, port), timeout=max(0.001, deadline - time.monotonic()))
    # the deadline covers every step: past it the socket is shut, whatever is under way
    killer = socket.socket(fileno=os.dup(raw.fileno()))
    timer = threading.Timer(max(0.0, deadline - time.monotonic()), _shut, (killer,))
    timer.daemon = True
    timer.start()
    try:
        raw = via.wrap_socket(raw, server_hostname=host)  # it takes over the descriptor
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.sock = raw
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        if response.status in _REDIRECTS and response.getheader("Location"):
            return response.getheader("Location"), b""
        if response.status != 200:
            raise URLFetchFailed(f"{url[:200]} answered HTTP {response.status} "
                                 f"{response.reason}{_hint(response.status, headers)}",
                                 reference=url[:200], status=response.status)
        size = response.getheader("Content-Length")
        if size is not None and size.isdigit() and int(size) > limit:
            raise _too_large(url, int(size), limit)
        body = _read_capped(response, url, limit)
        if time.monotonic() >= deadline:  # cut short by the deadline: not the whole body
            raise TimeoutError("deadline")
        if response.length:  # the connection ended before Content-Length bytes came
            raise http.client.IncompleteRead(body, response.length)
        return None, body
    finally:
        timer.cancel()
        killer.close()
        raw.close()


def _hint(status: int, headers: dict[str, str]) -> str:
    """What a caller refused for want of credentials can do about it."""
    if status not in (401, 403):
        return ""
    if "Authorization" in headers:
        return "; the server refused your token (expired, or not for this data?)"
    return ("; it may need credentials: give URLRef(url, token=...) with a bearer token it "
            "takes (for a Globus collection, one for its https scope)")


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _checked_address(host: str, port: int, allow: tuple[Network, ...], url: str) -> str:
    """The first address ``host`` resolves to, if every one of them is public or allowed."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise URLFetchFailed(f"could not resolve the host of {url[:200]}: {exc}",
                             reference=url[:200], reason=str(exc)) from None
    addresses = [str(info[4][0]) for info in found]
    for text in addresses:
        ip = ipaddress.ip_address(text.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        if not ip.is_global and not any(ip in net for net in allow):
            raise ReferenceDenied(
                f"{url[:200]} resolves to {ip}, a loopback, link-local, private or other "
                "non-public address, which the hub does not fetch from for callers; the "
                "admin may allow a range with HubConfig.reference_allow_networks",
                reference=url[:200], address=str(ip))
    if not addresses:
        raise URLFetchFailed(f"the host of {url[:200]} has no address", reference=url[:200])
    return addresses[0]


def _read_capped(response: Any, url: str, limit: int) -> bytes:
    body = bytearray()
    while chunk := response.read1(_CHUNK):
        body += chunk
        if len(body) > limit:
            raise _too_large(url, len(body), limit)
    return bytes(body)


def _too_large(url: str, size: int, limit: int) -> ReferenceTooLarge:
    return ReferenceTooLarge(
        f"{url[:200]} is over {limit} bytes (at least {size}); fetch it where the data is, "
        "or ask the admin to raise HubConfig.max_reference_bytes",
        reference=url[:200], size=size, limit=limit, setting="HubConfig.max_reference_bytes")
