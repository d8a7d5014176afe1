"""The Open Inference Protocol gateway, called by clients nobody here wrote: tritonclient,
curl, and C and Fortran programs built with libcurl. A real hub, real workers, and the
gateway as its own process (``dlhub-hpc gateway start``)."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlhub_hpc import Client, Hub, HubConfig
from dlhub_hpc.errors import PermissionDenied
from dlhub_hpc.security.keys import KeyPair
from tests.integration.conftest import FAST, SERVABLES, wait_for
from tests.integration.test_auth import servable_copy

OIP = Path(__file__).resolve().parents[2] / "docs" / "oip"
FLOATS = [1.5, 2.5, 4.0]


@dataclass
class Site:
    hub: Hub
    admin: Client
    url: str
    tokens: dict[str, str]  # identity -> token
    token_ids: dict[str, str]


def start_gateway(hub_address: str, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """``dlhub-hpc gateway start --port 0`` as a process; its URL once it listens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dlhub_hpc.cli", "--hub", hub_address, "gateway", "start",
         "--port", "0", *extra],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the process prints its URL once it listens
    assert line.startswith("gateway listening on "), f"the gateway did not start: {line!r}"
    return proc, line.split()[-1]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    home = tmp_path_factory.mktemp("gateway-hub")
    hub = Hub(HubConfig(home=home, client_address="tcp://127.0.0.1:0",
                        worker_address="tcp://127.0.0.1:0", **FAST)).start()
    admin = Client(hub.client_address, timeout=60)
    proc = None
    try:
        for name in ("alice", "bob"):
            admin.add_identity(name, KeyPair.generate().public)
        private = servable_copy(tmp_path_factory.mktemp("gateway-servables"), "alice", "secret",
                                ["user:alice"])
        for directory in (SERVABLES / "tensors", private):
            name = admin.publish(directory)["name"]
            admin.start_workers(name, 1)
            admin.wait_for_workers(name, 1, timeout=60)
        made = {n: admin.control("tokens", action="create", identity=n) for n in ("alice", "bob")}
        proc, url = start_gateway(hub.client_address)
        yield Site(hub, admin, url, {n: m["token"] for n, m in made.items()},
                   {n: m["id"] for n, m in made.items()})
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        admin.close()
        hub.stop()


def curl(*args: str) -> tuple[int, dict[str, object]]:
    """curl's answer: the HTTP status and the JSON body."""
    out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *args], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    body, _, status = out.rpartition("\n")
    return int(status), json.loads(body)


def infer_body(data: list[float], datatype: str = "FP32") -> str:
    return json.dumps({"inputs": [{"name": "input", "shape": [len(data)],
                                   "datatype": datatype, "data": data}]})


def test_tritonclient_reads_metadata_and_infers_with_json_and_binary_tensors(
        site: Site) -> None:
    httpclient = pytest.importorskip("tritonclient.http", reason="pip install tritonclient[http]")
    url = site.url.removeprefix("http://")
    headers = {"Authorization": f"Bearer {site.tokens['alice']}"}
    triton = httpclient.InferenceServerClient(url)
    try:
        assert triton.is_server_live() and triton.is_server_ready()
        assert "binary_tensor_data" in triton.get_server_metadata()["extensions"]
        meta = triton.get_model_metadata("test/tensors", headers=headers)
        assert meta["name"] == "test/tensors" and meta["versions"] == ["1"]
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1]}]
        config = triton.get_model_config("test/tensors", "1", headers=headers)
        assert (config["name"], config["max_batch_size"]) == ("test/tensors", 0)
        assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [-1]}]
        assert triton.is_model_ready("test/tensors", headers=headers)
        x = np.array(FLOATS, dtype=np.float32)
        for binary in (False, True):
            tensor = httpclient.InferInput("input", [3], "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            wanted = httpclient.InferRequestedOutput("output", binary_data=binary)
            result = triton.infer("test/tensors", [tensor], outputs=[wanted], headers=headers,
                                  model_version="1")
            out = result.as_numpy("output")
            assert out.dtype == np.float32 and out.tolist() == [3.0, 5.0, 8.0]
    finally:
        triton.close()



def test_a_large_binary_tensor_goes_to_the_hub_as_a_memfd_not_through_curvezmq(
        site: Site) -> None:
    """The gateway shares the hub's node: its connection opens the same-node link, so a
    large tensor and its answer pass as sealed memfds (counted by the hub)."""
    httpclient = pytest.importorskip("tritonclient.http", reason="pip install tritonclient[http]")

    def counted() -> tuple[int, int]:
        stats = site.admin.status()["stats"]
        return int(stats.get("local_path_in", 0)), int(stats.get("local_path_out", 0))

    before = counted()
    x = np.random.default_rng(7).standard_normal(2**20).astype(np.float32)  # 4 MiB
    triton = httpclient.InferenceServerClient(site.url.removeprefix("http://"))
    try:
        tensor = httpclient.InferInput("input", [x.size], "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        result = triton.infer("test/tensors", [tensor], headers={
            "Authorization": f"Bearer {site.tokens['alice']}"},
            outputs=[httpclient.InferRequestedOutput("output", binary_data=True)])
        assert result.as_numpy("output").tobytes() == (x * 2).tobytes()
    finally:
        triton.close()
    # in: the gateway's request and the worker's result; out: the batch and the reply
    wait_for(lambda: (now := counted())[0] >= before[0] + 2 and now[1] >= before[1] + 2,
             timeout=10, what="the tensor counted by the path both ways")


