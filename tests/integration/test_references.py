"""Inputs and results by reference through a real hub and worker: the hub reads a file for
a caller only if the caller's Unix account could, and writes results as the caller's own.

alice is mapped to the Unix user ``nobody``; the hub runs as root (as CI does), so the
files below can belong to either of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import io
import os
import pwd
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
import zmq

from dlhub_hpc import AsyncClient, Client, FileRef, Hub, URLRef
from dlhub_hpc.errors import (
    NoUnixAccount,
    ReferenceDenied,
    ReferenceNotFound,
    ReferenceTooLarge,
    URLFetchFailed,
)
from tests.integration.conftest import people_on

REFDATA = Path(__file__).parent / "servables" / "refdata"
LIMIT = 2**20  # max_reference_bytes of these hubs
pytestmark = [
    pytest.mark.skipif(not zmq.has("curve"), reason="libzmq was built without CURVE"),
    pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                       reason="needs root, to make files of a second Unix user (CI runs as root)"),
]
NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def share() -> Iterator[Path]:
    """A world-searchable folder with alice's own (nobody's) folder in it."""
    root = Path(tempfile.mkdtemp(prefix="dlhub-refs-"))
    os.chmod(root, 0o755)
    (root / "alice").mkdir(mode=0o700)
    os.chown(root / "alice", NOBODY.pw_uid, NOBODY.pw_gid)
    yield root
    shutil.rmtree(root)


@pytest.fixture
def certificate(share: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, and its key."""
    cert, key = share / "cert.pem", share / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture
def site(make_hub: Callable[..., Hub], tmp_path: Path,
         certificate: tuple[Path, Path]) -> Iterator[dict[str, Any]]:
    """A hub that maps alice to nobody, trusts the test's CA, serves refdata publicly."""
    hub = make_hub(user_map={"alice": "nobody"}, max_reference_bytes=LIMIT,
                   reference_ca_file=certificate[0], reference_allow_networks=["127.0.0.0/8"])
    with people_on(hub) as people:
        admin = people["admin"]
        folder = Path(shutil.copytree(REFDATA, tmp_path / "refdata"))
        spec = yaml.safe_load((folder / "servable.yaml").read_text())
        spec["dlhub"]["owner"] = admin.whoami()["identity"]
        (folder / "servable.yaml").write_text(yaml.safe_dump(spec))
        name = str(admin.publish(folder)["name"])
        admin.start_workers(name, 1)
        admin.wait_for_workers(name, 1, timeout=60)
        yield {"hub": hub, "name": name, **people}


def _as_nobody(path: Path, mode: int = 0o600) -> Path:
    os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    os.chmod(path, mode)
    return path


def _root_only(path: Path) -> Path:
    np.save(path, np.ones(3))
    os.chmod(path, 0o600)
    return path


def test_the_callers_own_npy_is_served_as_an_array_and_raw_bytes_as_bytes(
        site: dict[str, Any], share: Path) -> None:
    np.save(share / "alice" / "frame.npy", np.arange(12.0).reshape(3, 4))
    _as_nobody(share / "alice" / "frame.npy")
    (share / "alice" / "blob.bin").write_bytes(b"\x00raw bytes")
    _as_nobody(share / "alice" / "blob.bin")
    alice: Client = site["alice"]
    got = alice.run(site["name"], {"frame": FileRef(str(share / "alice" / "frame.npy")),
                                   "blob": FileRef(str(share / "alice" / "blob.bin"))})
    assert got["frame"] == {"kind": "ndarray", "dtype": "<f8", "shape": [3, 4], "sum": 66.0}
    assert got["blob"] == {"kind": "bytes", "size": 10, "head": b"\x00raw bytes"}


def test_a_file_only_root_can_read_is_refused_to_alice_but_not_to_the_admin(
        site: dict[str, Any], share: Path) -> None:
    secret = _root_only(share / "secret.npy")
    with pytest.raises(ReferenceDenied) as err:
        site["alice"].run(site["name"], FileRef(str(secret)))
    assert err.value.details["component"] == str(secret)
    assert "nobody" in err.value.message
    assert site["admin"].run(site["name"], FileRef(str(secret)))["sum"] == 3.0


