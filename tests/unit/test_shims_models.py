"""Model-type shims on real models built in the test: PyTorch, ONNX, pickled objects, Keras."""

from __future__ import annotations

import pickle
import sys
import textwrap
import types
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlhub_hpc.errors import ExecutionError, ServableLoadError, SpecError
from dlhub_hpc.servable.shims import (
    OnnxShim,
    PythonClassMethodShim,
    TorchShim,
    bound_gpu_env,
    gpu_bound,
    load_servable,
    split_output,
)
from dlhub_hpc.servable.shims import onnx as onnx_shim
from dlhub_hpc.servable.shims import torch as torch_shim
from dlhub_hpc.servable.shims.base import GPU_ENVS
from dlhub_hpc.servable.spec import ServableSpec

torch = pytest.importorskip("torch", reason="PyTorch is not installed: pip install torch==2.13.0")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

ROWS = {"type": "ndarray", "shape": [None, 4], "dtype": "float"}


def spec(kind: str, model: str, methods: dict[str, Any] | None = None,
         **servable: Any) -> ServableSpec:
    return ServableSpec.from_data({
        "datacite": {"title": f"a {kind} model"},
        "dlhub": {"owner": "test", "name": f"{kind.replace('_', '-')}-model"},
        "servable": {"type": kind, "model": model,
                     "methods": methods or {"run": {"input": ROWS}}, **servable},
    })


NET = """
    import torch
    from torch import nn

    CALLS = []

    class Net(nn.Module):
        def __init__(self, hidden: int = 8):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Dropout(0.5),
                                      nn.Linear(hidden, 3))

        def forward(self, x):
            CALLS.append(tuple(x.shape))
            return self.body(x)
"""


@pytest.fixture
def net_bundle(tmp_path: Path, clean_imports: None) -> tuple[Path, str, Any]:
    """A bundle with a network's module and its state dict; returns (root, module, net)."""
    name = f"net_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(NET))
    sys.path.insert(0, str(tmp_path))
    module = __import__(name)
    torch.manual_seed(0)
    net = module.Net(hidden=6).eval()
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    return tmp_path, name, net


def test_a_state_dict_loads_into_its_class_in_eval_mode_and_a_batch_is_one_forward_pass(
    net_bundle: tuple[Path, str, Any],
) -> None:
    root, name, net = net_bundle
    shim = load_servable(spec("torch", "weights.pt", module=f"{name}:Net",
                              init_kwargs={"hidden": 6}), root)
    assert isinstance(shim, TorchShim) and shim.device == "cpu"
    calls = sys.modules[name].CALLS
    calls.clear()
    inputs = [np.random.default_rng(i).normal(size=(n, 4)) for i, n in enumerate((1, 3, 2))]
    out = shim.run("run", inputs)  # float64 in: cast to the model's float32
    assert calls == [(6, 4)]
    with torch.inference_mode():
        expected = net(torch.as_tensor(np.concatenate(inputs), dtype=torch.float32)).numpy()
    assert [o.shape for o in out] == [(1, 3), (3, 3), (2, 3)]
    np.testing.assert_allclose(np.concatenate(out), expected, rtol=1e-6)  # dropout is off
    assert out[0].dtype == np.float32


