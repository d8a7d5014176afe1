"""The shim plug-in interface, and what every shim shares.

A shim is a small plug-in: ``load(spec, root)`` once per worker, then ``run(method,
inputs, parameters)`` per batch (``parameters``: the batch's overrides of the method's
default parameters, or None). ``run`` returns one outcome per input, in order: the value, or the
``DlhubHpcError`` for that input alone, so one bad input never fails its neighbours.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from dlhub_hpc.errors import DlhubHpcError, ExecutionError, ServableLoadError
from dlhub_hpc.servable.shims.calling import KEYWORD_TYPES, dlhub_call, overridden
from dlhub_hpc.servable.spec import ServableSpec

logger = logging.getLogger(__name__)

Outcome = Any  # a value, or a DlhubHpcError for that input


class Shim(ABC):
    """Base of all shims: resolve each method to a callable, then run batches through it."""

    def __init__(self, spec: ServableSpec, calls: dict[str, Callable[[Any], Any]]) -> None:
        self.spec = spec
        self._calls = calls

    def __repr__(self) -> str:
        return f"{type(self).__name__}.load({self.spec.full_name!r})"

    @classmethod
    @abstractmethod
    def load(cls, spec: ServableSpec, root: Path) -> Shim:
        """Load the model from ``root`` (an unpacked bundle) and resolve every method."""

    def call_for(self, method: str, parameters: dict[str, Any] | None = None
                 ) -> Callable[[Any], Any]:
        """The call of ``method``, with ``parameters`` overriding its defaults."""
        call = self._calls[method]
        if (parameters and self.spec.servable.type in KEYWORD_TYPES
                and not hasattr(call, "with_parameters")):  # a plain call takes them too
            return dlhub_call(call, self.spec.servable.methods[method], parameters)
        return overridden(call, parameters, f"{self.spec.full_name}.{method}")

    def run(self, method: str, inputs: list[Any],
            parameters: dict[str, Any] | None = None) -> list[Outcome]:
        try:
            call = self.call_for(method, parameters)
        except DlhubHpcError as exc:
            return [exc for _ in inputs]
        if self.spec.servable.methods[method].takes_batch:
            try:
                outputs = list(call(inputs))
                if len(outputs) == len(inputs):
                    return outputs
                logger.warning("%s.%s returned %d outputs for %d inputs; running one by one",
                               self.spec.full_name, method, len(outputs), len(inputs))
            except Exception:
                logger.debug("batch call failed; isolating the failing items", exc_info=True)
        return [self._run_one(call, method, x) for x in inputs]

    def _run_one(self, call: Callable[[Any], Any], method: str, x: Any) -> Outcome:
        try:
            if self.spec.servable.methods[method].takes_batch:
                return call([x])[0]
            return call(x)
        except DlhubHpcError as exc:
            return exc
        except Exception as exc:
            return self.execution_error(method, exc)

    def execution_error(self, method: str, exc: Exception) -> ExecutionError:
        return ExecutionError(
            f"{self.spec.full_name}.{method} raised {type(exc).__name__}: {exc}",
            servable=self.spec.full_name,
            method=method,
            exception=type(exc).__name__,
        )


class StackedShim(Shim):
    """A model that takes one array whose first axis is the batch (scikit-learn, PyTorch,
    ONNX, Keras): the inputs of a batch run as one call on the stacked rows, split back per
    request; when they cannot be stacked, or the stacked call fails, one by one."""

    def run(self, method: str, inputs: list[Any],
            parameters: dict[str, Any] | None = None) -> list[Outcome]:
        stacked = stack_rows([self.prepare(x) for x in inputs]) if len(inputs) > 1 else None
        if stacked is not None:
            rows, splits = stacked
            try:
                out = self.call_for(method, parameters)(rows)
                parts = split_output(out, len(rows), splits)
                if parts is not None:
                    return parts
            except Exception:
                logger.debug("stacked call failed; running items one by one", exc_info=True)
        return super().run(method, inputs, parameters)

    def prepare(self, x: Any) -> Any:
        """Convert one input to what the model takes (a dtype cast); the default: as is."""
        return x


def split_output(out: Any, rows: int, splits: list[int]) -> list[Any] | None:
    """Split a stacked output back per request: an array, or a list/tuple/dict of arrays."""
    if isinstance(out, np.ndarray):
        return list(np.split(out, splits)) if out.ndim and len(out) == rows else None
    if isinstance(out, list | tuple) and out:
        parts = [split_output(o, rows, splits) for o in out]
        if any(p is None for p in parts):
            return None
        return [list(items) for items in zip(*parts, strict=True)]
    if isinstance(out, dict) and out:
        names = list(out)
        split = [split_output(out[n], rows, splits) for n in names]
        if any(p is None for p in split):
            return None
        return [dict(zip(names, items, strict=True))
                for items in zip(*split, strict=True)]
    return None


def stack_rows(inputs: list[Any]) -> tuple[np.ndarray, list[int]] | None:
    """Stack 2-d array inputs with the same row shape into one array, with the split points.

    None when the inputs cannot be stacked (other types or shapes): run them one by one.
    """
    if len(inputs) < 2:
        return None
    first = inputs[0]
    if not isinstance(first, np.ndarray) or first.ndim < 2:
        return None
    row_shape, dtype = first.shape[1:], first.dtype
    for x in inputs:
        if not isinstance(x, np.ndarray) or x.shape[1:] != row_shape or x.dtype != dtype:
            return None
    splits = np.cumsum([len(x) for x in inputs])[:-1].tolist()
    return np.concatenate(inputs), splits


def require(module: str, extra: str, servable: str) -> ModuleType:
    """Import a model framework lazily; if it is missing, say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ServableLoadError(
            f"{servable} needs {module}, which is not installed in the worker's Python "
            f"({exc}); install it with: pip install 'dlhub-hpc[{extra}]'",
            servable=servable, missing=module, extra=extra,
        ) from exc


def model_file(spec: ServableSpec, root: Path) -> Path:
    """The model file the spec names, which must be in the bundle."""
    path = root / str(spec.servable.model)
    if not path.is_file():
        raise ServableLoadError(
            f"{spec.full_name}: the model file {spec.servable.model!r} is not in the bundle; "
            "list it under dlhub.files or put it next to servable.yaml",
            servable=spec.full_name,
        )
    return path


def import_attr(ref: str, root: Path, kind: str = "function") -> Any:
    """``module:attr`` from a module of the bundle (``root`` goes on sys.path)."""
    module_name, _, attr = ref.partition(":")
    if not attr:
        raise ServableLoadError(f"{kind} {ref!r} should look like 'module:{kind}'")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except Exception as exc:
        raise ServableLoadError(f"cannot import {ref} from the bundle: {exc}") from exc


# What a pilot sets when it binds GPUs to a worker (worker/gpu.py): NVIDIA, AMD, Intel.
GPU_ENVS = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
            "ZE_AFFINITY_MASK")


def bound_gpu_env() -> str | None:
    """The variable that binds this worker to its GPUs, or None on a worker without one."""
    for name in GPU_ENVS:
        if os.environ.get(name, "").strip() not in ("", "-1", "NoDevFiles"):
            return name
    return None


def gpu_bound() -> bool:
    """Is this worker bound to a GPU (one of GPU_ENVS set to devices)?"""
    return bound_gpu_env() is not None
