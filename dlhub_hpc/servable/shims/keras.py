"""Keras 3 models (``.keras`` files), where Keras is installed; any Keras backend."""

from __future__ import annotations

import logging
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


def _predict(target: Callable[..., Any]) -> Callable[[Any], Any]:
    def call(x: Any) -> Any:
        return np.asarray(target(np.asarray(x), verbose=0))

    return call
