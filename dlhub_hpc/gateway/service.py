"""The Open Inference Protocol's REST endpoints, over one ``HubClient``.

Every model endpoint needs ``Authorization: Bearer TOKEN``; the token goes to the hub with
the call, and the hub acts as the identity it maps to. Health and server metadata are open.
``Gateway.call_model`` and ``select_outputs`` are the transport-free part of an inference
request; the gRPC endpoint (``grpc_service``) calls them too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np
from aiohttp import web

try:  # a few microseconds less per request than json, both ways; the gateway extra has it
    import orjson
except ImportError:  # pragma: no cover - an install without the gateway extra's orjson
    orjson = None  # type: ignore[assignment]

from dlhub_hpc._version import __version__
from dlhub_hpc.errors import DlhubHpcError, InvalidInput, MethodNotFound, TokenRefused
from dlhub_hpc.gateway.bodies import read_body
from dlhub_hpc.gateway.hubclient import HubClient
from dlhub_hpc.gateway.names import servable_of, version_of
from dlhub_hpc.gateway.statuses import MAX_BODY_KEY, error_response
from dlhub_hpc.gateway.tensors import (
    Tensor,
    as_input,
    as_tensors,
    decode_tensor,
    encode_output,
    tensor_metadata,
)

logger = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data"]
# Request parameters the protocol (or tritonclient) uses itself: not the servable's.
_PROTOCOL_PARAMETERS = {"method", "binary_data_output", "timeout", "sequence_id",
                        "sequence_start", "sequence_end", "priority", "headers"}


def bearer_token(request: web.Request) -> str:
    return parse_bearer(request.headers.get("Authorization", ""))


def parse_bearer(authorization: str) -> str:
    """The token of an ``Authorization`` header (or gRPC metadata) value."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenRefused("send 'Authorization: Bearer TOKEN'; the hub's admin makes tokens "
                           "with 'dlhub-hpc keys token create --identity NAME'")
    return token.strip()


def pick_method(spec: dict[str, Any], asked: str) -> tuple[str, dict[str, Any]]:
    """The method a request runs (``run`` if it names none, else the first) and its spec."""
    methods: dict[str, Any] = spec.get("servable", {}).get("methods", {})
    name = asked or ("run" if "run" in methods else next(iter(methods), ""))
    if name not in methods:
        raise MethodNotFound(f"no method {name!r}; the model's methods are "
                             f"{', '.join(sorted(methods))} (set parameters.method)")
    return name, methods[name]


class Gateway:
    """The handlers; ``routes()`` lists them for an aiohttp application."""

    def __init__(self, hub: HubClient, timeout: float | None = None) -> None:
        self.hub = hub
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Gateway(hub={self.hub!r})"

    def routes(self) -> list[web.RouteDef]:
        out = [web.get("/v2/health/live", self.live), web.get("/v2/health/ready", self.ready),
               web.get("/v2", self.server_metadata)]
        for model in ("{owner}/{name}", "{model}"):
            for base in (f"/v2/models/{model}", f"/v2/models/{model}/versions/{{version}}"):
                out += [web.get(base, self.model_metadata),
                        web.get(f"{base}/ready", self.model_ready),
                        web.get(f"{base}/config", self.model_config),
                        web.post(f"{base}/infer", self.infer)]
        return out

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def hub_ready(self) -> None:
        """Return once the hub answers; its error if it does not."""
        await self.hub.control("whoami", timeout=5.0)

    async def ready(self, request: web.Request) -> web.Response:
        try:
            await self.hub_ready()
        except DlhubHpcError as exc:
            return error_response(exc, 503)
        return web.json_response({"ready": True})

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response({"name": "dlhub-hpc", "version": __version__,
                                  "extensions": EXTENSIONS})

    async def _record(self, request: web.Request) -> dict[str, Any]:
        token = bearer_token(request)
        servable, version = servable_of(request.match_info), version_of(request.match_info)
        return await self.hub.describe_as(token, servable, version)

    async def _answer_from_record(
            self, request: web.Request,
            render: Callable[[dict[str, Any]], web.Response]) -> web.Response:
        """``render`` of the model's record, or the protocol's error where there is none."""
        try:
            record = await self._record(request)
        except DlhubHpcError as exc:
            return error_response(exc)
        return render(record)

    async def model_metadata(self, request: web.Request) -> web.Response:
        return await self._answer_from_record(
            request, lambda record: web.json_response(model_metadata(record)))

    async def model_config(self, request: web.Request) -> web.Response:
        return await self._answer_from_record(
            request, lambda record: web.json_response(model_config(record)))

    async def model_ready(self, request: web.Request) -> web.Response:
        def render(record: dict[str, Any]) -> web.Response:
            ok = is_ready(record)
            return web.json_response({"name": record["name"], "ready": ok},
                                     status=200 if ok else 400)

        return await self._answer_from_record(request, render)

    async def infer(self, request: web.Request) -> web.Response:
        try:
            return await self._infer(request)
        except DlhubHpcError as exc:
            return error_response(exc)

    async def _infer(self, request: web.Request) -> web.Response:
        token = bearer_token(request)  # before reading a body: none is read for no token
        servable, version = servable_of(request.match_info), version_of(request.match_info)
        body = await read_body(request, request.app[MAX_BODY_KEY])
        header, binary = split_body(body, request.headers.get(HEADER_LENGTH))
        params = parameters_of(header, "")
        binary_default = flag(params, "binary_data_output", False, "")
        asked = requested_outputs(header)  # checked before the model runs, not after
        record, value = await self.call_model(token, servable, version,
                                              read_inputs(header, binary), params)
        return respond(header, record, value, binary_default, asked)

    async def call_model(self, token: str, servable: str, version: int | None,
                         inputs: list[Tensor], params: dict[str, Any],
                         deadline: float | None = None) -> tuple[dict[str, Any], Any]:
        """One inference request, whatever its transport: the servable's record and what
        its method (``params["method"]``, else the default) returned for ``inputs``; the
        other parameters, but the protocol's own, go to the method as keyword arguments.
        ``deadline``: the seconds the caller gives it, where it set a limit (at most the
        gateway's own timeout; a gRPC deadline)."""
        # The hub checks the token again on the request itself: a cached record will do.
        record = await self.hub.describe_as(token, servable, version, cached=True)
        method, method_spec = pick_method(record["spec"], str(params.get("method") or ""))
        payload = as_input(inputs, method_spec.get("input", {}))
        extra = {k: v for k, v in params.items() if k not in _PROTOCOL_PARAMETERS}
        timeout = self.timeout
        if deadline is not None:
            timeout = deadline if timeout is None else min(deadline, timeout)
        value = await self.hub.infer(token, record["name"], version, method, payload,
                                     extra or None, timeout)
        return record, value


