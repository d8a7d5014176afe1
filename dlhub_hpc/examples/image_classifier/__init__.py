"""A PyTorch image classifier of CIFAR-10 size, called with numpy batches.

The servable is a state dict plus the import path of its network class (``net:CifarNet``);
the torch shim loads it once per worker in eval mode (on the worker's GPU when the pilot
bound one) and runs all the images of a batch of requests as one forward pass.

CIFAR-10 cannot be downloaded here: ``prepare`` trains the network for a few seconds on
synthetic 32x32 images, one colour-and-stripes pattern per class, so that its answers
can be checked. Run it (``--hub ADDRESS`` to use a running hub)::

    python -m dlhub_hpc.examples.image_classifier --requests 8 --images 4
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
SERVABLE = "demo/cifar-classifier"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")


def synthetic_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` noisy 3x32x32 float32 images and their labels: class k has its own colour
    and stripe direction and frequency."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(10, size=n)
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    colours = np.random.default_rng(42).uniform(0.2, 1.0, size=(10, 3))
    images = np.empty((n, 3, 32, 32), dtype=np.float32)
    for i, k in enumerate(labels):
        angle = np.pi * k / 10
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (2 + k % 3) * (np.cos(angle) * xx
                                                                + np.sin(angle) * yy))
        images[i] = colours[k][:, None, None] * stripes
    images += rng.normal(0, 0.15, size=images.shape).astype(np.float32)
    return images, labels


def train(dest: Path, n: int = 1200, epochs: int = 3, seed: int = 0) -> dict[str, Any]:
    """Train CifarNet on synthetic images; write weights.pt and a summary."""
    import torch

    sys.path.insert(0, str(dest))
    try:
        from net import CifarNet  # the bundle's own module, as the worker will import it
    finally:
        sys.path.remove(str(dest))
    torch.manual_seed(seed)
    model = CifarNet(width=16)
    x, y = synthetic_images(n, seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(n).split(64):
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[batch]), yt[batch])
            loss.backward()
            optimiser.step()
    model.eval()
    xv, yv = synthetic_images(300, seed + 1)
    with torch.inference_mode():
        accuracy = float((model(torch.from_numpy(xv)).argmax(1).numpy() == yv).mean())
    torch.save(model.state_dict(), dest / "weights.pt")
    summary = {"images": n, "epochs": epochs, "validation_accuracy": accuracy}
    (dest / "training.json").write_text(json.dumps(summary))
    return summary


def prepare(dest: Path, n: int = 1200) -> Path:
    dest = Path(shutil.copytree(HERE / "model", Path(dest), dirs_exist_ok=True))
    train(dest, n)
    return dest


def run(args: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from dlhub_hpc.examples import case_studies as cs

    console = Console()
    with cs.workdir(args.home) as home:
        console.print(f"training the network on {args.train} synthetic CIFAR-sized images "
                      "(CIFAR-10 cannot be downloaded here)")
        directory = prepare(home / "servables" / "cifar", args.train)
        summary = json.loads((directory / "training.json").read_text())
        console.print(f"validation accuracy {summary['validation_accuracy']:.1%}")
        with cs.hub_client(args.hub, home, console) as client:
            cs.publish(client, [directory], console)
            cs.start_workers(client, [SERVABLE], args.workers, console)
            images, labels = synthetic_images(args.requests * args.images, seed=7)
            batches = np.split(images, args.requests)  # each request: a numpy batch
            started = time.perf_counter()
            futures = [client.submit(SERVABLE, b, method="probabilities") for b in batches]
            probs = np.concatenate([f.result() for f in futures])
            elapsed = time.perf_counter() - started
            predicted = probs.argmax(1)
            table = Table(title=f"{SERVABLE}: {args.requests} requests of {args.images} images")
            for col in ("image", "true class", "predicted", "confidence"):
                table.add_column(col, justify="right" if col in ("image", "confidence")
                                 else "left")
            for i in range(min(len(labels), args.show)):
                mark = "" if predicted[i] == labels[i] else " [red](wrong)[/]"
                table.add_row(str(i), CLASSES[labels[i]], CLASSES[predicted[i]] + mark,
                              f"{probs[i, predicted[i]]:.1%}")
            table.caption = (f"accuracy {float((predicted == labels).mean()):.1%} over "
                             f"{len(labels)} images in {elapsed * 1000:.0f} ms")
            console.print(table)
            console.print(f"hub counters: {cs.batching_summary(client)}")