def test_a_symlink_to_a_forbidden_file_is_judged_on_its_target(
        site: dict[str, Any], share: Path) -> None:
    secret = _root_only(share / "secret.npy")
    os.symlink(secret, share / "alice" / "mine.npy")
    os.lchown(share / "alice" / "mine.npy", NOBODY.pw_uid, NOBODY.pw_gid)
    os.symlink("/etc/shadow", share / "alice" / "shadow")
    for link in ("mine.npy", "shadow"):
        with pytest.raises(ReferenceDenied) as err:
            site["alice"].run(site["name"], FileRef(str(share / "alice" / link)))
        assert err.value.details["component"] in (str(secret), "/etc/shadow")


def test_result_to_writes_an_npy_the_caller_owns_and_refuses_a_folder_she_cannot_write(
        site: dict[str, Any], share: Path) -> None:
    np.save(share / "alice" / "v.npy", np.array([1.0, 2.0]))
    _as_nobody(share / "alice" / "v.npy")
    out = share / "alice" / "doubled.npy"
    got = site["alice"].run(site["name"], FileRef(str(share / "alice" / "v.npy")),
                            method="double", result_to=out)
    assert got == FileRef(str(out))
    assert out.stat().st_uid == NOBODY.pw_uid
    read = subprocess.run(["runuser", "-u", "nobody", "--", "cat", str(out)],
                          capture_output=True, check=True).stdout
    assert np.load(out).tolist() == [2.0, 4.0] and read == out.read_bytes()
    with pytest.raises(ReferenceDenied, match="may not write"):
        site["alice"].run(site["name"], [1.0], method="double", result_to=share / "x.npy")
    assert not (share / "x.npy").exists()


def test_one_bad_reference_fails_only_its_item_and_no_account_is_refused(
        site: dict[str, Any], share: Path) -> None:
    np.save(share / "alice" / "ok.npy", np.ones(4))
    _as_nobody(share / "alice" / "ok.npy")
    good, bad = FileRef(str(share / "alice" / "ok.npy")), FileRef(str(share / "gone.npy"))
    out = site["alice"].run_batch(site["name"], [good, bad, good], return_exceptions=True)
    assert out[0]["sum"] == out[2]["sum"] == 4.0
    assert isinstance(out[1], ReferenceNotFound)
    with pytest.raises(NoUnixAccount, match="user_map"):  # bob has no Unix account here
        site["bob"].run(site["name"], good)


@contextlib.contextmanager
def tls_server(handler: type[http.server.BaseHTTPRequestHandler],
               certificate: tuple[Path, Path]) -> Iterator[str]:
    """``handler`` served over https on loopback with the test's certificate: its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


HELD: list[threading.Event] = [threading.Event()]  # lets the https server's /held/ answer
ASKED: list[threading.Event] = [threading.Event()]  # set when a /held/ request came


@pytest.fixture
def https(share: Path, certificate: tuple[Path, Path]) -> Iterator[str]:
    """An https server on loopback serving ``share/www`` with the test's certificate."""
    www = share / "www"
    www.mkdir()
    np.save(www / "frame.npy", np.arange(5.0))
    (www / "big.bin").write_bytes(b"x" * (LIMIT + 1))

    release, asked = threading.Event(), threading.Event()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(www), **kwargs)

        def do_GET(self) -> None:
            if self.path.startswith("/held/"):  # answers once the test lets it
                asked.set()
                release.wait(60)
                self.path = self.path.removeprefix("/held")
            super().do_GET()

        def log_message(self, *args: Any) -> None:
            pass

    HELD[0], ASKED[0] = release, asked
    with tls_server(Quiet, certificate) as url:
        yield url
        release.set()


def test_an_https_url_is_fetched_with_the_configured_ca_and_capped(
        site: dict[str, Any], https: str) -> None:
    alice: Client = site["alice"]
    got = alice.run(site["name"], URLRef(f"{https}/frame.npy"))
    assert got == {"kind": "ndarray", "dtype": "<f8", "shape": [5], "sum": 10.0}
    with pytest.raises(URLFetchFailed, match="404"):
        alice.run(site["name"], URLRef(f"{https}/missing.npy"))
    with pytest.raises(ReferenceTooLarge):
        alice.run(site["name"], URLRef(f"{https}/big.bin"))


