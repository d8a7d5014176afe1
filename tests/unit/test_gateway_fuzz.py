"""Hostile inference requests through the gateway's whole REST application: whatever a
caller posts (any JSON in any field, binary tails of any length, header lengths that lie),
the answer is a 200 or a 4xx in the protocol's error format, never a 500, and the gateway
serves the next caller."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="pip install dlhub-hpc[gateway] (aiohttp)")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlhub_hpc.gateway.service import HEADER_LENGTH
from dlhub_hpc.gateway.tensors import DATATYPES as NUMPY_TYPES

from .test_gateway_requests import X, post_all

# Each numeric datatype's values, within its range (as JSON can carry them).
TENSORS = {
    "BOOL": st.booleans(),
    **{f"UINT{bits}": st.integers(min_value=0, max_value=2**bits - 1) for bits in (8, 16, 32, 64)},
    **{f"INT{bits}": st.integers(min_value=-(2**(bits - 1)), max_value=2**(bits - 1) - 1)
       for bits in (8, 16, 32, 64)},
    "FP16": st.floats(width=16, allow_nan=False), "FP32": st.floats(width=32, allow_nan=False),
    "FP64": st.floats(allow_nan=False),
}
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
             "INT64", "FP16", "FP32", "FP64", "BF16", "BYTES", "fp32", ""]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
json_values = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                     st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12)
shapes = st.one_of(st.lists(st.integers(min_value=-2, max_value=6), max_size=4),
                   st.lists(st.integers(min_value=-(2**64), max_value=2**64), max_size=3),
                   json_values)
numbers = st.one_of(st.integers(min_value=-(2**65), max_value=2**65),
                    st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.text(max_size=4))
data = st.one_of(st.lists(numbers, max_size=8),
                 st.lists(st.lists(numbers, max_size=3), max_size=3), json_values)
tensor_parameters = st.one_of(
    st.fixed_dictionaries({}, optional={
        "binary_data_size": st.one_of(st.integers(min_value=-4, max_value=2**66), json_values),
        "binary_data": json_values, "classification": json_values}),
    json_values)
tensors = st.one_of(
    st.fixed_dictionaries({}, optional={
        "name": st.one_of(st.sampled_from(["input", "x", ""]), json_values),
        "shape": shapes, "datatype": st.one_of(st.sampled_from(DATATYPES), json_values),
        "data": data, "parameters": tensor_parameters}),
    json_values)
outputs = st.one_of(
    st.lists(st.fixed_dictionaries({}, optional={
        "name": st.one_of(st.sampled_from(["output", "a"]), json_values),
        "parameters": tensor_parameters}), max_size=3),
    json_values)
headers = st.one_of(
    st.fixed_dictionaries({}, optional={
        "inputs": st.one_of(st.lists(tensors, max_size=3), json_values),
        "outputs": outputs, "id": json_values,
        "parameters": st.one_of(st.fixed_dictionaries({}, optional={
            "method": st.one_of(st.sampled_from(["run", "pair", "nope"]), json_values),
            "binary_data_output": json_values}), json_values)}),
    json_values)


@st.composite
def well_formed(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    """A request the protocol allows (one tensor of any datatype, JSON or binary, and
    outputs and parameters of the right kinds), so that most of the fuzz reaches the
    model and the answer's encoding, not only the first check."""
    datatype = draw(st.sampled_from([*TENSORS, "BYTES"]))
    shape = draw(st.lists(st.integers(min_value=0, max_value=3), max_size=3))
    count = math.prod(shape)
    values = draw(st.lists(TENSORS.get(datatype, st.text(max_size=4)),
                           min_size=count, max_size=count))
    tensor: dict[str, Any] = {"name": "input", "shape": shape, "datatype": datatype}
    tail = b""
    if datatype != "BYTES" and draw(st.booleans()):
        tail = np.array(values, dtype=NUMPY_TYPES[datatype]).tobytes()
        tensor["parameters"] = {"binary_data_size": len(tail)}
    else:
        tensor["data"] = values
    header: dict[str, Any] = {"inputs": [tensor]}
    if draw(st.booleans()):
        header["parameters"] = {"binary_data_output": draw(st.booleans()),
                                "method": draw(st.sampled_from(["run", "pair"]))}
    if draw(st.booleans()):
        header["outputs"] = [{"name": draw(st.sampled_from(["output", "a", "b"])),
                              "parameters": {"binary_data": draw(st.booleans())}}]
    if draw(st.booleans()):
        header["id"] = draw(st.text(max_size=8))
    return header, tail


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """A well-formed request, with one field maybe replaced by anything; or any JSON with
    maybe a binary tail, and an Inference-Header-Content-Length that tells the truth or
    not."""
    if draw(st.booleans()):
        header, tail = draw(well_formed())
        if draw(st.integers(min_value=0, max_value=3)) == 0:
            key = draw(st.sampled_from(["inputs", "outputs", "parameters", "id"]))
            header[key] = draw(json_values)
        head = json.dumps(header).encode()
        return head + tail, {HEADER_LENGTH: str(len(head))} if tail else {}
    head = json.dumps(draw(headers)).encode()
    tail = draw(st.binary(max_size=64))
    extra: dict[str, str] = {}
    length = draw(st.one_of(st.none(), st.just(len(head)),
                            st.integers(min_value=-3, max_value=len(head) + len(tail) + 3),
                            st.sampled_from(["", "x", "+1", " 4", "0x10", "1e3"])))
    if length is not None:
        extra[HEADER_LENGTH] = str(length)
    return head + (tail if length is not None else b""), extra


