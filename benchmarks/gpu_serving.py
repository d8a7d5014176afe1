"""A PyTorch network served from a GPU: a hub worker bound to GPU 0 (``--gpus 0``) beside
the same network called directly on that GPU, in the same run.

    python benchmarks/gpu_serving.py [--requests N] [--image-size S] [--width W]

The network is a three-stage CNN for 3xSxS images (random weights, seed 0), published as a
``torch`` servable (state dict and class) with ``max_batch_size`` 32. The hub runs in this
process (CurveZMQ on, tcp on loopback); its worker is a process of its own, started with
the command a pilot builds (``pilot.command.worker_command``) and ``--gpus 0``, so the
torch shim finds ``CUDA_VISIBLE_DEVICES`` and loads the model onto the GPU.

Rows, each path in alternating rounds:

* ``direct, 1 image``: ``model(x)`` on the device and the answer back to the host, the
  floor of one request; ``hub, 1 image``: ``Client.run`` of the same image.
* ``direct, batches of 32``: the floor's images per second; ``hub, map``: ``Client.map``
  with ``--in-flight`` (64) images outstanding, the hub forming the batches.

Checks (exit status 1 if one fails): the worker's parameters are on a CUDA device (its
``on_gpu`` method) where this process sees one, and the hub's answers equal the direct
ones (``allclose``). Without CUDA everything runs on the CPU, said so, for a dry run.
Figures go to benchmarks/results/gpu_serving.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import hub_and_worker, percentile, save_json, start_run

logger = logging.getLogger("benchmarks.gpu_serving")
RESULTS = Path(__file__).parent / "results" / "gpu_serving.json"

NET = '''
import torch
from torch import nn


class Net(nn.Module):
    """Three conv stages (width, 2x, 4x channels), pooled, then a linear head."""

    def __init__(self, width: int = 64, classes: int = 10) -> None:
        super().__init__()
        stages, channels = [], 3
        for out in (width, 2 * width, 4 * width):
            stages += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(),
                       nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*stages, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def on_gpu(self, x: torch.Tensor) -> torch.Tensor:
        """1.0 per row where the weights are on a CUDA device."""
        on = float(next(self.parameters()).is_cuda)
        return torch.full((x.shape[0], 1), on, device=x.device)
'''

SPEC = '''
datacite:
  title: A three-stage CNN (PyTorch, random weights) for GPU serving
  creators: ["DLHub benchmark suite"]
dlhub: {owner: bench, name: gpu-cnn}
servable:
  type: torch
  model: weights.pt
  module: "net:Net"
  init_kwargs: {width: WIDTH}
  deterministic: true
  max_batch_size: 32
  methods:
    run:
      input: {type: ndarray, shape: [null, 3, SIZE, SIZE], dtype: float32}
      output: {type: ndarray, shape: [null, 10], dtype: float32}
    on_gpu:
      function: on_gpu
      input: {type: ndarray, shape: [null, 3, SIZE, SIZE], dtype: float32}
      output: {type: ndarray, shape: [null, 1], dtype: float32}
'''


def build(folder: Path, width: int, size: int) -> Any:
    """The servable's folder (class, weights, spec); the model, in eval mode."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "net.py").write_text(textwrap.dedent(NET))
    (folder / "servable.yaml").write_text(
        SPEC.replace("WIDTH", str(width)).replace("SIZE", str(size)))
    sys.path.insert(0, str(folder))
    from net import Net

    torch.manual_seed(0)
    model = Net(width).eval()
    torch.save(model.state_dict(), folder / "weights.pt")
    return model


