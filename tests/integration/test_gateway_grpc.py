"""The gateway's gRPC endpoint (``dlhub-hpc gateway start --grpc-port``), called with
``tritonclient.grpc`` as any Triton user would, beside REST on the same gateway process, in
front of a real hub and real workers (the hub of ``test_gateway``'s ``site`` fixture)."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.test_gateway import (  # noqa: F401  (site: the hub's fixture)
    FLOATS,
    Site,
    curl,
    infer_body,
    self_signed_certificate,
    site,
    start_gateway,
)

grpcclient = pytest.importorskip("tritonclient.grpc", reason="pip install tritonclient[grpc]")
httpclient = pytest.importorskip("tritonclient.http", reason="pip install tritonclient[http]")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException
mc = pytest.importorskip("tritonclient.grpc.model_config_pb2")

GRID_SPEC = """\
datacite:
  title: Two-dimensional arrays, parameters and several outputs over gRPC
  creators: ["Test, Ada"]
dlhub:
  owner: test
  name: grid
servable:
  type: python_function
  methods:
    run:
      function: "grid:scale"
      input: {type: ndarray, dtype: float64, shape: [null, null]}
      output: {type: ndarray, dtype: float64, shape: [null, null]}
      parameters: {factor: 2.0}
    stats:
      function: "grid:stats"
      input: {type: ndarray, dtype: float64}
"""
GRID_CODE = """\
import numpy as np


def scale(x, factor=2.0):
    return np.asarray(x, dtype=np.float64) * factor


def stats(x):
    x = np.asarray(x)
    return {"sum": x.sum(axis=-1), "max": x.max(axis=-1), "label": "rows"}
"""


@dataclass
class Endpoints:
    site: Site
    rest: str  # http://HOST:PORT
    grpc: str  # HOST:PORT, as tritonclient.grpc takes it

    def headers(self, who: str = "alice") -> dict[str, str]:
        return {"authorization": f"Bearer {self.site.tokens[who]}"}


def start_with_grpc(hub_address: str, *extra: str) -> tuple[subprocess.Popen[str], str, str]:
    """A gateway with both endpoints; it prints REST's URL, then gRPC's, once both listen."""
    proc, rest = start_gateway(hub_address, "--grpc-port", "0", *extra)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("gateway listening on grpc"), f"no gRPC endpoint: {line!r}"
    return proc, rest, line.split()[-1]


@pytest.fixture(scope="module")
def endpoints(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:  # noqa: F811
    grid = tmp_path_factory.mktemp("grid")
    (grid / "servable.yaml").write_text(GRID_SPEC)
    (grid / "grid.py").write_text(GRID_CODE)
    name = site.admin.publish(grid)["name"]
    site.admin.start_workers(name, 1)
    site.admin.wait_for_workers(name, 1, timeout=60)
    proc, rest, url = start_with_grpc(site.hub.client_address)
    try:
        assert url.startswith("grpc://127.0.0.1:")
        yield Endpoints(site, rest, url.removeprefix("grpc://"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def triton(endpoints: Endpoints) -> Iterator[Any]:
    client = grpcclient.InferenceServerClient(endpoints.grpc)
    try:
        yield client
    finally:
        client.close()


def fp_input(x: np.ndarray, datatype: str = "FP32", name: str = "input") -> Any:
    tensor = grpcclient.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


def refusal(call: Any) -> tuple[str, str]:
    """The gRPC status and message a call that must fail ended with."""
    with pytest.raises(InferenceServerException) as failed:
        call()
    return str(failed.value.status()), str(failed.value.message())


def test_health_and_server_metadata(triton: Any) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert meta.name == "dlhub-hpc" and meta.version


def test_model_metadata_and_readiness_are_those_rest_gives(endpoints: Endpoints,
                                                           triton: Any) -> None:
    rest = httpclient.InferenceServerClient(endpoints.rest.removeprefix("http://"))
    try:
        for model in ("test/tensors", "test/grid"):
            want = rest.get_model_metadata(model, headers=endpoints.headers())
            got = triton.get_model_metadata(model, headers=endpoints.headers())
            assert (got.name, list(got.versions), got.platform) == (
                want["name"], want["versions"], want["platform"])
            for mine, theirs in ((got.inputs, want["inputs"]), (got.outputs, want["outputs"])):
                assert [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                        for t in mine] == theirs
    finally:
        rest.close()
    meta = triton.get_model_metadata("test/tensors", headers=endpoints.headers())
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input", "FP32", [-1])]
    assert triton.is_model_ready("test/tensors", headers=endpoints.headers())
    assert triton.is_model_ready("test/tensors", "1", headers=endpoints.headers())
    config = triton.get_model_config("test/tensors", headers=endpoints.headers()).config
    assert (config.name, config.max_batch_size) == ("test/tensors", 0)
    assert [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in config.input] == [
        ("input", "TYPE_FP32", [-1])]


def test_infer_fp32_with_raw_contents(endpoints: Endpoints, triton: Any) -> None:
    x = np.array(FLOATS, dtype=np.float32)
    result = triton.infer("test/tensors", [fp_input(x)], headers=endpoints.headers(),
                          model_version="1", request_id="r-7")
    out = result.as_numpy("output")
    assert out.dtype == np.float32 and out.tolist() == [3.0, 5.0, 8.0]
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == (
        "test/tensors", "1", "r-7")


def test_infer_fp32_with_typed_contents(endpoints: Endpoints) -> None:
    """tritonclient always sends raw contents; typed ``contents`` is what other clients
    (grpcurl, hand-written stubs) send: Triton's own generated stub sends it here."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    request = pb.ModelInferRequest(model_name="test/tensors")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[3])
    tensor.contents.fp32_contents.extend(FLOATS)
    metadata = tuple(endpoints.headers().items())
    with grpc.insecure_channel(endpoints.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request, metadata=metadata, timeout=60)
        assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
            ("output", "FP32", [3])]
        assert np.frombuffer(response.raw_output_contents[0], "<f4").tolist() == [3.0, 5.0, 8.0]
        wrong = pb.ModelInferRequest(model_name="test/tensors")
        wrong.inputs.add(name="input", datatype="FP32", shape=[3]).contents.int_contents.extend(
            [1, 2, 3])
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(wrong, metadata=metadata, timeout=60)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "go in contents.fp32_contents" in str(refused.value.details())