def is_ready(record: dict[str, Any]) -> bool:
    return record.get("status") != "withdrawn"


def select_outputs(value: Any, names: Collection[object]) -> list[tuple[str, np.ndarray]]:
    """A method's answer as output tensors: those ``names`` asks for (all if none)."""
    tensors = as_tensors(value)
    if names:
        missing = set(names) - {n for n, _ in tensors}
        if missing:
            raise InvalidInput(f"no output named {', '.join(sorted(map(str, missing)))}; the "
                               f"outputs are {', '.join(n for n, _ in tensors)}")
        tensors = [t for t in tensors if t[0] in names]
    return tensors


def parameters_of(holder: dict[str, Any], where: str) -> dict[str, Any]:
    """The ``parameters`` object of a request or of one of its tensors ({} if none)."""
    params = holder.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidInput(f"{where}'parameters' must be a JSON object")
    return params


def flag(params: dict[str, Any], key: str, default: bool, where: str) -> bool:
    """A boolean parameter: JSON true or false, as Triton reads it (a string "false" is
    not false)."""
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}'{key}' must be true or false, not {value!r:.40}")
    return value


def check_output_parameters(params: Mapping[str, object], where: str) -> None:
    """Refuse an output asked for through an extension the server does not list: it
    would come back as the plain tensor, not as what the caller asked for."""
    if "classification" in params:
        raise InvalidInput(f"{where}: classification (tritonclient's class_count) is not "
                           "served here, and not in the server's extensions; ask for the "
                           "output itself")


def requested_outputs(header: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The request's ``outputs``: each name asked for, with its parameters (none asked
    for: every output)."""
    listed = header.get("outputs")
    if listed is None:
        return {}
    if not isinstance(listed, list):
        raise InvalidInput("'outputs' must be a list of objects, each with a 'name'")
    asked: dict[str, dict[str, Any]] = {}
    for i, output in enumerate(listed):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise InvalidInput(f"outputs[{i}] must be an object with a string 'name'")
        where = f"outputs[{i}]"
        params = parameters_of(output, f"{where}: ")
        check_output_parameters(params, where)
        if "binary_data" in params:
            flag(params, "binary_data", False, f"{where}: ")
        asked[output["name"]] = params
    return asked


def model_metadata(record: dict[str, Any]) -> dict[str, Any]:
    """A record as the protocol's model metadata: the default method's tensors; every
    method's in ``parameters.methods``."""
    spec = record["spec"]
    name, _ = pick_method(spec, "")
    methods = {m: {"inputs": [tensor_metadata(s.get("input", {}), "input")],
                   "outputs": [tensor_metadata(s.get("output", {}), "output")]}
               for m, s in spec.get("servable", {}).get("methods", {}).items()}
    versions = [str(v["version"]) for v in record.get("versions", [])
                if v.get("status") != "withdrawn"]
    return {"name": record["name"], "versions": versions or [str(record["version"])],
            "platform": f"dlhub_{spec.get('servable', {}).get('type', 'servable')}",
            "inputs": methods[name]["inputs"], "outputs": methods[name]["outputs"],
            "parameters": {"default_method": name, "methods": methods}}