def test_the_cli_takes_a_reference_and_result_to(site: dict[str, Any], share: Path) -> None:
    np.save(share / "v.npy", np.array([0.5, 1.5]))
    out = share / "cli-out.npy"
    done = subprocess.run(
        [sys.executable, "-m", "dlhub_hpc.cli", "--hub", site["hub"].client_address, "run",
         site["name"], f"@ref:{share / 'v.npy'}", "--method", "double", "--result-to",
         str(out)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f'"{out}"'
    assert np.load(out).tolist() == [1.0, 3.0]
    bad = subprocess.run(
        [sys.executable, "-m", "dlhub_hpc.cli", "--hub", site["hub"].client_address, "run",
         site["name"], "@ref:http://127.0.0.1/x"], capture_output=True, text=True,
        timeout=120, check=False)
    assert bad.returncode != 0 and "https://" in bad.stderr


def test_a_download_in_progress_holds_no_other_caller(site: dict[str, Any], https: str,
                                                      share: Path) -> None:
    alice: Client = site["alice"]
    held = alice.submit(site["name"], URLRef(f"{https}/held/frame.npy"))
    assert ASKED[0].wait(60), "the hub never asked for the held download"
    # While the hub waits on that server, others are answered, by reference too.
    assert site["admin"].run(site["name"], [1.0, 2.0], method="double").tolist() == [2.0, 4.0]
    np.save(share / "alice" / "v.npy", np.ones(2))
    _as_nobody(share / "alice" / "v.npy")
    assert alice.run(site["name"], FileRef(str(share / "alice" / "v.npy")))["sum"] == 2.0
    assert not held.done()
    HELD[0].set()
    assert held.result(timeout=60)["sum"] == 10.0


def test_the_async_client_takes_references_and_result_to(site: dict[str, Any],
                                                         share: Path) -> None:
    np.save(share / "w.npy", np.array([3.0]))
    out = share / "async-out.npy"

    async def call() -> Any:
        async with AsyncClient(site["hub"].client_address, timeout=60) as client:
            return await client.run(site["name"], FileRef(str(share / "w.npy")),
                                    method="double", result_to=out)

    assert asyncio.run(call()) == FileRef(str(out))
    assert np.load(out).tolist() == [6.0]


TOKEN = "Ag.collection-https_token"


@pytest.fixture
def private_https(certificate: tuple[Path, Path]) -> Iterator[tuple[str, list[str | None]]]:
    """An https server on loopback whose /frame.npy needs ``Bearer TOKEN`` (as a Globus
    collection's HTTPS server does); it keeps the Authorization header of each GET."""
    seen: list[str | None] = []
    body = io.BytesIO()
    np.save(body, np.arange(4.0))

    class Private(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            ok = self.path == "/frame.npy" and seen[-1] == f"Bearer {TOKEN}"
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", str(len(body.getvalue()) if ok else 0))
            self.end_headers()
            if ok:
                self.wfile.write(body.getvalue())

        def log_message(self, *args: Any) -> None:
            pass

    with tls_server(Private, certificate) as url:
        yield url, seen


def test_a_url_that_needs_the_callers_token_is_fetched_with_it(
        site: dict[str, Any], private_https: tuple[str, list[str | None]]) -> None:
    alice: Client = site["alice"]
    base, seen = private_https
    got = alice.run(site["name"], URLRef(f"{base}/frame.npy", TOKEN))
    assert got == {"kind": "ndarray", "dtype": "<f8", "shape": [4], "sum": 6.0}
    assert seen == [f"Bearer {TOKEN}"]
    with pytest.raises(URLFetchFailed, match="token=") as refused:  # says what to do
        alice.run(site["name"], URLRef(f"{base}/frame.npy"))
    assert seen[-1] is None and refused.value.details["status"] == 401
    # the CLI takes the token from an environment variable, never from its arguments
    cli = [sys.executable, "-m", "dlhub_hpc.cli", "--hub", site["hub"].client_address, "run",
           site["name"], f"@ref:{base}/frame.npy", "--token-env", "FRAME_TOKEN"]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "FRAME_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr
    assert '"sum": 6.0' in done.stdout and seen[-1] == f"Bearer {TOKEN}"
    unset = subprocess.run(cli, capture_output=True, text=True, timeout=120, check=False,
                           env={k: v for k, v in os.environ.items() if k != "FRAME_TOKEN"})
    assert unset.returncode != 0 and "FRAME_TOKEN is not set" in unset.stderr
