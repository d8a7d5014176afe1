"""The gRPC endpoint's parts that need no server: typed errors -> gRPC statuses, and
protobuf tensors <-> the gateway's tensors (read back with tritonclient's own decoder)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from dlhub_hpc import errors

grpc = pytest.importorskip("grpc", reason="pip install tritonclient[grpc]")
pb = pytest.importorskip("tritonclient.grpc.service_pb2", reason="pip install tritonclient[grpc]")
grpcclient = pytest.importorskip("tritonclient.grpc")

from dlhub_hpc.gateway.grpc_service import grpc_code, wire_bytes  # noqa: E402
from dlhub_hpc.gateway.grpc_tensors import (  # noqa: E402
    infer_response,
    metadata_response,
    request_parameters,
    request_tensors,
)
from dlhub_hpc.gateway.service import select_outputs  # noqa: E402


@pytest.mark.parametrize(("error", "code"), [
    (errors.TokenRefused("no token"), "UNAUTHENTICATED"),
    (errors.AuthenticationError("bad key"), "UNAUTHENTICATED"),
    (errors.PermissionDenied("not yours"), "PERMISSION_DENIED"),
    (errors.ServableNotFound("no such"), "NOT_FOUND"),
    (errors.MethodNotFound("no such method"), "NOT_FOUND"),
    (errors.InvalidInput("bad shape"), "INVALID_ARGUMENT"),
    (errors.ProtocolError("bad frame"), "INVALID_ARGUMENT"),
    (errors.PayloadTooLarge("too big", limit=10), "RESOURCE_EXHAUSTED"),
    (errors.Timeout("too slow"), "DEADLINE_EXCEEDED"),
    (errors.QueueFull("full"), "UNAVAILABLE"),
    (errors.HubUnavailable("down"), "UNAVAILABLE"),
    (errors.ExecutionError("it raised"), "INTERNAL"),
    (errors.DlhubHpcError("anything else"), "INTERNAL"),
])
def test_each_typed_error_gets_the_grpc_status_of_its_http_status(
        error: errors.DlhubHpcError, code: str) -> None:
    assert grpc_code(error) == getattr(grpc.StatusCode, code)


def _request(datatype: str, shape: list[int], name: str = "x") -> tuple[object, object]:
    request = pb.ModelInferRequest(model_name="a/b")
    return request, request.inputs.add(name=name, datatype=datatype, shape=shape)


def test_raw_contents_decode_as_rests_binary_tensors_do() -> None:
    request, _ = _request("FP32", [2, 2])
    request.raw_input_contents.append(np.arange(4, dtype="<f4").tobytes())
    (tensor,) = request_tensors(request)
    assert tensor.name == "x" and tensor.array.dtype == np.float32
    assert tensor.array.tolist() == [[0.0, 1.0], [2.0, 3.0]]


def test_raw_bytes_elements_carry_a_4_byte_little_endian_length() -> None:
    request, _ = _request("BYTES", [2])
    request.raw_input_contents.append(b"".join(struct.pack("<I", len(v)) + v
                                               for v in (b"Ada", b"")))
    assert request_tensors(request)[0].array.tolist() == [b"Ada", b""]


@pytest.mark.parametrize(("datatype", "field", "values", "dtype"), [
    ("FP32", "fp32_contents", [1.5, -2.0], np.float32),
    ("FP64", "fp64_contents", [1.5, 1e300], np.float64),
    ("INT8", "int_contents", [-128, 127], np.int8),
    ("INT64", "int64_contents", [-(2 ** 63), 7], np.int64),
    ("UINT16", "uint_contents", [0, 65535], np.uint16),
    ("UINT64", "uint64_contents", [2 ** 64 - 1, 0], np.uint64),
    ("BOOL", "bool_contents", [True, False], np.bool_),
])
def test_typed_contents_in_the_field_of_each_datatype(datatype: str, field: str,
                                                      values: list[object], dtype: type) -> None:
    request, tensor = _request(datatype, [2])
    getattr(tensor.contents, field).extend(values)
    (decoded,) = request_tensors(request)
    assert decoded.array.dtype == dtype and decoded.array.tolist() == values


def test_typed_bytes_contents() -> None:
    request, tensor = _request("BYTES", [1, 2])
    tensor.contents.bytes_contents.extend([b"a", b"bc"])
    assert request_tensors(request)[0].array.tolist() == [[b"a", b"bc"]]


@pytest.mark.parametrize(("build", "says"), [
    (lambda r, t: t.contents.int_contents.extend([1, 2]), "go in contents.fp32_contents"),
    (lambda r, t: t.contents.fp32_contents.extend([1.0]), "needs 2 elements, got 1"),
    (lambda r, t: r.raw_input_contents.extend([b"\0" * 8, b""]), "holds 2 tensors for 1"),
    (lambda r, t: r.raw_input_contents.append(b"\0" * 7), "binary data is 7 bytes"),
    (lambda r, t: (r.raw_input_contents.append(b"\0" * 8),
                   t.contents.fp32_contents.extend([1.0, 2.0])),
     "in both contents and raw_input_contents"),
])
def test_malformed_tensors_are_invalid_input_that_says_what_to_fix(build: object,
                                                                    says: str) -> None:
    request, tensor = _request("FP32", [2])
    build(request, tensor)  # type: ignore[operator]
    with pytest.raises(errors.InvalidInput, match=says):
        request_tensors(request)


def test_other_datatypes_are_refused_with_the_list_of_those_there_are() -> None:
    request, _ = _request("FP16", [1])
    with pytest.raises(errors.InvalidInput, match="FP16 has no typed contents field"):
        request_tensors(request)
    request, _ = _request("BF16", [1])
    with pytest.raises(errors.InvalidInput, match="is not one of BOOL"):
        request_tensors(request)
    request, _ = _request("FP32", [-1])
    with pytest.raises(errors.InvalidInput, match="non-negative integers"):
        request_tensors(request)


def test_parameters_become_plain_values() -> None:
    request = pb.ModelInferRequest()
    request.parameters["method"].string_param = "greet"
    request.parameters["factor"].double_param = 0.5
    request.parameters["n"].int64_param = -3
    request.parameters["flag"].bool_param = True
    request.parameters["big"].uint64_param = 2 ** 64 - 1
    request.parameters["unset"].CopyFrom(pb.InferParameter())
    assert request_parameters(request.parameters) == {
        "method": "greet", "factor": 0.5, "n": -3, "flag": True, "big": 2 ** 64 - 1,
        "unset": None}


def test_an_answer_reads_back_with_tritonclients_decoder() -> None:
    value = {"scores": np.array([[1.0, 2.0]], dtype=np.float32), "label": "cat",
             "ids": np.array([3, 4], dtype=np.int64)}
    response = infer_response({"name": "a/b", "version": 2}, "r1",
                              select_outputs(value, ["scores", "label"]))
    assert (response.model_name, response.model_version, response.id) == ("a/b", "2", "r1")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("scores", "FP32", [1, 2]), ("label", "BYTES", [1])]
    result = grpcclient.InferResult(response)
    assert result.as_numpy("scores").tolist() == [[1.0, 2.0]]
    assert result.as_numpy("label").tolist() == [b"cat"]
    with pytest.raises(errors.InvalidInput, match="no output named nope"):
        select_outputs(value, ["nope"])


def test_model_metadata_keeps_rests_tensors() -> None:
    meta = metadata_response({"name": "a/b", "versions": ["1", "2"], "platform": "dlhub_x",
                              "inputs": [{"name": "input", "datatype": "FP32",
                                          "shape": [-1, 3]}],
                              "outputs": [{"name": "output", "datatype": "BYTES",
                                           "shape": [1]}]})
    assert (meta.name, list(meta.versions), meta.platform) == ("a/b", ["1", "2"], "dlhub_x")
    assert [(t.name, t.datatype, list(t.shape)) for t in (*meta.inputs, *meta.outputs)] == [
        ("input", "FP32", [-1, 3]), ("output", "BYTES", [1])]


class RecordingHub:
    """Stands in for the hub behind a real gRPC endpoint: answers every model as an
    identity, and keeps the timeout each inference request would carry to the hub."""

    def __init__(self) -> None:
        self.timeouts: list[float | None] = []

    async def describe_as(self, token: str, servable: str, version: int | None,
                          cached: bool = False) -> dict[str, object]:
        return {"name": servable, "version": 1,
                "spec": {"servable": {"methods": {"run": {"input": {"type": "ndarray"}}}}}}

    async def infer(self, token: str, servable: str, version: int | None, method: str,
                    payload: object, parameters: object, timeout: float | None) -> object:
        self.timeouts.append(timeout)
        return payload


def test_a_callers_grpc_deadline_bounds_the_call_at_the_hub() -> None:
    """tritonclient.grpc's client_timeout is a gRPC deadline: the hub gets what is left of
    it, not the gateway's --timeout; a call without one keeps the gateway's."""
    import asyncio

    import tritonclient.grpc.aio as aioclient

    from dlhub_hpc.gateway.grpc_service import InferenceServicer, grpc_server
    from dlhub_hpc.gateway.service import Gateway

    hub = RecordingHub()

    async def calls() -> None:
        servicer = InferenceServicer(Gateway(hub, timeout=60.0))  # type: ignore[arg-type]
        server, port = grpc_server(servicer, "127.0.0.1", 0, 1 << 20)
        await server.start()
        client = aioclient.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            x = np.array([1.5, 2.5], dtype=np.float32)
            for client_timeout in (5.0, None):
                tensor = aioclient.InferInput("input", [2], "FP32")
                tensor.set_data_from_numpy(x)
                result = await client.infer("a/b", [tensor], client_timeout=client_timeout,
                                            headers={"authorization": "Bearer t"})
                assert result.as_numpy("output").tolist() == [1.5, 2.5]
        finally:
            await client.close()
            await server.stop(None)

    asyncio.run(calls())
    deadline, default = hub.timeouts
    assert deadline is not None and 0 < deadline <= 5.0
    assert default == 60.0


def test_byte_counters_size_a_large_message_by_its_tensor_contents() -> None:
    """``ByteSize()`` serializes the message: a large one is counted by its raw contents'
    lengths instead; a small one exactly."""
    small = pb.ModelInferRequest(model_name="demo/noop", raw_input_contents=[b"\0" * 16])
    assert wire_bytes(small, "raw_input_contents") == small.ByteSize()
    large = pb.ModelInferResponse(model_name="demo/noop",
                                  raw_output_contents=[b"\0" * 2**20, b"\0" * 10])
    assert wire_bytes(large, "raw_output_contents") == 2**20 + 10
    assert wire_bytes(pb.ServerLiveRequest(), "raw_input_contents") == 0
