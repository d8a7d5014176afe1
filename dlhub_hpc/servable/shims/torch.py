"""PyTorch models: a TorchScript file, a ``torch.export`` program (``.pt2``), or a state
dict with the network's import path.

The model is loaded once, in eval mode, onto the worker's GPU when one is bound to it
(``CUDA_VISIBLE_DEVICES`` or its AMD/Intel twin set, and torch able to use it), else the
CPU. A batch runs as one
forward pass on the stacked inputs under ``torch.inference_mode``; numpy arrays go in,
numpy arrays come out.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dlhub_hpc.errors import ServableLoadError
from dlhub_hpc.servable.shims.base import (
    Shim,
    StackedShim,
    bound_gpu_env,
    import_attr,
    model_file,
    require,
)
from dlhub_hpc.servable.shims.calling import with_parameters
from dlhub_hpc.servable.spec import ServableSpec

logger = logging.getLogger(__name__)


def pick_device(torch: Any) -> str:
    """The bound GPU when this torch build can use it (ROCm builds use torch.cuda too)."""
    env = bound_gpu_env()
    if env == "ZE_AFFINITY_MASK":
        xpu = getattr(torch, "xpu", None)
        return "xpu" if xpu is not None and xpu.is_available() else "cpu"
    return "cuda" if env is not None and torch.cuda.is_available() else "cpu"


def _load_module(spec: ServableSpec, root: Path, torch: Any, device: str) -> Any:
    path = model_file(spec, root)
    block = spec.servable
    try:
        if block.module is None and path.suffix == ".pt2":
            # Exported in the mode it should run in (eval); .eval() is not allowed on it.
            return torch.export.load(str(path)).module()
        if block.module is None:
            return _scripted_or_pickled(torch, path, device)
        cls = import_attr(block.module, root, "Class")
        model = cls(**block.init_kwargs)
        state = torch.load(str(path), map_location=device, weights_only=True)
        model.load_state_dict(state)
        return model
    except ServableLoadError:
        raise
    except Exception as exc:
        kind = ("torch.export program" if path.suffix == ".pt2" else "TorchScript file"
                ) if block.module is None else f"state dict for {block.module}"
        raise ServableLoadError(
            f"cannot load {path.name} as a {kind} for {spec.full_name}: "
            f"{type(exc).__name__}: {exc}",
            servable=spec.full_name,
        ) from exc


def _scripted_or_pickled(torch: Any, path: Path, device: str) -> Any:
    """A TorchScript file, else a whole pickled module (what DLHub's torch servables hold;
    the publisher's own file, unpickled in their confined worker as pickled objects are)."""
    try:
        return torch.jit.load(str(path), map_location=device)
    except RuntimeError as not_script:
        logger.debug("%s is not TorchScript; trying it as a pickled module", path.name)
        try:
            model = torch.load(str(path), map_location=device, weights_only=False)
        except Exception:
            raise not_script from None
        if not isinstance(model, torch.nn.Module):  # e.g. a state dict without 'module'
            raise not_script from None
        return model


class TorchShim(StackedShim):
    """A ``torch.nn.Module`` (or TorchScript module); each method calls ``forward`` or the
    exported method that ``function`` names."""

    def __init__(self, spec: ServableSpec, calls: dict[str, Callable[[Any], Any]],
                 device: str = "cpu", dtype: Any = None) -> None:
        super().__init__(spec, calls)
        self.device = device
        self.dtype = dtype  # numpy dtype of the model's floating parameters

    def __repr__(self) -> str:
        return f"TorchShim.load({self.spec.full_name!r}, device={self.device!r})"

    def prepare(self, x: Any) -> Any:
        # Floating inputs take the model's own float type (a float64 array into float32
        # weights would fail); integer inputs (indices, tokens) stay as they are.
        if self.dtype is not None and isinstance(x, np.ndarray) and x.dtype.kind == "f":
            return x.astype(self.dtype, copy=False)
        return x

    @classmethod
    def load(cls, spec: ServableSpec, root: Path) -> Shim:
        torch = require("torch", "torch", spec.full_name)
        device = pick_device(torch)
        model = _load_module(spec, root, torch, device)
        model.to(device)
        if not str(spec.servable.model).endswith(".pt2"):
            model.eval()
        params = [p for p in model.parameters() if p.is_floating_point()]
        weights = params[0].dtype if params else None
        # numpy has no bfloat16: such inputs stay float32 and are cast on the torch side.
        dtype = None if weights is None else (
            np.float32 if weights == torch.bfloat16
            else np.dtype(str(weights).removeprefix("torch.")))
        shim = cls(spec, {}, device, dtype)
        for name, m in spec.servable.methods.items():
            attr = m.function or "forward"
            target = model if attr in ("forward", "__call__") else getattr(model, attr, None)
            if not callable(target):
                raise ServableLoadError(
                    f"the model of {spec.full_name} has no method {attr!r} for method {name}",
                    servable=spec.full_name, method=name,
                )
            shim._calls[name] = _numpy_call(torch, target, device, shim.prepare, weights,
                                            dict(m.parameters), m.unpack)
        logger.info("%s loaded on %s", spec.full_name, device)
        return shim


def _read_only_tensor(torch: Any, array: np.ndarray, device: str) -> Any:
    """A tensor of a read-only array (a sealed memfd's map, a received buffer): copied to
    the device, where torch's warning about it does not apply; on the CPU a copy first, so
    a model that writes its input in place writes its own memory."""
    if device == "cpu":
        return torch.from_numpy(array.copy())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(array).to(device)


def _numpy_call(torch: Any, target: Callable[..., Any], device: str,
                prepare: Callable[[Any], Any], weights: Any = None,
                params: dict[str, Any] | None = None, unpack: bool = False,
                ) -> Callable[[Any], Any]:
    def tensor_of(x: Any) -> Any:
        array = prepare(np.asarray(x))
        if isinstance(array, np.ndarray) and not array.flags.writeable:
            tensor = _read_only_tensor(torch, array, device)
        else:
            tensor = torch.as_tensor(array).to(device)
        if weights is not None and tensor.is_floating_point() and tensor.dtype != weights:
            tensor = tensor.to(weights)  # bfloat16 weights: numpy cannot hold that type
        return tensor

    def call(x: Any) -> Any:
        # unpack: a tuple of arrays goes in as the model's positional inputs (DLHub's
        # multi-input torch servables)
        tensors = [tensor_of(e) for e in x] if unpack else [tensor_of(x)]
        with torch.inference_mode():
            return _to_numpy(target(*tensors, **(params or {})))

    if not params:
        return call
    return with_parameters(call, lambda more: _numpy_call(
        torch, target, device, prepare, weights, {**params, **more}, unpack))


def _to_numpy(out: Any) -> Any:
    if hasattr(out, "detach"):
        out = out.detach().cpu()
        if str(out.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            out = out.float()
        return out.numpy()
    if isinstance(out, tuple | list):
        return [_to_numpy(o) for o in out]
    if isinstance(out, dict):
        return {k: _to_numpy(v) for k, v in out.items()}
    return out