def test_tritonclients_asyncio_http_client_infers_many_at_once(site: Site) -> None:
    """``tritonclient.http.aio`` (aiohttp underneath): binary and JSON tensors, many calls
    awaited together, each its own answer."""
    ahttp = pytest.importorskip("tritonclient.http.aio", reason="pip install tritonclient[http]")
    httpclient = pytest.importorskip("tritonclient.http")
    headers = {"Authorization": f"Bearer {site.tokens['alice']}"}

    async def calls() -> list[list[float]]:
        client = ahttp.InferenceServerClient(site.url.removeprefix("http://"))
        try:
            async def one(i: int) -> list[float]:
                x = httpclient.InferInput("input", [2], "FP32")
                x.set_data_from_numpy(np.array([i, i + 0.5], dtype=np.float32),
                                      binary_data=i % 2 == 0)
                result = await client.infer("test/tensors", [x], headers=dict(headers))
                out: list[float] = result.as_numpy("output").tolist()
                return out

            return list(await asyncio.gather(*(one(i) for i in range(16))))
        finally:
            await client.close()

    assert asyncio.run(calls()) == [[2.0 * i, 2.0 * i + 1.0] for i in range(16)]

def test_many_requests_at_once_each_get_their_own_answer(site: Site) -> None:
    """Replies that come from the hub in a burst are each handed to their own caller."""
    aiohttp = pytest.importorskip("aiohttp")
    headers = {"Authorization": f"Bearer {site.tokens['alice']}"}

    async def one(session: Any, i: int) -> list[float]:
        async with session.post(f"{site.url}/v2/models/test/tensors/infer",
                                data=infer_body([float(i), 0.5]), headers=headers) as response:
            assert response.status == 200, await response.text()
            return list((await response.json())["outputs"][0]["data"])

    async def main() -> list[list[float]]:
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(*(one(session, i) for i in range(200)))

    assert asyncio.run(main()) == [[2.0 * i, 1.0] for i in range(200)]


def test_curl_calls_a_method_named_in_the_parameters(site: Site) -> None:
    body = json.dumps({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES",
                                   "data": ["Ada"]}], "parameters": {"method": "greet"}})
    status, answer = curl("-H", f"Authorization: Bearer {site.tokens['alice']}",
                          "-d", body, f"{site.url}/v2/models/test%2Ftensors/infer")
    assert status == 200, answer
    assert answer["outputs"] == [{"name": "output", "datatype": "BYTES", "shape": [1],
                                  "data": ["hello, Ada"]}]


def test_errors_come_back_in_the_protocols_format_with_fitting_statuses(site: Site) -> None:
    alice, bob = (f"Authorization: Bearer {site.tokens[n]}" for n in ("alice", "bob"))
    infer = f"{site.url}/v2/models/%s/infer"
    cases = [
        (401, "TokenRefused", ["-H", "Authorization: Bearer dlh_wrong", "-d",
                               infer_body(FLOATS), infer % "test/tensors"]),
        (401, "TokenRefused", ["-d", infer_body(FLOATS), infer % "test/tensors"]),
        (403, "PermissionDenied", ["-H", bob, "-d", infer_body(FLOATS),
                                   infer % "alice/secret"]),
        (404, "ServableNotFound", ["-H", alice, "-d", infer_body(FLOATS),
                                   infer % "test/nothing"]),
        (400, "InvalidInput", ["-H", alice, "-d", json.dumps({"inputs": [
            {"name": "input", "shape": [4], "datatype": "FP32", "data": FLOATS}]}),
            infer % "test/tensors"]),
        (400, "InvalidInput", ["-H", alice, "-d", infer_body(["a"], "FP32"),  # type: ignore[list-item]
                               infer % "test/tensors"]),
    ]
    for status, kind, args in cases:
        got, answer = curl(*args)
        assert (got, list(answer)) == (status, ["error"]), (args, answer)
        assert str(answer["error"]).startswith(f"{kind}: "), answer