def test_bytes_tensors_to_a_method_named_in_the_parameters(endpoints: Endpoints,
                                                           triton: Any) -> None:
    name = grpcclient.InferInput("input", [1], "BYTES")
    name.set_data_from_numpy(np.array(["Ada"], dtype=object))
    result = triton.infer("test/tensors", [name], headers=endpoints.headers(),
                          parameters={"method": "greet"})
    assert result.as_numpy("output").tolist() == [b"hello, Ada"]


def test_a_2d_array_and_parameters_reach_the_servable(endpoints: Endpoints,
                                                      triton: Any) -> None:
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    default = triton.infer("test/grid", [fp_input(x, "FP64")], headers=endpoints.headers())
    assert default.as_numpy("output").tolist() == (x * 2).tolist()
    scaled = triton.infer("test/grid", [fp_input(x, "FP64")], headers=endpoints.headers(),
                          parameters={"factor": 0.5})
    out = scaled.as_numpy("output")
    assert out.shape == (2, 3) and out.tolist() == (x * 0.5).tolist()


def test_only_the_requested_outputs_come_back(endpoints: Endpoints, triton: Any) -> None:
    x = np.array([[1.0, 5.0], [7.0, 2.0]])
    params = {"method": "stats"}
    every = triton.infer("test/grid", [fp_input(x, "FP64")], headers=endpoints.headers(),
                         parameters=params)
    assert sorted(o.name for o in every.get_response().outputs) == ["label", "max", "sum"]
    assert every.as_numpy("label").tolist() == [b"rows"]
    some = triton.infer("test/grid", [fp_input(x, "FP64")], headers=endpoints.headers(),
                        parameters=params, outputs=[grpcclient.InferRequestedOutput("max")])
    assert [o.name for o in some.get_response().outputs] == ["max"]
    assert some.as_numpy("max").tolist() == [5.0, 7.0]
    assert refusal(lambda: triton.infer(
        "test/grid", [fp_input(x, "FP64")], headers=endpoints.headers(), parameters=params,
        outputs=[grpcclient.InferRequestedOutput("min")]))[0] == "StatusCode.INVALID_ARGUMENT"


def test_refused_tokens_get_unauthenticated_with_rests_message(endpoints: Endpoints,
                                                               triton: Any) -> None:
    x = fp_input(np.array(FLOATS, dtype=np.float32))
    infer = f"{endpoints.rest}/v2/models/test/tensors/infer"
    for headers, curl_args in (({}, []),
                               ({"authorization": "Bearer dlh_wrong"},
                                ["-H", "Authorization: Bearer dlh_wrong"])):
        status, message = refusal(lambda h=headers: triton.infer("test/tensors", [x],
                                                                 headers=h))
        http_status, answer = curl(*curl_args, "-d", infer_body(FLOATS), infer)
        assert (status, http_status) == ("StatusCode.UNAUTHENTICATED", 401)
        assert message == answer["error"] and message.startswith("TokenRefused: ")


