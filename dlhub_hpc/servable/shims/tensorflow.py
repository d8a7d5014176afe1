"""TensorFlow SavedModel directories (DLHub's ``tensorflow.TensorFlowServable``), where
TensorFlow is installed (``pip install 'dlhub-hpc[tensorflow]'``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dlhub_hpc.errors import ServableLoadError
from dlhub_hpc.servable.shims.base import Shim, StackedShim, require
from dlhub_hpc.servable.shims.calling import with_parameters
from dlhub_hpc.servable.spec import ServableSpec

logger = logging.getLogger(__name__)


def saved_model_dir(spec: ServableSpec, root: Path) -> Path:
    """The SavedModel directory the spec names (it holds ``saved_model.pb``)."""
    path = root / str(spec.servable.model)
    if not (path / "saved_model.pb").is_file():
        raise ServableLoadError(
            f"{spec.full_name}: {spec.servable.model!r} is not a SavedModel directory in the "
            "bundle (no saved_model.pb); name the directory in servable.model",
            servable=spec.full_name,
        )
    return path


class TensorFlowShim(StackedShim):
    """A ``tf.saved_model`` directory; ``run`` calls the model, other methods call the
    function of that name (as DLHub's shim does), on the stacked batch."""

    @classmethod
    def load(cls, spec: ServableSpec, root: Path) -> Shim:
        tf = require("tensorflow", "tensorflow", spec.full_name)
        path = saved_model_dir(spec, root)
        try:
            model = tf.saved_model.load(str(path))
        except Exception as exc:
            raise ServableLoadError(f"tensorflow cannot load {path.name} for {spec.full_name}: "
                                    f"{type(exc).__name__}: {exc}", servable=spec.full_name,
                                    ) from exc
        calls: dict[str, Callable[[Any], Any]] = {}
        for name, m in spec.servable.methods.items():
            attr = m.function or ("__call__" if name == "run" else name)
            target = getattr(model, attr, None)
            if not callable(target):
                raise ServableLoadError(f"the SavedModel of {spec.full_name} has no function "
                                        f"{attr!r} for method {name}", servable=spec.full_name,
                                        method=name)
            calls[name] = _tensor_call(tf, target, dict(m.parameters), m.unpack)
        return cls(spec, calls)


def _tensor_call(tf: Any, target: Callable[..., Any], params: dict[str, Any],
                 unpack: bool) -> Callable[[Any], Any]:
    def call(x: Any) -> Any:
        args = [tf.constant(np.asarray(e)) for e in x] if unpack else [tf.constant(x)]
        out = target(*args, **params)
        if isinstance(out, list | tuple):
            return [np.asarray(o) for o in out]
        if isinstance(out, dict):
            return {k: np.asarray(v) for k, v in out.items()}
        return np.asarray(out)

    if not params:
        return call
    return with_parameters(call, lambda more: _tensor_call(tf, target, {**params, **more},
                                                           unpack))