def test_a_compressed_body_is_read_and_one_not_in_its_encoding_is_an_input_error(
        site: Site, tmp_path: Path) -> None:
    alice = f"Authorization: Bearer {site.tokens['alice']}"
    url = f"{site.url}/v2/models/test/tensors/infer"
    packed = tmp_path / "body.gz"
    packed.write_bytes(gzip.compress(infer_body(FLOATS).encode()))
    got, answer = curl("-H", alice, "-H", "Content-Encoding: gzip", "--data-binary",
                       f"@{packed}", url)
    assert got == 200 and answer["outputs"][0]["data"] == [3.0, 5.0, 8.0]  # type: ignore[index]
    got, answer = curl("-H", alice, "-H", "Content-Encoding: deflate", "-d",
                       infer_body(FLOATS), url)
    assert got == 400 and str(answer["error"]).startswith(
        "InvalidInput: the request body is not deflate"), answer
    # A few hundred KiB that inflate past the gateway's 256 MiB limit: refused, and the
    # gateway serves on.
    packed.write_bytes(gzip.compress(b" " * (300 << 20), 9))
    got, answer = curl("-H", alice, "-H", "Content-Encoding: gzip", "--data-binary",
                       f"@{packed}", url)
    assert got == 413 and str(answer["error"]).startswith("PayloadTooLarge: "), answer
    got, answer = curl("-H", alice, "-d", infer_body(FLOATS), url)
    assert got == 200, answer


def test_the_owner_runs_a_private_model_that_others_may_not_see(site: Site) -> None:
    status, answer = curl("-H", f"Authorization: Bearer {site.tokens['alice']}", "-d",
                          infer_body(FLOATS, "FP64"), f"{site.url}/v2/models/alice/secret/infer")
    assert status == 200, answer
    assert answer["outputs"][0]["data"] == [8.0]  # type: ignore[index]
    status, answer = curl("-H", f"Authorization: Bearer {site.tokens['bob']}",
                          f"{site.url}/v2/models/alice/secret")
    assert status == 403 and "PermissionDenied" in str(answer["error"])


def _build(tmp_path: Path, compiler: str, *sources: str) -> Path:
    exe = tmp_path / f"infer-{compiler}"
    if compiler == "gfortran":
        obj = tmp_path / "oip_client.o"
        subprocess.run(["gcc", "-c", "-O2", "-o", str(obj), str(OIP / "oip_client.c")],
                       check=True)
        sources = (*sources, str(obj))
    else:
        sources = (*sources, str(OIP / "oip_client.c"))
    subprocess.run([compiler, "-O2", "-o", str(exe), *sources, "-lcurl"], check=True,
                   capture_output=True, timeout=120)
    return exe


@pytest.mark.parametrize(("compiler", "source"), [("gcc", "infer.c"),
                                                  ("gfortran", "infer.f90")])