def direct(model: Any, device: str) -> tuple[Callable[[np.ndarray], np.ndarray], Any]:
    """The model on ``device``, called on a numpy batch, answering numpy."""
    import torch

    model = model.to(device)

    def call(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out: np.ndarray = model(torch.from_numpy(x).to(device)).cpu().numpy()
        return out

    return call, torch


def timed(calls: dict[str, Callable[[], Any]], n: int, rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():  # warm up: kernels chosen, caches filled
        for _ in range(20):
            call()
    for _ in range(rounds):
        for name, call in calls.items():
            for _ in range(max(n // rounds, 1)):
                start = time.perf_counter()
                call()
                out[name].append(time.perf_counter() - start)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="single-image calls per path")
    parser.add_argument("--images", type=int, default=4096, help="images per throughput round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--local-min-bytes", type=int, default=None,
                        help="the hub's local_min_bytes (default: the hub's own default)")
    parser.add_argument("--io-threads", type=int, default=1, help="the hub's io_threads")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    start_run(args.verbose, logger)
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if not cuda:
        print("no CUDA device: the worker and the floor both run on the CPU (a dry run)")
    rng = np.random.default_rng(0)
    s = args.image_size
    one = rng.standard_normal((1, 3, s, s), dtype=np.float32)
    batch = rng.standard_normal((32, 3, s, s), dtype=np.float32)
    figures: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if cuda else "cpu"}
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dlhub-gpu-bench-") as tmp:
        model = build(Path(tmp) / "gpu-cnn", args.width, s)
        floor, _ = direct(model, device)
        tuned = {} if args.local_min_bytes is None else {"local_min_bytes": args.local_min_bytes}
        figures["hub"] = {"io_threads": args.io_threads, **tuned}
        with hub_and_worker(Path(tmp) / "home", Path(tmp) / "gpu-cnn",
                            {"io_threads": args.io_threads, **tuned},
                            ["--gpus", "0"]) as (client, name):
            on_gpu = float(client.run(name, one, method="on_gpu", cache=False)[0, 0])
            figures["worker_on_gpu"] = bool(on_gpu)
            if cuda and not on_gpu:
                failures.append("the worker bound to GPU 0 holds its weights on the CPU")
            got, want = client.run(name, batch, cache=False), floor(batch)
            if not np.allclose(got, want, rtol=1e-3, atol=1e-4):
                failures.append("the hub's answers differ from the direct call's")
            latency = timed({"direct, 1 image": lambda: floor(one),
                             "hub, 1 image": lambda: client.run(name, one, cache=False)},
                            args.requests, args.rounds)
            for row, seconds in latency.items():
                figures[row] = {"p50_ms": percentile(seconds, 50) * 1e3,
                                "p99_ms": percentile(seconds, 99) * 1e3}
            rates: dict[str, list[float]] = {"direct, batches of 32": [], "hub, map": []}
            images = [batch[i % 32:i % 32 + 1] for i in range(args.images)]
            for _ in range(args.rounds):
                start = time.perf_counter()
                for _ in range(args.images // 32):
                    floor(batch)
                rates["direct, batches of 32"].append(
                    (args.images // 32) * 32 / (time.perf_counter() - start))
                start = time.perf_counter()
                for _ in client.map(name, images, in_flight=args.in_flight, cache=False):
                    pass
                rates["hub, map"].append(args.images / (time.perf_counter() - start))
            for row, values in rates.items():
                figures[row] = {"images_per_s": float(np.median(values))}
            stats = client.status()["stats"]
            figures["mean_batch"] = stats["batched_items"] / max(stats["batches"], 1)
    print(f"device: {figures['device']}; worker's weights on the GPU: "
          f"{figures.get('worker_on_gpu')}")
    print(f"{'path':<26}{'p50 ms':>10}{'p99 ms':>10}{'images/s':>12}")
    for row in ("direct, 1 image", "hub, 1 image"):
        print(f"{row:<26}{figures[row]['p50_ms']:>10.3f}{figures[row]['p99_ms']:>10.3f}"
              f"{'-':>12}")
    for row in ("direct, batches of 32", "hub, map"):
        print(f"{row:<26}{'-':>10}{'-':>10}{figures[row]['images_per_s']:>12.0f}")
    one_ratio = figures["hub, 1 image"]["p50_ms"] / figures["direct, 1 image"]["p50_ms"]
    rate_ratio = (figures["hub, map"]["images_per_s"]
                  / figures["direct, batches of 32"]["images_per_s"])
    print(f"hub / direct: 1 image p50 {one_ratio:.2f}x; images/s {rate_ratio:.2f}x "
          f"(mean batch at the hub {figures['mean_batch']:.1f})")
    figures["ratios"] = {"one_image_p50": one_ratio, "images_per_s": rate_ratio}
    save_json(RESULTS, figures)
    for failure in failures:
        print(f"CHECK FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
