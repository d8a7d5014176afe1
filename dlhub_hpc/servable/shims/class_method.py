"""A pickled (or joblib-saved) Python object; each method calls one of its methods."""

from __future__ import annotations

import logging
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dlhub_hpc.errors import ServableLoadError
from dlhub_hpc.servable.shims.base import Shim, StackedShim, model_file, require
from dlhub_hpc.servable.shims.calling import dlhub_call
from dlhub_hpc.servable.shims.forest import compile_calls
from dlhub_hpc.servable.spec import ServableSpec

logger = logging.getLogger(__name__)


def load_object(spec: ServableSpec, root: Path) -> Any:
    """Unpickle the model file; ``.joblib`` files with joblib (scikit-learn's own format)."""
    path = model_file(spec, root)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # classes the pickle names may live in the bundle
    try:
        if path.suffix == ".joblib" or spec.servable.options.get(
                "serialization_method") == "joblib":  # DLHub's sklearn option
            joblib = require("joblib", "sklearn", spec.full_name)
            return joblib.load(path)
        with path.open("rb") as fh:
            return pickle.load(fh)  # the publisher's own model, as DLHub loads it
    except ServableLoadError:
        raise
    except Exception as exc:
        how = "load" if path.suffix == ".joblib" else "unpickle"
        raise ServableLoadError(
            f"cannot {how} {path.name} for {spec.full_name}: {type(exc).__name__}: {exc}",
            servable=spec.full_name,
        ) from exc


def bound_methods(spec: ServableSpec, obj: Any) -> dict[str, Callable[[Any], Any]]:
    """Each declared method -> the object's attribute named by ``function`` (or the method)."""
    calls = {}
    for name, m in spec.servable.methods.items():
        attr = m.function or name
        call = getattr(obj, attr, None)
        if not callable(call):
            raise ServableLoadError(
                f"{type(obj).__name__} has no method {attr!r} for {spec.full_name}.{name}",
                servable=spec.full_name, method=name,
            )
        calls[name] = dlhub_call(call, m)
    return calls


class PythonClassMethodShim(Shim):
    """A pickled object whose methods take one input each (or a list, with takes_batch)."""

    @classmethod
    def load(cls, spec: ServableSpec, root: Path) -> Shim:
        return cls(spec, bound_methods(spec, load_object(spec, root)))


class SklearnShim(StackedShim):
    """A pickled scikit-learn estimator; each method is one of its attributes (``predict``...).

    A batch of row arrays runs as one call on the stacked rows, split back per request.
    With ``compile_trees: true``, tree models (forests, trees, gradient boosting) predict
    through ``forest.py``'s compiled path if it answers as the model's own predict at load;
    ``tree_path`` says which path runs (``own``, ``compiled`` or ``fallback``).
    """

    tree_path = "own"

    @classmethod
    def load(cls, spec: ServableSpec, root: Path) -> Shim:
        require("sklearn", "sklearn", spec.full_name)
        model = load_object(spec, root)
        calls = bound_methods(spec, model)
        if not spec.servable.compile_trees:
            return cls(spec, calls)
        path = compile_calls(model, calls, spec.full_name)
        shim = cls(spec, path.calls)
        shim.tree_path = path.state
        return shim
