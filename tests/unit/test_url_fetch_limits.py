"""URLRef downloads: one deadline for the whole download, public addresses only, and no
caller can hold every download thread."""

from __future__ import annotations

import http.server
import ipaddress
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlhub_hpc.broker import reference_routing, url_fetch
from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.broker.reference_routing import ReferenceRouting
from dlhub_hpc.errors import ReferenceDenied, URLFetchFailed
from dlhub_hpc.protocol import Reply, Request
from dlhub_hpc.references import FileRef, URLRef

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture
def server(certificate: tuple[Path, Path]) -> Iterator[tuple[str, threading.Event]]:
    """/ok answers at once; /trickle sends a byte at a time, each well within the
    deadline, until released; /held answers once released."""
    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/held":
                release.wait(60)
            if self.path.startswith("/to/"):  # a redirect to the address after /to/
                self.send_response(302)
                self.send_header("Location", f"https://{self.path[4:]}/ok")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", "400" if self.path == "/trickle" else "2")
            self.end_headers()
            if self.path != "/trickle":
                self.wfile.write(b"ok")
                return
            for _ in range(400):
                if release.wait(0.1):  # the adversary's pace, not the test's wait
                    return
                self.wfile.write(b"x")
                self.wfile.flush()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{httpd.server_address[1]}", release
    release.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("url", ["https://127.0.0.1:9/x", "https://[::1]:9/x",
                                 "https://169.254.169.254/latest/meta-data",
                                 "https://10.0.0.1/x", "https://192.168.1.1/x",
                                 "https://localhost:9/x"])
def test_non_public_addresses_are_refused_unless_the_admin_allows_them(url: str) -> None:
    with pytest.raises(ReferenceDenied, match="reference_allow_networks"):
        url_fetch.fetch(url, 1 << 20, 5.0, url_fetch.opener(None))


def test_an_allowed_range_is_fetched(server: tuple[str, threading.Event],
                                     certificate: tuple[Path, Path]) -> None:
    base, _ = server
    assert url_fetch.fetch(f"{base}/ok", 10, 30.0, url_fetch.opener(certificate[0]),
                           LOOPBACK) == b"ok"


def test_a_redirect_is_checked_like_the_first_address(
        server: tuple[str, threading.Event], certificate: tuple[Path, Path]) -> None:
    base, _ = server
    port = base.rsplit(":", 1)[1]
    via, only_this = url_fetch.opener(certificate[0]), (ipaddress.ip_network("127.0.0.1/32"),)
    assert url_fetch.fetch(f"{base}/to/127.0.0.1:{port}", 10, 30.0, via, only_this) == b"ok"
    for target in (f"127.0.0.2:{port}", f"[::ffff:127.0.0.2]:{port}", "169.254.169.254"):
        with pytest.raises(ReferenceDenied, match="reference_allow_networks"):
            url_fetch.fetch(f"{base}/to/{target}", 10, 30.0, via, only_this)


def test_the_deadline_covers_the_whole_download(server: tuple[str, threading.Event],
                                                certificate: tuple[Path, Path]) -> None:
    base, _ = server
    with pytest.raises(URLFetchFailed, match="reference_fetch_timeout"):
        url_fetch.fetch(f"{base}/trickle", 1 << 20, 1.0, url_fetch.opener(certificate[0]),
                        LOOPBACK)


def test_one_caller_cannot_hold_every_download_or_file_thread(
        server: tuple[str, threading.Event], certificate: tuple[Path, Path],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, release = server
    monkeypatch.setattr(reference_routing, "MAX_WAITING", 1, raising=False)
    config = HubConfig(home=tmp_path / "home", user_map={"alice": "nobody"},
                       reference_ca_file=certificate[0],
                       reference_allow_networks=["127.0.0.0/8"])
    woke = threading.Event()
    delivered: list[str] = []
    sent: list[Reply] = []
    routing = ReferenceRouting(config, woke.set, lambda: "admin", lambda u, r: None,
                               lambda i, u, r, c: delivered.append(r.request_id),
                               lambda i, m: sent.append(m))  # type: ignore[arg-type]
    cap = getattr(reference_routing, "MAX_PER_USER", {"urls": 2})["urls"]
    for n in range(cap + 2):  # cap running, one waiting its turn, one too many
        request = Request(f"a{n}", "x/y", None, "run", [URLRef(f"{base}/held")])
        assert routing.takes(b"alice", "alice", request, None)
    assert [m.request_id for m in sent] == [f"a{cap + 1}"]  # past what may wait: at once
    assert sent[0].error is not None and sent[0].error["type"] == "Overloaded"
    np.save(tmp_path / "v.npy", np.ones(2))
    for n in range(3):  # more than one caller's share of the file threads: they wait
        assert routing.takes(b"hub", "", Request(f"b{n}", "x/y", None, "run",
                                                 [FileRef(str(tmp_path / "v.npy"))]), None)
    while not {"b0", "b1", "b2"} <= set(delivered):  # past the held downloads
        assert woke.wait(60)
        woke.clear()
        routing.run_finished()
    assert not any(d.startswith("a") for d in delivered)
    release.set()
    while len(delivered) < cap + 4:
        assert woke.wait(60)
        woke.clear()
        routing.run_finished()
    routing.close()