def test_a_c_and_a_fortran_program_call_a_model_through_libcurl(
        site: Site, tmp_path: Path, compiler: str, source: str) -> None:
    if shutil.which(compiler) is None or not any(
            Path(d, "curl", "curl.h").exists()
            for d in ("/usr/include", "/usr/include/x86_64-linux-gnu",
                      "/usr/include/aarch64-linux-gnu")):
        pytest.skip(f"needs {compiler} and libcurl's headers: apt-get install {compiler} "
                    "libcurl4-openssl-dev (scripts/install-system-deps.sh)")
    exe = _build(tmp_path, compiler, str(OIP / source))
    url = f"{site.url}/v2/models/test/tensors/infer"
    run = subprocess.run([str(exe), url, site.tokens["alice"]], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr + run.stdout
    assert [float(v) for v in run.stdout.split()] == [3.0, 5.0, 8.0]
    refused = subprocess.run([str(exe), url, "dlh_wrong"], capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 1
    assert "TokenRefused" in refused.stderr + refused.stdout


def test_keys_token_commands_make_list_and_revoke_a_token(site: Site) -> None:
    env = {**os.environ, "DLHUB_HPC_HUB": site.hub.client_address}

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "dlhub_hpc.cli", "keys", "token", *args],
                              capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    token = cli("create", "--identity", "bob", "--note", "ci").strip().splitlines()[-1]
    assert token.startswith("dlh_")
    listing = cli("list")
    assert "bob" in listing and token not in listing
    me = f"Authorization: Bearer {token}"
    assert curl("-H", me, f"{site.url}/v2/models/test/tensors")[0] == 200
    token_id = next(m["id"] for m in site.admin.control("tokens", action="list")
                    if m["note"] == "ci")
    assert "revoked 1 token" in cli("revoke", token_id)
    status, answer = curl("-H", me, f"{site.url}/v2/models/test/tensors")
    assert status == 401 and "TokenRefused" in str(answer["error"])


def test_a_non_admin_caller_cannot_make_tokens(site: Site) -> None:
    pair = KeyPair.generate()
    site.admin.add_identity("carol", pair.public)
    with Client(site.hub.client_address, timeout=30, keys=pair) as carol, \
            pytest.raises(PermissionDenied, match="only the hub's admin"):
        carol.control("tokens", action="create", identity="alice")


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by openssl in ``folder``."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make a certificate: apt-get install openssl")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_tls_with_a_given_certificate(site: Site, tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    proc, url = start_gateway(site.hub.client_address, "--tls-cert", str(cert),
                              "--tls-key", str(key))
    try:
        assert url.startswith("https://")
        status, answer = curl("--cacert", str(cert), "-H",
                              f"Authorization: Bearer {site.tokens['alice']}",
                              "-d", infer_body(FLOATS), f"{url}/v2/models/test/tensors/infer")
        assert status == 200 and answer["outputs"][0]["data"] == [3.0, 5.0, 8.0]  # type: ignore[index]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_hub_with_gateway_settings_starts_and_stops_its_gateway(tmp_path: Path) -> None:
    hub = Hub(HubConfig(home=tmp_path / "hub", client_address="tcp://127.0.0.1:0",
                        worker_address="tcp://127.0.0.1:0", gateway={"port": 0}, **FAST))
    hub.start()
    try:
        assert hub.gateway is not None
        url = json.loads((tmp_path / "hub" / "hub.json").read_text())["gateway_url"]
        assert url == hub.gateway.url and url.startswith("http://127.0.0.1:")
        assert curl(f"{url}/v2/health/live") == (200, {"live": True})
        assert curl(f"{url}/v2/health/ready") == (200, {"ready": True})
        proc = hub.gateway._proc
        assert proc is not None
    finally:
        hub.stop()
    assert proc.wait(timeout=30) is not None  # the hub ended its gateway


def test_the_gateway_refuses_a_network_address_without_tls() -> None:
    done = subprocess.run([sys.executable, "-m", "dlhub_hpc.cli", "gateway", "start",
                           "--host", "0.0.0.0", "--port", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "only with TLS" in done.stderr
    with pytest.raises(ValueError, match="only with TLS"):
        HubConfig(gateway={"host": "0.0.0.0"})


def test_the_hub_acts_as_the_tokens_identity_not_the_connections(site: Site) -> None:
    """The guarantee is the hub's: the gateway connects as the admin, yet a request with
    bob's token may not run alice's private servable, and a forged token runs nothing."""
    from dlhub_hpc.errors import TokenRefused
    from dlhub_hpc.gateway.hubclient import HubClient

    async def call(token: str) -> object:
        async with HubClient(site.hub.client_address, timeout=30) as hub:
            assert (await hub.whoami())["admin"]  # the connection itself is the admin's
            return await hub.infer(token, "alice/secret", None, "", [1.0, 2.0], None, 30)

    assert asyncio.run(call(site.tokens["alice"])) == 3.0
    with pytest.raises(PermissionDenied):
        asyncio.run(call(site.tokens["bob"]))
    with pytest.raises(TokenRefused):
        asyncio.run(call("dlh_forged"))


def test_aiohttps_own_refusals_come_in_the_protocols_format_too(site: Site) -> None:
    """A body over the limit (413) and an unknown endpoint (404), from an application made
    with a small limit, in front of the real hub."""
    from aiohttp.test_utils import TestClient, TestServer

    from dlhub_hpc.gateway import build_app
    from dlhub_hpc.gateway.hubclient import HubClient

    async def calls() -> list[tuple[int, dict[str, object]]]:
        app = build_app(HubClient(site.hub.client_address, timeout=30), max_body_bytes=1000)
        async with TestClient(TestServer(app)) as http:
            headers = {"Authorization": f"Bearer {site.tokens['alice']}"}
            out = []
            for method, path, body in (
                    ("POST", "/v2/models/test/tensors/infer", infer_body([0.5] * 400)),
                    ("GET", "/v2/nothing/here", None),
                    ("POST", "/v2/models/test/tensors/infer", infer_body(FLOATS))):
                answer = await http.request(method, path, data=body, headers=headers)
                out.append((answer.status, await answer.json()))
            return out

    (big, big_body), (missing, missing_body), (ok, ok_body) = asyncio.run(calls())
    assert big == 413 and str(big_body["error"]).startswith("PayloadTooLarge: ")
    assert "1000 bytes" in str(big_body["error"])
    assert missing == 404 and "no endpoint GET /v2/nothing/here" in str(missing_body["error"])
    assert ok == 200 and ok_body["outputs"][0]["data"] == [3.0, 5.0, 8.0]  # type: ignore[index]