def test_a_torchscript_file_loads_and_runs_forward_and_exported_methods(tmp_path: Path) -> None:
    class Scaled(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2.0

        @torch.jit.export
        def total(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum(dim=1)

    torch.jit.script(Scaled()).save(str(tmp_path / "scaled.pt"))
    shim = load_servable(spec("torch", "scaled.pt", {
        "run": {"input": ROWS}, "total": {"input": ROWS, "function": "total"},
    }), tmp_path)
    x = [np.ones((2, 4)), np.full((1, 4), 3.0)]
    assert [o.tolist() for o in shim.run("run", x)] == [[[2.0] * 4] * 2, [[6.0] * 4]]
    assert [o.tolist() for o in shim.run("total", x)] == [[4.0, 4.0], [12.0]]


def test_a_torch_export_program_loads_and_runs_batches_of_any_size(
    net_bundle: tuple[Path, str, Any],
) -> None:
    root, _, net = net_bundle
    program = torch.export.export(net, (torch.zeros(2, 4),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(root / "net.pt2"))
    shim = load_servable(spec("torch", "net.pt2"), root)
    x = np.random.default_rng(2).normal(size=(5, 4)).astype(np.float32)
    out = shim.run("run", [x[:1], x[1:]])
    with torch.inference_mode():
        np.testing.assert_allclose(np.concatenate(out), net(torch.from_numpy(x)).numpy(),
                                   rtol=1e-5, atol=1e-6)


def test_inputs_that_cannot_stack_run_alone_and_only_the_bad_one_fails(
    net_bundle: tuple[Path, str, Any],
) -> None:
    root, name, _ = net_bundle
    shim = load_servable(spec("torch", "weights.pt", module=f"{name}:Net",
                              init_kwargs={"hidden": 6}), root)
    good, bad = shim.run("run", [np.ones((2, 4)), np.ones((2, 5))])
    assert good.shape == (2, 3)
    assert isinstance(bad, ExecutionError) and "RuntimeError" in bad.message


@pytest.mark.parametrize(("servable", "words"), [
    ({"module": "NAME:Net", "init_kwargs": {"hidden": 7}}, "state dict for NAME:Net"),
    ({"module": "NAME:Nope"}, "cannot import NAME:Nope"),
    ({}, "as a TorchScript file"),
    ({"model": "missing.pt"}, "'missing.pt' is not in the bundle"),
], ids=["wrong-shapes", "no-class", "not-torchscript", "no-file"])
def test_torch_models_that_cannot_load_say_why(
    net_bundle: tuple[Path, str, Any], servable: dict[str, Any], words: str,
) -> None:
    root, name, _ = net_bundle
    fields = {"model": "weights.pt", **servable}
    if "module" in fields:
        fields["module"] = fields["module"].replace("NAME", name)
    s = spec("torch", **fields)
    with pytest.raises(ServableLoadError, match=words.replace("NAME", name)):
        load_servable(s, root)


def test_a_missing_method_on_the_model_is_a_load_error(tmp_path: Path) -> None:
    torch.jit.script(torch.nn.Identity()).save(str(tmp_path / "id.pt"))
    with pytest.raises(ServableLoadError, match="has no method 'embed'"):
        load_servable(spec("torch", "id.pt", {"run": {"input": ROWS, "function": "embed"}}),
                      tmp_path)


@pytest.mark.parametrize(("kind", "module", "extra"), [
    ("torch", "torch", "torch"), ("onnx", "onnxruntime", "onnx"), ("keras", "keras", "keras"),
])
def test_a_missing_framework_names_the_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, module: str, extra: str,
) -> None:
    (tmp_path / "model.bin").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    with pytest.raises(ServableLoadError) as info:
        load_servable(spec(kind, "model.bin"), tmp_path)
    assert f"pip install 'dlhub-hpc[{extra}]'" in info.value.message
    assert info.value.details["missing"] == module


# ---- devices ------------------------------------------------------------------------------

@pytest.fixture
def no_gpu_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in GPU_ENVS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(("name", "value", "bound"), [
    (None, None, None), ("CUDA_VISIBLE_DEVICES", "", None),
    ("CUDA_VISIBLE_DEVICES", "-1", None), ("CUDA_VISIBLE_DEVICES", "NoDevFiles", None),
    ("CUDA_VISIBLE_DEVICES", "0", "CUDA_VISIBLE_DEVICES"),
    ("ROCR_VISIBLE_DEVICES", "2,3", "ROCR_VISIBLE_DEVICES"),
    ("ZE_AFFINITY_MASK", "0.1", "ZE_AFFINITY_MASK"),
])
def test_a_worker_is_gpu_bound_when_the_pilot_set_a_visible_devices_variable(
    no_gpu_env: pytest.MonkeyPatch, name: str | None, value: str | None, bound: str | None,
) -> None:
    if name is not None:
        no_gpu_env.setenv(name, str(value))
    assert bound_gpu_env() == bound and gpu_bound() is (bound is not None)


def fake_torch(cuda: bool, xpu: bool) -> Any:
    return types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: cuda),
                                 xpu=types.SimpleNamespace(is_available=lambda: xpu))


@pytest.mark.parametrize(("name", "cuda", "xpu", "device"), [
    ("CUDA_VISIBLE_DEVICES", True, False, "cuda"), ("CUDA_VISIBLE_DEVICES", False, False, "cpu"),
    ("HIP_VISIBLE_DEVICES", True, False, "cuda"), ("ZE_AFFINITY_MASK", False, True, "xpu"),
    ("ZE_AFFINITY_MASK", True, False, "cpu"), (None, True, True, "cpu"),
])
def test_torch_uses_the_bound_gpu_only_when_this_build_can(
    no_gpu_env: pytest.MonkeyPatch, name: str | None, cuda: bool, xpu: bool, device: str,
) -> None:
    if name is not None:
        no_gpu_env.setenv(name, "0")
    assert torch_shim.pick_device(fake_torch(cuda, xpu)) == device


ALL_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "ROCMExecutionProvider",
                 "CPUExecutionProvider"]


