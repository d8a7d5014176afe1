"""Keras 3 models (``.keras`` files), where Keras is installed; any Keras backend."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dlhub_hpc.errors import ServableLoadError
from dlhub_hpc.servable.shims.base import Shim, StackedShim, model_file, require
from dlhub_hpc.servable.spec import ServableSpec

logger = logging.getLogger(__name__)


class KerasShim(StackedShim):
    """A saved Keras model; each method calls ``predict`` (or the method ``function`` names)
    on the stacked batch."""

    @classmethod
    def load(cls, spec: ServableSpec, root: Path) -> Shim:
        choose_backend()
        keras = require("keras", "keras", spec.full_name)
        path = model_file(spec, root)
        try:
            model = keras.saving.load_model(str(path))
        except Exception as exc:
            raise ServableLoadError(
                f"keras cannot load {path.name} for {spec.full_name}: {exc}",
                servable=spec.full_name,
            ) from exc
        calls: dict[str, Callable[[Any], Any]] = {}
        for name, m in spec.servable.methods.items():
            attr = m.function or "predict"
            target = getattr(model, attr, None)
            if not callable(target):
                raise ServableLoadError(
                    f"the Keras model of {spec.full_name} has no method {attr!r}",
                    servable=spec.full_name, method=name,
                )
            calls[name] = _predict(target) if attr == "predict" else target
        return cls(spec, calls)


def choose_backend() -> None:
    """Keras defaults to TensorFlow, which HPC Python stacks often lack: unless the site chose a
    backend (``KERAS_BACKEND``), take the first one that is installed."""
    if "KERAS_BACKEND" in os.environ or "keras" in sys.modules:
        return
    for backend, module in (("tensorflow", "tensorflow"), ("torch", "torch"), ("jax", "jax")):
        if importlib.util.find_spec(module) is not None:
            os.environ["KERAS_BACKEND"] = backend
            logger.debug("Keras backend: %s", backend)
            return


def _predict(target: Callable[..., Any]) -> Callable[[Any], Any]:
    def call(x: Any) -> Any:
        return np.asarray(target(np.asarray(x), verbose=0))

    return call