def check(status: int, body: bytes, reply_headers: dict[str, str]) -> None:
    assert status < 500, body[:400]
    if status == 200:
        size = int(reply_headers.get(HEADER_LENGTH, len(body)))
        answer = json.loads(body[:size])
        assert isinstance(answer["outputs"], list)
        return
    error = json.loads(body)["error"]
    assert isinstance(error, str) and error, body[:400]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(requests(), min_size=1, max_size=20))
def test_any_request_is_answered_or_refused_with_a_4xx_and_the_gateway_serves_on(
        posts: list[tuple[bytes, dict[str, str]]]) -> None:
    good = (json.dumps({"inputs": [X]}).encode(), {})
    answers = asyncio.run(post_all([*posts, good]))
    for status, reply_headers, body in answers[:-1]:
        check(status, body, reply_headers)
    status, _, body = answers[-1]
    assert status == 200, body
    assert json.loads(body)["outputs"][0]["data"] == [1.5, 2.5]


def post_one(datatype: str, value: Any) -> tuple[int, Any]:
    body = json.dumps({"inputs": [{**X, "datatype": datatype, "shape": [1],
                                   "data": [value]}]}).encode()
    (status, reply_headers, answer), = asyncio.run(post_all([(body, {})]))
    check(status, answer, reply_headers)
    reply = json.loads(answer)
    return status, reply["outputs"][0]["data"] if status == 200 else reply["error"]


@pytest.mark.parametrize(("datatype", "value", "says"), [
    ("INT8", 300, "integers from -128 to 127"),
    ("UINT64", -1, "integers from 0"),
    ("INT64", 2**64, "integers from"),
    ("INT32", 1.5, "integers from"),
    ("INT32", math.nan, "integers from"),
    ("INT64", True, "must hold numbers"),
    ("FP32", False, "must hold numbers"),
    ("BOOL", 1.5, "true or false"),
    ("BOOL", math.nan, "true or false"),
    ("BOOL", 1, "true or false"),
    ("FP16", 1e39, "numbers up to 65504"),
    ("FP32", 1e39, "numbers up to 3.40282e+38"),
    ("FP16", 2**64, "numbers up to 65504"),
    ("FP64", 2**1030, "does not fit FP64"),
])
def test_json_data_outside_its_datatype_is_an_input_error(
        datatype: str, value: Any, says: str) -> None:
    """As Triton reads JSON data: no truth value but true and false, no number silently
    wrapped, cut or turned into infinity."""
    status, error = post_one(datatype, value)
    assert status == 400 and says in error, error


@pytest.mark.parametrize(("datatype", "value", "answer"), [
    ("BOOL", True, [True]), ("INT64", 2**63 - 1, [2**63 - 1]), ("FP16", 65504, [65504.0]),
    ("FP32", math.inf, [math.inf]), ("FP64", 2, [2.0]),
])
def test_json_data_within_its_datatype_is_taken_as_sent(
        datatype: str, value: Any, answer: list[Any]) -> None:
    assert post_one(datatype, value) == (200, answer)


# ---- the gRPC endpoint -------------------------------------------------------------------

INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
CONTENTS = {
    "bool_contents": st.booleans(), "int_contents": INT32,
    "int64_contents": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "uint_contents": st.integers(min_value=0, max_value=2**32 - 1),
    "uint64_contents": st.integers(min_value=0, max_value=2**64 - 1),
    "fp32_contents": st.floats(width=32), "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=8),
}
# The typed contents field of each datatype (FP16 goes raw only)
GRPC_FIELDS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
               "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
               "UINT16": "uint_contents", "UINT32": "uint_contents",
               "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
               "BYTES": "bytes_contents"}
PARAMETER_KINDS = {
    "bool_param": st.booleans(), "int64_param": st.integers(min_value=-(2**63),
                                                            max_value=2**63 - 1),
    "string_param": st.text(max_size=6), "double_param": st.floats(),
    "uint64_param": st.integers(min_value=0, max_value=2**64 - 1),
}
PARAMETER_KEYS = ["binary_data_output", "binary_data", "method", "classification",
                  "binary_data_size", "shared_memory_region", "x"]