@pytest.mark.parametrize(("name", "available", "chosen"), [
    ("CUDA_VISIBLE_DEVICES", ["CUDAExecutionProvider", "CPUExecutionProvider"],
     ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    ("CUDA_VISIBLE_DEVICES", ALL_PROVIDERS, ["TensorrtExecutionProvider", "CPUExecutionProvider"]),
    ("ROCR_VISIBLE_DEVICES", ALL_PROVIDERS, ["ROCMExecutionProvider", "CPUExecutionProvider"]),
    ("CUDA_VISIBLE_DEVICES", ["CPUExecutionProvider"], ["CPUExecutionProvider"]),
    (None, ALL_PROVIDERS, ["CPUExecutionProvider"]),
])
def test_onnx_uses_the_bound_gpus_provider_only_when_present(
    no_gpu_env: pytest.MonkeyPatch, name: str | None, available: list[str], chosen: list[str],
) -> None:
    if name is not None:
        no_gpu_env.setenv(name, "0")
    fake = types.SimpleNamespace(get_available_providers=lambda: available)
    assert onnx_shim.providers(fake) == chosen


def test_this_machine_without_a_gpu_runs_torch_on_the_cpu(
    net_bundle: tuple[Path, str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    root, name, _ = net_bundle
    shim = load_servable(spec("torch", "weights.pt", module=f"{name}:Net",
                              init_kwargs={"hidden": 6}), root)
    assert isinstance(shim, TorchShim) and shim.device == "cpu"


# ---- ONNX ---------------------------------------------------------------------------------

def affine_onnx(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """y = x @ W + b and s = sum(y, axis=1), with a dynamic batch axis."""
    onnx = pytest.importorskip("onnx", reason="onnx is not installed: pip install onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    b = np.array([1.0, -1.0, 0.5], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]),
         helper.make_node("Add", ["xw", "b"], ["y"]),
         helper.make_node("ReduceSum", ["y", "axes"], ["s"], keepdims=0)],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, ["n"])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b"),
         numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return w, b


def test_an_onnx_model_runs_a_batch_in_one_session_call(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="pip install onnxruntime")
    w, b = affine_onnx(tmp_path / "affine.onnx")
    shim = load_servable(spec("onnx", "affine.onnx", {
        "run": {"input": ROWS}, "y": {"input": ROWS, "function": "y"},
        "s": {"input": ROWS, "function": "s"},
    }), tmp_path)
    assert isinstance(shim, OnnxShim) and shim.provider == "CPUExecutionProvider"
    inputs = [np.ones((2, 4)), np.arange(4.0).reshape(1, 4)]  # float64: cast to float32
    ys = shim.run("y", inputs)
    np.testing.assert_allclose(ys[1], np.arange(4.0).reshape(1, 4) @ w + b, rtol=1e-6)
    assert [y.shape for y in ys] == [(2, 3), (1, 3)]
    assert [s.shape for s in shim.run("s", inputs)] == [(2,), (1,)]
    both = shim.run("run", inputs)  # two outputs: a dict per request
    assert set(both[0]) == {"y", "s"} and both[0]["y"].shape == (2, 3)
    np.testing.assert_allclose(both[1]["s"], ys[1].sum(axis=1), rtol=1e-6)


def test_onnx_load_errors_name_the_outputs_and_the_file(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="pip install onnxruntime")
    affine_onnx(tmp_path / "affine.onnx")
    with pytest.raises(ServableLoadError, match=r"no output 'z'.*\['y', 's'\]"):
        load_servable(spec("onnx", "affine.onnx", {"run": {"input": ROWS, "function": "z"}}),
                      tmp_path)
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(ServableLoadError, match=r"onnxruntime cannot load junk\.onnx"):
        load_servable(spec("onnx", "junk.onnx"), tmp_path)


def test_a_torch_model_exported_to_onnx_gives_the_same_answers(
    net_bundle: tuple[Path, str, Any],
) -> None:
    pytest.importorskip("onnxruntime", reason="pip install onnxruntime")
    pytest.importorskip("onnx", reason="pip install onnx")
    root, _, net = net_bundle
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 4),), str(root / "net.onnx"),
                          input_names=["x"], output_names=["scores"],
                          dynamic_axes={"x": {0: "n"}, "scores": {0: "n"}}, dynamo=False)
    shim = load_servable(spec("onnx", "net.onnx"), root)
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    out = shim.run("run", [x[:2], x[2:]])
    with torch.inference_mode():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.concatenate(out), expected, rtol=1e-5, atol=1e-6)


# ---- pickled objects ----------------------------------------------------------------------

SCORER = """
    class Scorer:
        def __init__(self, weight):
            self.weight = weight

        def score(self, x):
            return self.weight * x

        def score_all(self, xs):
            return [self.weight * x for x in xs]
"""


