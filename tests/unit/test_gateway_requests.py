"""Inference requests as clients send them, through the gateway's whole REST application
(and its gRPC endpoint) over a hub that answers every model as an identity: what the
protocol says a request may hold, and what it may not, each with a 4xx that says why."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="pip install dlhub-hpc[gateway] (aiohttp)")

from aiohttp.test_utils import TestClient, TestServer

from dlhub_hpc.gateway import build_app
from dlhub_hpc.gateway.service import HEADER_LENGTH

X = {"name": "input", "shape": [2], "datatype": "FP32", "data": [1.5, 2.5]}


class EchoHub:
    """Stands in for the hub: every model's ``run`` answers its input; ``pair`` answers
    a dict of two tensors."""

    async def describe_as(self, token: str, servable: str, version: int | None,
                          cached: bool = False) -> dict[str, Any]:
        return {"name": servable, "version": 1, "spec": {"servable": {"methods": {
            "run": {"input": {"type": "ndarray"}}, "pair": {"input": {"type": "ndarray"}}}}}}

    async def infer(self, token: str, servable: str, version: int | None, method: str,
                    payload: Any, parameters: Any, timeout: float | None) -> Any:
        return {"a": payload, "b": payload} if method == "pair" else payload

    async def close(self) -> None:
        pass


async def post_all(bodies: list[tuple[bytes, dict[str, str]]]
                   ) -> list[tuple[int, dict[str, str], bytes]]:
    """Each body posted to ``a/b``'s infer endpoint: status, headers and body back."""
    app = build_app(EchoHub())  # type: ignore[arg-type]
    out = []
    async with TestClient(TestServer(app, auto_decompress=False)) as http:
        for body, headers in bodies:
            reply = await http.post("/v2/models/a/b/infer", data=body, headers={
                "Authorization": "Bearer t", **headers})
            out.append((reply.status, dict(reply.headers), await reply.read()))
    return out


def posted(*requests: dict[str, Any]) -> list[tuple[int, dict[str, str], bytes]]:
    return asyncio.run(post_all([(json.dumps(r).encode(), {}) for r in requests]))


@pytest.mark.parametrize(("request_body", "says"), [
    ({"inputs": [X], "outputs": 5}, "'outputs' must be a list"),
    ({"inputs": [X], "outputs": {"name": "output"}}, "'outputs' must be a list"),
    ({"inputs": [X], "outputs": [{"name": ["output"]}]}, "outputs[0] must be an object"),
    ({"inputs": [X], "outputs": [{}]}, "outputs[0] must be an object"),
    ({"inputs": [X], "outputs": [{"name": "output", "parameters": [1]}]},
     "outputs[0]: 'parameters' must be a JSON object"),
    ({"inputs": [X], "outputs": [{"name": "output", "parameters": {"binary_data": "false"}}]},
     "outputs[0]: 'binary_data' must be true or false"),
    ({"inputs": [X], "parameters": {"binary_data_output": "false"}},
     "'binary_data_output' must be true or false"),
    ({"inputs": [X], "parameters": []}, "'parameters' must be a JSON object"),
])
def test_requested_outputs_and_parameters_of_the_wrong_kind_are_input_errors(
        request_body: dict[str, Any], says: str) -> None:
    (status, _, body), (after, _, _) = posted(request_body, {"inputs": [X]})
    assert status == 400, body
    error = json.loads(body)["error"]
    assert error.startswith("InvalidInput: ") and says in error, error
    assert after == 200  # and the gateway serves on


@pytest.mark.parametrize("length", ["\u00b2", "9" * 5000])
def test_a_header_length_in_other_digits_than_ascii_is_an_input_error(length: str) -> None:
    """aiohttp reads header values as latin-1: b"\\xb2" is "²", which ``str.isdigit``
    takes for a digit and ``int`` does not; nor does it take over 4300 digits."""
    head = json.dumps({"inputs": [{**X, "data": None,
                                   "parameters": {"binary_data_size": 8}}]}).encode()
    raw = np.array([1.5, 2.5], "<f4").tobytes()
    (status, _, body), = asyncio.run(post_all([(head + raw, {HEADER_LENGTH: length})]))
    assert status == 400, body
    assert "Inference-Header-Content-Length" in json.loads(body)["error"]


def test_an_output_asked_as_classes_is_refused_rather_than_answered_as_the_tensor() -> None:
    """Triton's classification extension (tritonclient's ``class_count``) is not in the
    server's extensions: asked for, it is an input error, not the raw tensor."""
    (status, _, body), = posted({"inputs": [X], "outputs": [
        {"name": "output", "parameters": {"classification": 2}}]})
    assert status == 400, body
    assert "classification" in json.loads(body)["error"]


def test_each_output_is_binary_or_json_as_asked_and_the_id_comes_back() -> None:
    (status, headers, body), = posted({
        "id": "r7", "inputs": [X], "parameters": {"method": "pair", "binary_data_output": True},
        "outputs": [{"name": "a", "parameters": {"binary_data": False}}, {"name": "b"}]})
    assert status == 200, body
    size = int(headers[HEADER_LENGTH])
    answer = json.loads(body[:size])
    assert answer["id"] == "r7"
    assert answer["outputs"] == [
        {"name": "a", "datatype": "FP32", "shape": [2], "data": [1.5, 2.5]},
        {"name": "b", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}]
    assert np.frombuffer(body[size:], "<f4").tolist() == [1.5, 2.5]


def test_a_grpc_output_asked_as_classes_is_refused_too() -> None:
    grpcclient = pytest.importorskip("tritonclient.grpc.aio", reason="pip install "
                                     "tritonclient[grpc]")
    from tritonclient.utils import InferenceServerException

    from dlhub_hpc.gateway.grpc_service import InferenceServicer, grpc_server
    from dlhub_hpc.gateway.service import Gateway

    async def call() -> InferenceServerException:
        server, port = grpc_server(InferenceServicer(Gateway(EchoHub())),  # type: ignore[arg-type]
                                   "127.0.0.1", 0, 1 << 20)
        await server.start()
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            x = grpcclient.InferInput("input", [2], "FP32")
            x.set_data_from_numpy(np.array([1.5, 2.5], dtype=np.float32))
            with pytest.raises(InferenceServerException) as refused:
                await client.infer("a/b", [x], headers={"authorization": "Bearer t"},
                                   outputs=[grpcclient.InferRequestedOutput("output",
                                                                            class_count=2)])
            return refused.value
        finally:
            await client.close()
            await server.stop(None)

    error = asyncio.run(call())
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "classification" in str(error.message())
