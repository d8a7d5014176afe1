"""The Open Inference Protocol over gRPC: Triton's ``GRPCInferenceService``, served by
``grpc.aio`` in the event loop of the REST application and over the same ``Gateway``.

Only the transport differs from REST: the bearer token comes in ``authorization``
metadata, a typed error becomes the gRPC status its HTTP status maps to (with the same
``Kind: message`` text REST puts in its error body), and tensors travel as protobuf
(``grpc_tensors``). ``ModelStreamInfer`` keeps many calls in flight on one stream
(``grpc_stream``). RPCs the gateway has no use for (shared memory, repository control)
answer UNIMPLEMENTED, as the generated base class does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from dlhub_hpc._version import __version__
from dlhub_hpc.errors import ConfigError, DlhubHpcError
from dlhub_hpc.gateway.grpc_stream import as_finished
from dlhub_hpc.gateway.grpc_tensors import (
    infer_response,
    metadata_response,
    request_parameters,
    request_tensors,
)
from dlhub_hpc.gateway.names import servable_of, version_of
from dlhub_hpc.gateway.service import (
    Gateway,
    check_output_parameters,
    is_ready,
    model_config,
    model_metadata,
    parse_bearer,
    select_outputs,
)
from dlhub_hpc.gateway.statuses import status_of
from dlhub_hpc.metrics.gateway import GatewayMetrics

logger = logging.getLogger(__name__)

# A typed error's HTTP status (statuses.STATUSES) -> its gRPC status.
GRPC_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# gRPC's own: a message over this is refused before any handler runs.
_UNLIMITED = -1
_SIZED_BY_CONTENTS = 2**20  # under this, ByteSize() is cheap enough
Handler = Callable[[Any, Any], Awaitable[Any]]


def grpc_code(error: DlhubHpcError) -> grpc.StatusCode:
    return GRPC_CODES.get(status_of(error), grpc.StatusCode.INTERNAL)


def metadata_token(context: Any) -> str:
    """The bearer token of a call's ``authorization`` metadata (TokenRefused if none)."""
    for key, value in context.invocation_metadata() or ():
        if key.lower() == "authorization":
            return parse_bearer(value if isinstance(value, str) else value.decode())
    return parse_bearer("")


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The protocol's RPCs over ``gateway``; each call is counted in ``metrics``."""

    def __init__(self, gateway: Gateway, metrics: GatewayMetrics | None = None) -> None:
        self.gateway = gateway
        self.metrics = metrics if metrics is not None else GatewayMetrics()

    def __repr__(self) -> str:
        return f"InferenceServicer({self.gateway!r})"

    async def _answer(self, rpc: str, request: Any, context: Any, handler: Handler) -> Any:
        """``handler``'s reply, or its typed error as a gRPC status; metrics either way."""
        reply, error = await self._outcome(rpc, request, context, handler)
        if error is not None:
            await context.abort(grpc_code(error), f"{type(error).__name__}: {error.message}")
        return reply

    async def _outcome(self, rpc: str, request: Any, context: Any, handler: Handler
                       ) -> tuple[Any, DlhubHpcError | None]:
        """``handler``'s reply, or the typed error it raised (a fault of ours logged, and
        said as one); counted in the metrics either way."""
        started = time.perf_counter()
        self.metrics.in_progress += 1
        code, reply, error = grpc.StatusCode.CANCELLED, None, None
        try:
            try:
                reply = await handler(request, context)
                code = grpc.StatusCode.OK
            except DlhubHpcError as exc:
                error = exc
            except Exception:  # a fault of ours: log it, answer INTERNAL, serve on
                logger.exception("the gRPC call %s failed", rpc)
                error = DlhubHpcError("the gateway failed on this request; its log says why")
            if error is not None:
                code = grpc_code(error)
            return reply, error
        finally:
            self.metrics.in_progress -= 1
            self.metrics.record(f"grpc:{rpc}", "grpc", code.name, time.perf_counter() - started,
                                wire_bytes(request, "raw_input_contents"),
                                0 if reply is None else wire_bytes(reply, "raw_output_contents"))

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return await self._answer("ServerLive", request, context, self._live)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return await self._answer("ServerReady", request, context, self._hub_ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return await self._answer("ServerMetadata", request, context, self._server_metadata)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        return await self._answer("ModelMetadata", request, context, self._metadata)

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        return await self._answer("ModelConfig", request, context, self._config)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return await self._answer("ModelReady", request, context, self._ready)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        return await self._answer("ModelInfer", request, context, self._infer)

    async def ModelStreamInfer(self, requests: AsyncIterable[Any], context: Any
                               ) -> AsyncIterator[Any]:
        """Triton's stream: each request answered as it finishes (``grpc_stream``); one
        that fails is answered with its error in ``error_message`` (and its ``id``), and
        the stream goes on."""
        async def answer(request: Any) -> Any:
            reply, error = await self._outcome("ModelStreamInfer", request, context,
                                               self._infer)
            if error is None:
                return pb.ModelStreamInferResponse(infer_response=reply)
            return pb.ModelStreamInferResponse(
                error_message=f"{type(error).__name__}: {error.message}",
                infer_response=pb.ModelInferResponse(
                    id=request.id, model_name=request.model_name,
                    model_version=request.model_version))

        async for response in as_finished(requests, answer):
            yield response

    async def _live(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def _hub_ready(self, request: Any, context: Any) -> Any:
        try:
            await self.gateway.hub_ready()
        except DlhubHpcError as exc:
            logger.info("not ready: %s", exc.message)
            return pb.ServerReadyResponse(ready=False)
        return pb.ServerReadyResponse(ready=True)

    async def _server_metadata(self, request: Any, context: Any) -> Any:
        # REST's binary_tensor_data extension is HTTP's: gRPC has raw contents of its own.
        return pb.ServerMetadataResponse(name="dlhub-hpc", version=__version__, extensions=[])

    async def _record(self, request: Any, context: Any) -> dict[str, Any]:
        token = metadata_token(context)
        servable = servable_of({"model": request.name})
        version = version_of({"version": request.version})
        return await self.gateway.hub.describe_as(token, servable, version)

    async def _metadata(self, request: Any, context: Any) -> Any:
        return metadata_response(model_metadata(await self._record(request, context)))

    async def _config(self, request: Any, context: Any) -> Any:
        config = model_config(await self._record(request, context))
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, mc.ModelConfig()))

    async def _ready(self, request: Any, context: Any) -> Any:
        return pb.ModelReadyResponse(ready=is_ready(await self._record(request, context)))

    async def _infer(self, request: Any, context: Any) -> Any:
        token = metadata_token(context)
        servable = servable_of({"model": request.model_name})
        version = version_of({"version": request.model_version})
        for i, output in enumerate(request.outputs):  # before the model runs, not after
            check_output_parameters(output.parameters, f"outputs[{i}] ({output.name!r})")
        # The caller's deadline, where it set one, bounds the call at the hub too: a
        # request nobody waits for any more stops queueing there when the caller gives up.
        remaining = context.time_remaining()
        record, value = await self.gateway.call_model(
            token, servable, version, request_tensors(request),
            request_parameters(request.parameters),
            None if remaining is None else max(remaining, 0.001))
        outputs = select_outputs(value, [o.name for o in request.outputs])
        return infer_response(record, request.id, outputs)