def test_typed_errors_get_their_grpc_status_and_the_next_call_still_works(
        endpoints: Endpoints, triton: Any) -> None:
    x = np.array(FLOATS, dtype=np.float32)
    alice, bob = endpoints.headers("alice"), endpoints.headers("bob")
    too_long = fp_input(x)
    too_long.set_shape([4])  # 12 bytes for 4 FP32 elements: a malformed tensor
    cases = [
        ("StatusCode.NOT_FOUND", "ServableNotFound: ",
         lambda: triton.infer("test/nothing", [fp_input(x)], headers=alice)),
        ("StatusCode.PERMISSION_DENIED", "PermissionDenied: ",
         lambda: triton.infer("alice/secret", [fp_input(x.astype(np.float64), "FP64")],
                              headers=bob)),
        ("StatusCode.INVALID_ARGUMENT", "InvalidInput: ",
         lambda: triton.infer("test/tensors", [too_long], headers=alice)),
        ("StatusCode.INVALID_ARGUMENT", "InvalidInput: ",
         lambda: triton.infer("test/tensors", [fp_input(x)], headers=alice,
                              model_version="one")),
        ("StatusCode.NOT_FOUND", "ServableNotFound: ",
         lambda: triton.get_model_metadata("test/nothing", headers=alice)),
    ]
    for status, kind, call in cases:
        got, message = refusal(call)
        assert (got, message[:len(kind)]) == (status, kind), message
        ok = triton.infer("test/tensors", [fp_input(x)], headers=alice)
        assert ok.as_numpy("output").tolist() == [3.0, 5.0, 8.0]


def test_garbage_bytes_and_rpcs_not_served_leave_the_server_serving(endpoints: Endpoints,
                                                                     triton: Any) -> None:
    import grpc

    with grpc.insecure_channel(endpoints.grpc) as channel:
        raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as refused:  # no protobuf message at all
            raw(b"\xff\xff\xff\xff", metadata=tuple(endpoints.headers().items()), timeout=60)
        assert refused.value.code() != grpc.StatusCode.OK
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        with pytest.raises(grpc.RpcError) as broken:  # a stream whose second message is junk
            list(stream(iter([b"", b"\xff\xff\xff\xff"]),
                        metadata=tuple(endpoints.headers().items()), timeout=60))
        assert broken.value.code() != grpc.StatusCode.OK
    assert refusal(triton.get_model_repository_index)[0] == "StatusCode.UNIMPLEMENTED"
    x = fp_input(np.array(FLOATS, dtype=np.float32))
    assert triton.infer("test/tensors", [x], headers=endpoints.headers()).as_numpy(
        "output").tolist() == [3.0, 5.0, 8.0]



def test_a_stream_answers_each_request_by_id_and_a_bad_one_alone(
        endpoints: Endpoints) -> None:
    """tritonclient's stream API (``start_stream`` / ``async_stream_infer``): many requests
    in flight on one stream, each answered once under its own id; one for a model that
    does not exist is answered with its error, and the others are not touched."""
    import threading

    results: dict[str, list[float]] = {}
    errors: list[str] = []
    done = threading.Event()
    wanted = 61

    def callback(result: Any, error: Any) -> None:
        if error is not None:
            errors.append(str(error))
        else:
            response = result.get_response()
            results[response.id] = result.as_numpy("output").tolist()
        if len(results) + len(errors) == wanted:
            done.set()

    stream = grpcclient.InferenceServerClient(endpoints.grpc)
    try:
        stream.start_stream(callback, headers=endpoints.headers())
        for i in range(wanted - 1):
            if i == 30:
                stream.async_stream_infer("test/nothing", [fp_input(np.zeros(2, np.float32))],
                                          request_id="bad")
            stream.async_stream_infer(
                "test/tensors", [fp_input(np.array([i, i + 0.5], dtype=np.float32))],
                request_id=f"r-{i}")
        assert done.wait(60), f"{len(results)} answers and {len(errors)} errors came"
        stream.stop_stream()
    finally:
        stream.close()
    assert results == {f"r-{i}": [2.0 * i, 2.0 * i + 1.0] for i in range(wanted - 1)}
    assert len(errors) == 1 and "ServableNotFound" in errors[0], errors
    with urllib.request.urlopen(f"{endpoints.rest}/metrics", timeout=30) as page:
        text = page.read().decode()
    route = 'method="grpc",route="grpc:ModelStreamInfer"'
    assert f'dlhub_gateway_requests_total{{{route},status="OK"}} {wanted - 1}.0' in text
    assert f'dlhub_gateway_requests_total{{{route},status="NOT_FOUND"}} 1.0' in text



