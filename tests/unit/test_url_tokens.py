"""A URLRef's bearer token: sent to the URL's own origin, to no other (redirects included),
and never shown in an error."""

from __future__ import annotations

import http.server
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dlhub_hpc.broker import url_fetch
from dlhub_hpc.errors import URLFetchFailed
from tests.unit.test_url_fetch_limits import certificate as certificate

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
TOKEN = "AgX1.collection-https_token~/+=="


class Site:
    """An https server on loopback that keeps the Authorization header of each GET.
    /private answers 200 only with TOKEN; /to?URL redirects there; anything else is 200."""

    def __init__(self, certificate: tuple[Path, Path]) -> None:
        self.seen: list[tuple[str, str | None]] = []
        seen = self.seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                auth = self.headers.get("Authorization")
                seen.append((self.path, auth))
                if self.path.startswith("/to?"):
                    self.send_response(302)
                    self.send_header("Location", self.path[4:])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path == "/private" and auth != f"Bearer {TOKEN}":
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*certificate)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def sites(certificate: tuple[Path, Path]) -> Iterator[tuple[Site, Site]]:
    """Two origins: the same host on two ports."""
    a, b = Site(certificate), Site(certificate)
    yield a, b
    a.close()
    b.close()


def _fetch(url: str, certificate: tuple[Path, Path], token: str | None) -> bytes:
    return url_fetch.fetch(url, 1 << 20, 30.0, url_fetch.opener(certificate[0]), LOOPBACK,
                           token)


def test_the_token_goes_to_its_origin_and_opens_what_needs_it(
        sites: tuple[Site, Site], certificate: tuple[Path, Path]) -> None:
    a, _ = sites
    assert _fetch(f"{a.url}/private", certificate, TOKEN) == b"ok"
    assert a.seen == [("/private", f"Bearer {TOKEN}")]
    assert _fetch(f"{a.url}/to?{a.url}/private", certificate, TOKEN) == b"ok"  # same origin
    assert a.seen[-2:] == [(f"/to?{a.url}/private", f"Bearer {TOKEN}"),
                           ("/private", f"Bearer {TOKEN}")]


def test_a_redirect_to_another_origin_goes_without_the_token(
        sites: tuple[Site, Site], certificate: tuple[Path, Path]) -> None:
    a, b = sites
    assert _fetch(f"{a.url}/to?{b.url}/public", certificate, TOKEN) == b"ok"
    assert a.seen == [(f"/to?{b.url}/public", f"Bearer {TOKEN}")]
    assert b.seen == [("/public", None)]
    # and back again: the token's origin has it again, the other one never did
    assert _fetch(f"{a.url}/to?{b.url}/to?{a.url}/private", certificate, TOKEN) == b"ok"
    assert a.seen[-1] == ("/private", f"Bearer {TOKEN}")
    assert all(auth is None for _, auth in b.seen)


def test_without_a_token_nothing_is_sent_and_the_refusal_says_what_to_do(
        sites: tuple[Site, Site], certificate: tuple[Path, Path]) -> None:
    a, _ = sites
    with pytest.raises(URLFetchFailed, match=r"401.*URLRef\(url, token=") as caught:
        _fetch(f"{a.url}/private", certificate, None)
    assert a.seen == [("/private", None)]
    assert caught.value.details["status"] == 401
    with pytest.raises(URLFetchFailed, match="refused your token") as refused:
        _fetch(f"{a.url}/private", certificate, "another.token")
    assert "another.token" not in refused.value.message
    assert "another.token" not in str(refused.value.details)


def test_a_redirect_to_a_port_that_is_none_fails_typed(
        sites: tuple[Site, Site], certificate: tuple[Path, Path]) -> None:
    a, _ = sites
    with pytest.raises(URLFetchFailed, match="could not fetch"):
        _fetch(f"{a.url}/to?https://127.0.0.1:99999/x", certificate, TOKEN)
    with pytest.raises(URLFetchFailed, match="could not fetch"):
        _fetch("https://127.0.0.1:99999/x", certificate, TOKEN)
