"""Shims load a model from an unpacked bundle and call its methods on batches of inputs.

One module per model type: ``python_function``, ``class_method`` (a pickled object's
methods, and scikit-learn), ``torch``, ``onnx``, ``keras`` and ``tensorflow``. Heavy frameworks are
imported only when a servable of their type loads; a missing one fails the load with
``ServableLoadError`` naming the extra to install. A pipeline runs in the hub, never in a
worker.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dlhub_hpc.errors import ServableLoadError
from dlhub_hpc.servable.shims.base import (
    Outcome,
    Shim,
    StackedShim,
    bound_gpu_env,
    gpu_bound,
    split_output,
    stack_rows,
)
from dlhub_hpc.servable.shims.class_method import PythonClassMethodShim, SklearnShim
from dlhub_hpc.servable.shims.keras import KerasShim
from dlhub_hpc.servable.shims.onnx import OnnxShim
from dlhub_hpc.servable.shims.python_function import PythonFunctionShim
from dlhub_hpc.servable.shims.tensorflow import TensorFlowShim
from dlhub_hpc.servable.shims.torch import TorchShim
from dlhub_hpc.servable.spec import ServableSpec

logger = logging.getLogger(__name__)

__all__ = [
    "SHIMS", "KerasShim", "OnnxShim", "Outcome", "PythonClassMethodShim",
    "PythonFunctionShim", "Shim", "SklearnShim", "StackedShim", "TensorFlowShim", "TorchShim",
    "bound_gpu_env",
    "gpu_bound",
    "load_servable", "split_output", "stack_rows",
]

SHIMS: dict[str, type[Shim]] = {
    "python_function": PythonFunctionShim,
    "python_class_method": PythonClassMethodShim,
    "sklearn": SklearnShim,
    "torch": TorchShim,
    "onnx": OnnxShim,
    "keras": KerasShim,
    "tensorflow": TensorFlowShim,
}


def load_servable(spec: ServableSpec, root: Path) -> Shim:
    """Load the servable in ``root`` with the shim its spec names."""
    shim = SHIMS.get(spec.servable.type)
    if shim is None:
        raise ServableLoadError(
            f"{spec.full_name} is a {spec.servable.type}; it runs in the hub, not in a worker: "
            "start workers for its steps instead",
            servable=spec.full_name,
        )
    return shim.load(spec, root)