def wire_bytes(message: Any, raw_field: str) -> int:
    """A message's size for the byte counters. ``ByteSize()`` serializes the whole message
    (about 35 ms for 16 MiB of tensor data), so a message whose raw tensor contents reach
    ``_SIZED_BY_CONTENTS`` counts those alone, by their length (its few other bytes left
    out)."""
    contents = sum(len(raw) for raw in getattr(message, raw_field, ()))
    return contents if contents >= _SIZED_BY_CONTENTS else int(message.ByteSize())


def credentials(cert: Path, key: Path) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])


def grpc_server(servicer: InferenceServicer, host: str, port: int,
                max_receive_bytes: int, tls: tuple[Path, Path] | None = None
                ) -> tuple[grpc.aio.Server, int]:
    """A ``grpc.aio`` server for ``servicer``, bound (not started), and its port; ``tls``
    is (certificate, key)."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_receive_bytes),
                                      ("grpc.max_send_message_length", _UNLIMITED)])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = (server.add_secure_port(address, credentials(*tls)) if tls is not None
                 else server.add_insecure_port(address))
    except RuntimeError:  # grpcio raises where older releases returned 0
        bound = 0
    if bound == 0:
        raise ConfigError(f"the gRPC endpoint cannot listen on {address} (is the port "
                            "taken?)")
    return server, bound
