"""Shims load a model from an unpacked bundle and call its methods on batches of inputs.

A shim is a small plug-in: ``load(spec, root)`` once per worker, then ``run(method,
inputs)`` per batch. ``run`` returns one outcome per input, in order: the value, or the
``DlhubHpcError`` for that input alone, so one bad input never fails its neighbours.
"""

from __future__ import annotations

import importlib
import logging
import pickle
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dlhub_hpc.errors import DlhubHpcError, ExecutionError, ServableLoadError
from dlhub_hpc.servable.spec import ServableSpec

logger = logging.getLogger(__name__)

Outcome = Any  # a value, or a DlhubHpcError for that input


class Shim(ABC):
    """Base of all shims: resolve each method to a callable, then run batches through it."""

    def __init__(self, spec: ServableSpec, calls: dict[str, Callable[[Any], Any]]) -> None:
        self.spec = spec
        self._calls = calls

    @classmethod
    @abstractmethod
    def load(cls, spec: ServableSpec, root: Path) -> Shim:
        """Load the model from ``root`` (an unpacked bundle) and resolve every method."""

    def run(self, method: str, inputs: list[Any]) -> list[Outcome]:
        call = self._calls[method]
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
            return ExecutionError(
                f"{self.spec.full_name}.{method} raised {type(exc).__name__}: {exc}",
                servable=self.spec.full_name,
                method=method,
                exception=type(exc).__name__,
            )


def _import_function(ref: str, root: Path) -> Callable[[Any], Any]:
    module_name, _, attr = ref.partition(":")
    if not attr:
        raise ServableLoadError(f"function {ref!r} should look like 'module:function'")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(module_name)
        func = getattr(module, attr)
    except Exception as exc:
        raise ServableLoadError(f"cannot import {ref} from the bundle: {exc}") from exc
    if not callable(func):
        raise ServableLoadError(f"{ref} is not callable")
    return func


class PythonFunctionShim(Shim):
    """Each method is a plain function in a module of the bundle."""

    @classmethod
    def load(cls, spec: ServableSpec, root: Path) -> Shim:
        calls = {
            name: _import_function(str(m.function), root)
            for name, m in spec.servable.methods.items()
        }
        return cls(spec, calls)


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


class SklearnShim(Shim):
    """A pickled scikit-learn estimator; each method is one of its attributes (``predict``...).

    A batch of row arrays runs as one call on the stacked rows, split back per request.
    """

    def run(self, method: str, inputs: list[Any]) -> list[Outcome]:
        stacked = stack_rows(inputs)
        if stacked is not None:
            rows, splits = stacked
            try:
                out = self._calls[method](rows)
                if isinstance(out, np.ndarray) and len(out) == len(rows):
                    return list(np.split(out, splits))
            except Exception:
                logger.debug("stacked call failed; running items one by one", exc_info=True)
        return super().run(method, inputs)

    @classmethod
    def load(cls, spec: ServableSpec, root: Path) -> Shim:
        path = root / str(spec.servable.model)
        try:
            with path.open("rb") as fh:
                model = pickle.load(fh)  # the publisher's own model, as DLHub loads it
        except Exception as exc:
            raise ServableLoadError(f"cannot unpickle {path.name}: {exc}") from exc
        calls = {}
        for name, m in spec.servable.methods.items():
            attr = m.function or name
            call = getattr(model, attr, None)
            if not callable(call):
                raise ServableLoadError(
                    f"{type(model).__name__} has no method {attr!r} for {spec.full_name}.{name}"
                )
            calls[name] = call
        return cls(spec, calls)


SHIMS: dict[str, type[Shim]] = {"python_function": PythonFunctionShim, "sklearn": SklearnShim}


def load_servable(spec: ServableSpec, root: Path) -> Shim:
    """Load the servable in ``root`` with the shim its spec names."""
    return SHIMS[spec.servable.type].load(spec, root)