def model_config(record: dict[str, Any]) -> dict[str, Any]:
    """A record as Triton's model configuration (``GET .../config``, which tritonclient's
    ``get_model_config`` and Triton's tools read): the default method's tensors. No batch
    dimension (``max_batch_size`` 0): a request is one input; the hub forms the batches."""
    meta = model_metadata(record)

    def tensors(listed: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"name": t["name"], "data_type": _CONFIG_TYPES.get(t["datatype"],
                                                                   f"TYPE_{t['datatype']}"),
                 "dims": t["shape"]} for t in listed]

    return {"name": meta["name"], "platform": meta["platform"], "backend": "dlhub-hpc",
            "version_policy": {"latest": {"num_versions": 1}}, "max_batch_size": 0,
            "input": tensors(meta["inputs"]), "output": tensors(meta["outputs"])}


_CONFIG_TYPES = {"BYTES": "TYPE_STRING"}  # the rest are the protocol's name after TYPE_


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """The JSON header of an inference request, and the binary data after it."""
    view = memoryview(body)
    size = len(body)
    if header_length is not None:
        # isascii: "²" (a latin-1 header byte) is a digit to isdigit, not to int; and
        # int() refuses over 4300 digits (no body is longer than 18 digits can say)
        if not (header_length.isascii() and header_length.isdigit()) or \
                len(header_length) > 18 or int(header_length) > len(body):
            raise InvalidInput(f"{HEADER_LENGTH} {header_length[:40]!r} is not a length "
                               f"within the body's {len(body)} bytes")
        size = int(header_length)
    try:
        header = _loads(bytes(view[:size]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"the request's JSON header cannot be read: {exc}") from None
    except RecursionError:  # json's decoder recurses per level; orjson refused past 1,024
        raise InvalidInput("the request's JSON header nests too deep to read; tensor data "
                           "may be flat or nested as deep as its shape, no deeper") from None
    if not isinstance(header, dict):
        raise InvalidInput("the request must be a JSON object with 'inputs'")
    return header, view[size:]


def _loads(text: bytes) -> Any:
    if orjson is not None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:  # NaN or Infinity, which json reads: let it say
            pass
    return json.loads(text)


def read_inputs(header: dict[str, Any], binary: memoryview) -> list[Any]:
    inputs = header.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidInput("'inputs' must be a list of tensors")
    out, at = [], 0
    for i, spec in enumerate(inputs):
        params = spec.get("parameters") or {} if isinstance(spec, dict) else {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        raw = None
        if size is not None:
            if type(size) is not int or size < 0 or at + size > len(binary):
                raise InvalidInput(f"inputs[{i}]: binary_data_size {size!r} runs past the "
                                   f"{len(binary)} bytes of binary data")
            raw, at = binary[at:at + size], at + size
        out.append(decode_tensor(spec, raw, f"inputs[{i}]"))
    if at != len(binary):
        raise InvalidInput(f"{len(binary) - at} bytes of binary data belong to no input")
    return out


def respond(header: dict[str, Any], record: dict[str, Any], value: Any,
            binary_default: bool, asked: dict[str, dict[str, Any]] | None = None
            ) -> web.Response:
    """The inference response: JSON, or JSON then binary data where an output asks so.
    ``asked``: ``requested_outputs(header)``, where the caller has it already."""
    if asked is None:
        asked = requested_outputs(header)
    outputs, blobs = [], []
    for name, array in select_outputs(value, asked):
        binary = flag(asked.get(name, {}), "binary_data", binary_default, "")
        out, raw = encode_output(name, array, binary)
        outputs.append(out)
        blobs.append(raw)
    answer = {"model_name": record["name"], "model_version": str(record["version"]),
              "outputs": outputs}
    if "id" in header:
        answer["id"] = header["id"]
    # orjson writes NaN as null: only an answer whose every tensor is binary (and whose
    # id is text) goes through it; json keeps NaN as Python's json module writes it.
    fast = orjson is not None and not any("data" in o for o in outputs) and isinstance(
        answer.get("id", ""), str)
    text = orjson.dumps(answer) if fast else json.dumps(answer).encode()
    if not any(blobs):
        return web.Response(body=text, content_type="application/json")
    return web.Response(body=b"".join([text, *blobs]), content_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(len(text))})
