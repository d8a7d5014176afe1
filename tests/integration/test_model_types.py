"""PyTorch and ONNX servables built in the test, served by a real hub and real workers."""

from __future__ import annotations

import os
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from dlhub_hpc import Client, Hub
from dlhub_hpc.errors import ServableLoadError

torch = pytest.importorskip("torch", reason="PyTorch is not installed: pip install torch==2.13.0")

NET = """
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self, width=5):
            super().__init__()
            self.layers = nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, 2))

        def forward(self, x):
            return self.layers(x)
"""

ROWS = {"type": "ndarray", "shape": [None, 4], "dtype": "float"}


@pytest.fixture
def hub(make_hub: Callable[..., Hub]) -> Hub:
    """Heartbeats that tolerate a worker importing torch: the import holds the GIL, and so
    stalls the worker's heartbeat thread, for up to about a second on a loaded machine."""
    return make_hub(heartbeat_interval=0.2, heartbeat_timeout=10.0)


def write_spec(directory: Path, name: str, **servable: Any) -> Path:
    spec = {
        "datacite": {"title": f"{name} model"},
        "dlhub": {"owner": "demo", "name": name},
        "servable": {"max_batch_size": 64, "max_batch_delay": 0.02,
                     "methods": {"run": {"input": ROWS}}, **servable},
    }
    (directory / "servable.yaml").write_text(yaml.safe_dump(spec))
    return directory


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Any]:
    """A directory with the network's module and an instance with seeded weights."""
    directory = tmp_path / "tiny"
    directory.mkdir()
    (directory / "tiny_net.py").write_text(textwrap.dedent(NET))
    namespace: dict[str, Any] = {}
    exec(textwrap.dedent(NET), namespace)
    torch.manual_seed(0)
    return directory, namespace["Tiny"](width=5).eval()


def expected(net: Any, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return np.asarray(net(torch.as_tensor(x, dtype=torch.float32)).numpy())


def check_concurrent(client: Client, name: str, net: Any) -> None:
    rng = np.random.default_rng(3)
    inputs = [rng.normal(size=(int(rng.integers(1, 4)), 4)) for _ in range(30)]
    futures = [client.submit(name, x) for x in inputs]
    for x, f in zip(inputs, futures, strict=True):
        np.testing.assert_allclose(f.result(timeout=60), expected(net, x), rtol=1e-5,
                                   atol=1e-6)


def test_a_torch_state_dict_servable_answers_numpy_batches(
    client: Client, serve: Callable[..., str], tiny: tuple[Path, Any],
) -> None:
    directory, net = tiny
    torch.save(net.state_dict(), directory / "tiny.pt")
    serve(write_spec(directory, "tiny-torch", type="torch", model="tiny.pt",
                     module="tiny_net:Tiny", init_kwargs={"width": 5}))
    check_concurrent(client, "demo/tiny-torch", net)
    stats = client.status()["stats"]
    assert stats["batched_items"] == 30 and stats["batches"] < 30


def test_a_torchscript_servable_answers(
    client: Client, serve: Callable[..., str], tiny: tuple[Path, Any],
) -> None:
    directory, net = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(net, torch.zeros(1, 4)).save(str(directory / "tiny.ts"))
    serve(write_spec(directory, "tiny-script", type="torch", model="tiny.ts"))
    x = np.ones((2, 4), dtype=np.float32)
    np.testing.assert_allclose(client.run("demo/tiny-script", x), expected(net, x), rtol=1e-5)


def test_an_onnx_export_of_the_network_answers_like_the_network(
    client: Client, serve: Callable[..., str], tiny: tuple[Path, Any],
) -> None:
    pytest.importorskip("onnxruntime", reason="pip install 'dlhub-hpc[onnx]'")
    pytest.importorskip("onnx", reason="pip install 'dlhub-hpc[onnx]'")
    directory, net = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 4),), str(directory / "tiny.onnx"),
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    serve(write_spec(directory, "tiny-onnx", type="onnx", model="tiny.onnx"))
    check_concurrent(client, "demo/tiny-onnx", net)


def test_a_servable_whose_framework_is_missing_fails_with_the_extra_to_install(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The workers' Python finds a keras that fails to import, as on a node without it.
    shadow = tmp_path / "shadow" / "keras"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'keras'\")\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(shadow.parent), *filter(None, [os.environ.get("PYTHONPATH")])]))
    (tmp_path / "m.keras").write_bytes(b"not used")
    name = client.publish(write_spec(tmp_path, "no-keras", type="keras",
                                     model="m.keras"))["name"]
    future = client.submit(name, np.ones((1, 4)), timeout=60)
    client.start_workers(name, 1)
    with pytest.raises(ServableLoadError, match=r"pip install 'dlhub-hpc\[keras\]'"):
        future.result(timeout=60)