@st.composite
def parameters_into(draw: st.DrawFn, holder: Any) -> None:
    for key in draw(st.lists(st.sampled_from(PARAMETER_KEYS), max_size=3, unique=True)):
        kind = draw(st.sampled_from(sorted(PARAMETER_KINDS)))
        setattr(holder[key], kind, draw(PARAMETER_KINDS[kind]))


@st.composite
def grpc_requests(draw: st.DrawFn) -> Any:
    pb = pytest.importorskip("tritonclient.grpc.service_pb2")
    # mostly a model that exists, so that most requests get past the name to their tensors
    request = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(["a/b"] * 8 + ["a", "", "a/b/c"])),
        model_version=draw(st.sampled_from([""] * 6 + ["1", "x", "-1"])))
    if draw(st.booleans()):  # well formed: typed or raw contents that fit the shape
        datatype = draw(st.sampled_from([*TENSORS, "BYTES"]))
        shape = draw(st.lists(st.integers(min_value=0, max_value=3), max_size=3))
        count = math.prod(shape)
        values = draw(st.lists(TENSORS.get(datatype, st.binary(max_size=4)),
                               min_size=count, max_size=count))
        tensor = request.inputs.add(name="input", datatype=datatype, shape=shape)
        if datatype in GRPC_FIELDS and draw(st.booleans()):
            getattr(tensor.contents, GRPC_FIELDS[datatype]).extend(values)
        elif datatype == "BYTES":
            request.raw_input_contents.append(
                b"".join(len(v).to_bytes(4, "little") + v for v in values))
        else:
            request.raw_input_contents.append(
                np.array(values, dtype=NUMPY_TYPES[datatype]).tobytes())
        if draw(st.booleans()):
            request.outputs.add(name=draw(st.sampled_from(["output", "a", "b"])))
        if draw(st.booleans()):
            request.parameters["method"].string_param = draw(st.sampled_from(["run", "pair"]))
        return request
    draw(parameters_into(request.parameters))
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        tensor = request.inputs.add(
            name=draw(st.sampled_from(["input", "x", ""])),
            datatype=draw(st.one_of(st.sampled_from(DATATYPES), st.text(max_size=4))),
            shape=draw(st.one_of(st.lists(st.integers(min_value=-2, max_value=5), max_size=3),
                                 st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1),
                                          max_size=2))))
        draw(parameters_into(tensor.parameters))
        if raw:
            request.raw_input_contents.append(draw(st.binary(max_size=48)))
        else:
            field = draw(st.sampled_from(sorted(CONTENTS)))
            getattr(tensor.contents, field).extend(draw(st.lists(CONTENTS[field], max_size=6)))
    if draw(st.integers(min_value=0, max_value=4)) == 0:  # one raw content too many
        request.raw_input_contents.append(draw(st.binary(max_size=8)))
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        output = request.outputs.add(name=draw(st.sampled_from(["output", "a", ""])))
        draw(parameters_into(output.parameters))
    return request


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(grpc_requests(), min_size=1, max_size=15))
def test_any_grpc_request_is_answered_or_refused_with_a_client_status(
        requests_: list[Any]) -> None:
    grpc = pytest.importorskip("grpc", reason="pip install tritonclient[grpc]")
    pb = pytest.importorskip("tritonclient.grpc.service_pb2")
    pb_grpc = pytest.importorskip("tritonclient.grpc.service_pb2_grpc")
    from dlhub_hpc.gateway.grpc_service import InferenceServicer, grpc_server
    from dlhub_hpc.gateway.service import Gateway

    from .test_gateway_requests import EchoHub

    server_faults = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}

    async def call_all() -> list[tuple[Any, str]]:
        server, port = grpc_server(InferenceServicer(Gateway(EchoHub())),  # type: ignore[arg-type]
                                   "127.0.0.1", 0, 1 << 20)
        await server.start()
        out = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                good = pb.ModelInferRequest(model_name="a/b")
                good.inputs.add(name="x", datatype="FP32", shape=[1]).contents \
                    .fp32_contents.append(1.5)
                for request in [*requests_, good]:
                    try:
                        reply = await stub.ModelInfer(
                            request, metadata=[("authorization", "Bearer t")], timeout=30)
                        out.append((grpc.StatusCode.OK, reply.model_name))
                    except grpc.aio.AioRpcError as exc:
                        out.append((exc.code(), exc.details() or ""))
        finally:
            await server.stop(None)
        return out

    answers = asyncio.run(call_all())
    for code, details in answers[:-1]:
        assert code not in server_faults, details
        assert code == grpc.StatusCode.OK or details, code
    assert answers[-1] == (grpc.StatusCode.OK, "a/b")