def test_tritonclients_asyncio_stream_gets_every_answer(endpoints: Endpoints) -> None:
    """``tritonclient.grpc.aio``'s ``stream_infer`` (another client of the same RPC):
    requests from an async generator, answers and errors as (result, error) pairs."""
    import asyncio

    agrpc = pytest.importorskip("tritonclient.grpc.aio")

    async def requests() -> Any:
        for i in range(20):
            model = "test/nothing" if i == 5 else "test/tensors"
            yield {"model_name": model, "request_id": f"a-{i}",
                   "inputs": [fp_input(np.array([i], dtype=np.float32))]}

    async def stream() -> tuple[dict[str, list[float]], list[str]]:
        client = agrpc.InferenceServerClient(endpoints.grpc)
        answers: dict[str, list[float]] = {}
        errors: list[str] = []
        try:
            async for result, error in client.stream_infer(
                    inputs_iterator=requests(), headers=endpoints.headers()):
                if error is not None:
                    errors.append(str(error))
                else:
                    answers[result.get_response().id] = result.as_numpy("output").tolist()
                if len(answers) + len(errors) == 20:
                    break
        finally:
            await client.close()
        return answers, errors

    answers, errors = asyncio.run(asyncio.wait_for(stream(), 60))
    assert answers == {f"a-{i}": [2.0 * i] for i in range(20) if i != 5}
    assert len(errors) == 1 and "ServableNotFound" in errors[0]

def test_the_owner_runs_a_private_model_over_grpc(endpoints: Endpoints, triton: Any) -> None:
    result = triton.infer("alice/secret", [fp_input(np.array(FLOATS), "FP64")],
                          headers=endpoints.headers("alice"))
    assert result.as_numpy("output").tolist() == [8.0]


def test_grpc_calls_are_counted_on_the_gateways_metrics_page(endpoints: Endpoints,
                                                             triton: Any) -> None:
    x = fp_input(np.array(FLOATS, dtype=np.float32))
    triton.infer("test/tensors", [x], headers=endpoints.headers())
    refusal(lambda: triton.infer("test/tensors", [x]))
    with urllib.request.urlopen(f"{endpoints.rest}/metrics", timeout=30) as page:
        text = page.read().decode()
    counts = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
              for line in text.splitlines() if line.startswith("dlhub_gateway_requests_total{")}
    ok = 'dlhub_gateway_requests_total{method="grpc",route="grpc:ModelInfer",status="OK"}'
    refused = ('dlhub_gateway_requests_total{method="grpc",route="grpc:ModelInfer",'
               'status="UNAUTHENTICATED"}')
    assert counts.get(ok, 0) >= 1 and counts.get(refused, 0) >= 1, json.dumps(counts)


def test_grpc_with_tls_from_the_gateways_certificate(site: Site, tmp_path: Path) -> None:  # noqa: F811
    cert, key = self_signed_certificate(tmp_path)
    proc, rest, url = start_with_grpc(site.hub.client_address, "--tls-cert", str(cert),
                                      "--tls-key", str(key))
    try:
        assert rest.startswith("https://") and url.startswith("grpcs://127.0.0.1:")
        client = grpcclient.InferenceServerClient(url.removeprefix("grpcs://"), ssl=True,
                                                  root_certificates=str(cert))
        try:
            result = client.infer("test/tensors", [fp_input(np.array(FLOATS, np.float32))],
                                  headers={"authorization": f"Bearer {site.tokens['alice']}"})
            assert result.as_numpy("output").tolist() == [3.0, 5.0, 8.0]
        finally:
            client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_grpc_off_loopback_needs_tls_as_rest_does() -> None:
    from dlhub_hpc.gateway import GatewayConfig

    with pytest.raises(ValueError, match="only with TLS"):
        GatewayConfig(host="0.0.0.0", grpc_port=0)


def test_a_hub_with_gateway_settings_serves_grpc_too(tmp_path: Path) -> None:
    from dlhub_hpc import Hub, HubConfig
    from tests.integration.conftest import FAST

    hub = Hub(HubConfig(home=tmp_path / "hub", client_address="tcp://127.0.0.1:0",
                        worker_address="tcp://127.0.0.1:0",
                        gateway={"port": 0, "grpc_port": 0}, **FAST))
    hub.start()
    try:
        assert hub.gateway is not None
        written = json.loads((tmp_path / "hub" / "hub.json").read_text())
        url = written["gateway_grpc_url"]
        assert url == hub.gateway.grpc_url and url.startswith("grpc://127.0.0.1:")
        triton = grpcclient.InferenceServerClient(url.removeprefix("grpc://"))
        assert triton.is_server_live() and triton.is_server_ready()
        triton.close()
    finally:
        hub.stop()
