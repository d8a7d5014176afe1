"""Open Inference Protocol gRPC messages <-> the gateway's tensors (``tensors.py``).

A request's tensor values come in ``raw_input_contents`` (one entry per input, in order:
little-endian bytes, BYTES elements each behind a 4-byte length, as over REST's binary
extension) or in each input's typed ``contents``. Answers always use
``raw_output_contents``, as Triton's server does. The messages are Triton's generated
classes that ``tritonclient[grpc]`` ships.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from dlhub_hpc.errors import InvalidInput
from dlhub_hpc.gateway.tensors import Tensor, decode_tensor, encode_output

logger = logging.getLogger(__name__)

# The typed ``contents`` field of each datatype, as Triton reads it (FP16: raw only).
CONTENTS_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
_ALL_FIELDS = sorted(set(CONTENTS_FIELDS.values()))


def request_tensors(request: Any) -> list[Tensor]:
    """The inputs of a ``ModelInferRequest``, checked as REST's are."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents holds {len(raw)} tensors for "
                           f"{len(request.inputs)} inputs; send one per input, in order, or "
                           "none and each input's values in its contents")
    out = []
    for i, tensor in enumerate(request.inputs):
        where = f"inputs[{i}] ({tensor.name!r})"
        spec: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype,
                                "shape": list(tensor.shape)}
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"{where}: values in both contents and "
                                   "raw_input_contents; send them in one")
            out.append(decode_tensor(spec, memoryview(raw[i]), where))
        else:
            spec["data"] = typed_values(tensor, where)
            out.append(decode_tensor(spec, None, where))
    return out


def typed_values(tensor: Any, where: str) -> list[Any]:
    """An input's values from its typed ``contents``: the field its datatype uses."""
    field = CONTENTS_FIELDS.get(tensor.datatype)
    if field is None:
        if tensor.datatype == "FP16":
            raise InvalidInput(f"{where}: FP16 has no typed contents field; send its "
                               "values in raw_input_contents")
        return []  # decode_tensor names the datatypes there are
    values = getattr(tensor.contents, field)
    if not values:
        given = [f for f in _ALL_FIELDS if getattr(tensor.contents, f)]
        if given:
            raise InvalidInput(f"{where}: a {tensor.datatype} tensor's values go in "
                               f"contents.{field}, not {', '.join(given)}")
    return list(values)


def request_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """A request's ``parameters`` map (``InferParameter`` values) as plain values."""
    out: dict[str, Any] = {}
    for key, parameter in parameters.items():
        which = parameter.WhichOneof("parameter_choice")
        out[key] = None if which is None else getattr(parameter, which)
    return out


def infer_response(record: dict[str, Any], request_id: str,
                   tensors: list[tuple[str, np.ndarray]]) -> Any:
    """A ``ModelInferResponse`` with each output's values in ``raw_output_contents``."""
    response = pb.ModelInferResponse(model_name=record["name"],
                                     model_version=str(record["version"]), id=request_id)
    for name, array in tensors:
        meta, raw = encode_output(name, array, binary=True)
        response.outputs.add(name=name, datatype=meta["datatype"], shape=meta["shape"])
        response.raw_output_contents.append(raw)
    return response


def metadata_response(metadata: dict[str, Any]) -> Any:
    """REST's model metadata (``service.model_metadata``) as a ``ModelMetadataResponse``."""
    def tensors(items: list[dict[str, Any]]) -> list[Any]:
        return [pb.ModelMetadataResponse.TensorMetadata(
            name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in items]

    return pb.ModelMetadataResponse(
        name=metadata["name"], versions=metadata["versions"], platform=metadata["platform"],
        inputs=tensors(metadata["inputs"]), outputs=tensors(metadata["outputs"]))