@pytest.mark.parametrize("fmt", ["pickle", "joblib"])
def test_a_pickled_objects_methods_are_the_servables_methods(
    tmp_path: Path, clean_imports: None, fmt: str,
) -> None:
    name = f"scorer_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(SCORER))
    sys.path.insert(0, str(tmp_path))
    obj = __import__(name).Scorer(3)
    if fmt == "joblib":
        import joblib

        joblib.dump(obj, tmp_path / "scorer.joblib")
        model = "scorer.joblib"
    else:
        (tmp_path / "scorer.pkl").write_bytes(pickle.dumps(obj))
        model = "scorer.pkl"
    del sys.modules[name]  # the worker imports the class from the bundle on its own
    sys.path.remove(str(tmp_path))
    shim = load_servable(spec("python_class_method", model, {
        "score": {"input": {"type": "float"}},
        "many": {"input": {"type": "float"}, "function": "score_all", "takes_batch": True},
    }), tmp_path)
    assert isinstance(shim, PythonClassMethodShim)
    assert shim.run("score", [1.0, 2.0]) == [3.0, 6.0]
    assert shim.run("many", [1.0, 4.0]) == [3.0, 12.0]
    bad = shim.run("score", [None])[0]
    assert isinstance(bad, ExecutionError) and "TypeError" in bad.message


def test_a_pickled_object_without_the_method_is_a_load_error(tmp_path: Path) -> None:
    (tmp_path / "obj.pkl").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ServableLoadError, match="dict has no method 'predict'"):
        load_servable(spec("python_class_method", "obj.pkl", {"predict": {"input": ROWS}}),
                      tmp_path)


# ---- spec, pipelines, outputs ---------------------------------------------------------------

@pytest.mark.parametrize(("servable", "words"), [
    ({"type": "torch"}, "a torch servable needs 'model: FILE'"),
    ({"type": "onnx"}, "a onnx servable needs 'model: FILE'"),
    ({"type": "python_class_method"}, "needs 'model: FILE'"),
    ({"type": "onnx", "model": "m.onnx", "module": "a:B"}, "only for torch state dicts"),
    ({"type": "torch", "model": "m.pt", "module": "a.B"}, "should look like 'package.module"),
], ids=["torch", "onnx", "class-method", "module-not-torch", "module-no-colon"])
def test_model_type_specs_say_what_is_missing(servable: dict[str, Any], words: str) -> None:
    with pytest.raises(SpecError, match=words):
        ServableSpec.from_data({
            "datacite": {"title": "t"}, "dlhub": {"owner": "a", "name": "b"},
            "servable": {"methods": {"run": {"input": ROWS}}, **servable},
        })


def test_a_worker_refuses_to_load_a_pipeline(tmp_path: Path) -> None:
    pipe = ServableSpec.from_data({
        "datacite": {"title": "t"}, "dlhub": {"owner": "a", "name": "pipe"},
        "servable": {"type": "pipeline", "steps": [{"servable": "a/b"}],
                     "methods": {"run": {"input": ROWS}}},
    })
    with pytest.raises(ServableLoadError, match="runs in the hub, not in a worker"):
        load_servable(pipe, tmp_path)


def test_split_output_splits_arrays_tuples_and_dicts_per_request() -> None:
    a = np.arange(6).reshape(3, 2)
    assert [p.tolist() for p in split_output(a, 3, [1]) or []] == [[[0, 1]], [[2, 3], [4, 5]]]
    pairs = split_output((a, a[:, 0]), 3, [2]) or []
    assert [[x.tolist() for x in p] for p in pairs] == [[[[0, 1], [2, 3]], [0, 2]], [[[4, 5]], [4]]]
    dicts = split_output({"y": a}, 3, [1]) or []
    assert [d["y"].shape for d in dicts] == [(1, 2), (2, 2)]
    assert split_output(a, 4, [1]) is None and split_output(7, 1, []) is None


# ---- Keras 3 ------------------------------------------------------------------------------

def test_a_keras_model_runs_stacked_batches(tmp_path: Path) -> None:
    from dlhub_hpc.servable.shims.keras import choose_backend

    choose_backend()
    keras = pytest.importorskip("keras", reason="Keras 3 is not installed: "
                                "pip install 'dlhub-hpc[keras]' (and a backend)")
    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(2)])
    model.save(str(tmp_path / "m.keras"))
    shim = load_servable(spec("keras", "m.keras"), tmp_path)
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    out = shim.run("run", [x[:1], x[1:]])
    np.testing.assert_allclose(np.concatenate(out), model.predict(x, verbose=0), rtol=1e-5)


def test_a_read_only_input_reaches_torch_without_a_warning_and_is_never_written() -> None:
    """Inputs the worker maps from a sealed memfd (or reads from a received buffer) are
    read-only: on the CPU the model gets its own copy, which it may write in place."""
    import warnings

    frozen = np.arange(6, dtype=np.float32)
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensor = torch_shim._read_only_tensor(torch, frozen, "cpu")
    tensor.mul_(2.0)  # a model writing its input in place
    assert tensor.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert frozen.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
