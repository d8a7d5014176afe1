"""ONNX models through onnxruntime, the portable format for HPC sites.

One ``InferenceSession`` per worker, on the GPU's provider (CUDA, ROCm) when a GPU is
bound to the worker and onnxruntime has that provider, else the CPU. A batch runs as one
``session.run`` along axis 0. A method's ``function`` names the output to return; without
it a model with one output returns that array, and one with several a dict of them by
name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dlhub_hpc.errors import ServableLoadError
from dlhub_hpc.servable.shims.base import (
    Shim,
    StackedShim,
    bound_gpu_env,
    model_file,
    require,
)
from dlhub_hpc.servable.spec import ServableSpec

logger = logging.getLogger(__name__)

# onnxruntime's element type names -> numpy dtypes
_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


# The GPU providers worth trying for each binding variable, best first.
_GPU_PROVIDERS = {
    "CUDA_VISIBLE_DEVICES": ("TensorrtExecutionProvider", "CUDAExecutionProvider"),
    "ROCR_VISIBLE_DEVICES": ("MIGraphXExecutionProvider", "ROCMExecutionProvider"),
    "HIP_VISIBLE_DEVICES": ("MIGraphXExecutionProvider", "ROCMExecutionProvider"),
    "ZE_AFFINITY_MASK": ("OpenVINOExecutionProvider",),
}


def providers(ort: Any) -> list[str]:
    """The bound GPU's provider where this onnxruntime has it, with the CPU behind it."""
    env = bound_gpu_env()
    available = set(ort.get_available_providers()) if env else set()
    gpu = [p for p in _GPU_PROVIDERS.get(env or "", ()) if p in available]
    return [*gpu[:1], "CPUExecutionProvider"]


class OnnxShim(StackedShim):
    """An ONNX graph with one input; each method returns one output, or all of them."""

    def __init__(self, spec: ServableSpec, calls: dict[str, Callable[[Any], Any]],
                 dtype: Any = None, provider: str = "CPUExecutionProvider") -> None:
        super().__init__(spec, calls)
        self.dtype = dtype
        self.provider = provider

    def __repr__(self) -> str:
        return f"OnnxShim.load({self.spec.full_name!r}, provider={self.provider!r})"

    def prepare(self, x: Any) -> Any:
        # A float64 array into a float32 graph is cast; what cannot be cast is left for
        # onnxruntime to refuse with its own message.
        if (self.dtype is not None and isinstance(x, np.ndarray) and x.dtype != self.dtype
                and np.can_cast(x.dtype, self.dtype, casting="same_kind")):
            return x.astype(self.dtype)
        return x

    @classmethod
    def load(cls, spec: ServableSpec, root: Path) -> Shim:
        ort = require("onnxruntime", "onnx", spec.full_name)
        path = model_file(spec, root)
        chosen = providers(ort)
        try:
            session = ort.InferenceSession(str(path), providers=chosen)
        except Exception as exc:
            raise ServableLoadError(
                f"onnxruntime cannot load {path.name} for {spec.full_name}: {exc}",
                servable=spec.full_name,
            ) from exc
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ServableLoadError(
                f"{path.name} has {len(inputs)} inputs; the onnx shim serves graphs with one "
                "input (wrap several in a python_function servable)",
                servable=spec.full_name,
            )
        outputs = [o.name for o in session.get_outputs()]
        shim = cls(spec, {}, _ORT_TYPES.get(inputs[0].type), session.get_providers()[0])
        for name, m in spec.servable.methods.items():
            if m.function is not None and m.function not in outputs:
                raise ServableLoadError(
                    f"{path.name} has no output {m.function!r} for method {name}; "
                    f"its outputs are {outputs}",
                    servable=spec.full_name, method=name,
                )
            shim._calls[name] = _session_call(session, inputs[0].name, outputs, m.function,
                                              shim.prepare)
        logger.info("%s loaded with %s", spec.full_name, shim.provider)
        return shim


def _session_call(session: Any, input_name: str, outputs: list[str], pick: str | None,
                  prepare: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def call(x: Any) -> Any:
        feed = {input_name: prepare(np.asarray(x))}
        if pick is not None:
            return session.run([pick], feed)[0]
        values = session.run(None, feed)
        return values[0] if len(values) == 1 else dict(zip(outputs, values, strict=True))

    return call
