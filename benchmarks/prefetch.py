"""A batch sent ahead (``HubConfig.prefetch``) against none, on a model whose batch keeps
its worker busy while the CPU waits (as a GPU kernel does), in the same run.

    python benchmarks/prefetch.py [--pause-ms 5] [--image-size 64] [--requests 2000]

Two hubs in this process (CurveZMQ on, tcp on loopback), one with ``prefetch`` and one
without, each with one worker process (the pilot's worker command) of the same servable:
a function that takes the whole batch (``takes_batch``), waits ``--pause-ms`` once per
batch (the device's time; the CPU idles) and answers each image's sum. Images are float32
3xSxS arrays (48 KiB at 64): under ``local_min_bytes`` they cross CurveZMQ, as between a
login node and a compute node. ``max_batch_size`` 32.

Rows, the two hubs in alternating rounds:

* ``map``: ``Client.map`` with ``--in-flight`` (64) images outstanding: images/s, the mean
  batch, and how many batches went ahead;
* ``1 image``: ``Client.run`` one at a time, p50 (nothing waits, so nothing goes ahead:
  the two should match).

Without a batch ahead, the worker waits for each batch's trip from the hub (decrypt,
encrypt, decrypt) after answering the last; with one, the trip overlaps the pause.
Figures go to benchmarks/results/prefetch.json.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import hub_and_worker, percentile, save_json, start_run

logger = logging.getLogger("benchmarks.prefetch")
RESULTS = Path(__file__).parent / "results" / "prefetch.json"
SIDES = {"prefetch": True, "none ahead": False}


def write_servable(root: Path, pause: float, size: int) -> Path:
    """``bench/pause``: waits ``pause`` seconds per batch, answers each image's sum."""
    folder = root / "pause"
    folder.mkdir(parents=True)
    (folder / "pause.py").write_text(textwrap.dedent(f"""\
        import time


        def run(images):
            time.sleep({pause!r})
            return [float(x.sum()) for x in images]
        """))
    spec = {
        "datacite": {"title": "A device-bound model", "creators": ["Bench, Ada"],
                     "description": "Waits a fixed time per batch, as a GPU kernel would."},
        "dlhub": {"owner": "bench", "name": "pause"},
        "servable": {"type": "python_function", "max_batch_size": 32, "methods": {"run": {
            "function": "pause:run", "takes_batch": True,
            "input": {"type": "ndarray", "shape": [3, size, size], "dtype": "float32"},
            "output": {"type": "float"}}}},
    }
    (folder / "servable.yaml").write_text(yaml.safe_dump(spec))
    return folder


def window(client: Any, name: str, images: list[np.ndarray], in_flight: int
           ) -> tuple[float, int, int, int]:
    """Images/s through ``map``; and the hub's batches, items and batches ahead meanwhile."""
    before = client.status()["stats"]
    start = time.perf_counter()
    for _ in client.map(name, images, in_flight=in_flight, cache=False):
        pass
    rate = len(images) / (time.perf_counter() - start)
    after = client.status()["stats"]
    grew = [after.get(k, 0) - before.get(k, 0)
            for k in ("batches", "batched_items", "batches_ahead")]
    return rate, grew[0], grew[1], grew[2]


def one_at_a_time(client: Any, name: str, image: np.ndarray, n: int) -> float:
    seconds = []
    for _ in range(n):
        start = time.perf_counter()
        client.run(name, image, cache=False)
        seconds.append(time.perf_counter() - start)
    return percentile(seconds, 50) * 1e3


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    servable = write_servable(tmp / "servables", args.pause_ms / 1e3, args.image_size)
    rng = np.random.default_rng(0)
    shape = (3, args.image_size, args.image_size)
    images = [rng.random(shape, dtype=np.float32) for _ in range(args.requests)]
    out: dict[str, Any] = {side: {"rates": [], "batches": 0, "items": 0, "ahead": 0}
                           for side in SIDES}
    with contextlib.ExitStack() as stack:
        clients = {}
        for side, on in SIDES.items():
            settings = {"prefetch": on, "local_min_bytes": 1 << 40}  # all through CurveZMQ
            clients[side] = stack.enter_context(
                hub_and_worker(tmp / side.replace(" ", "-"), servable, settings))
        for client, name in clients.values():
            window(client, name, images[:200], args.in_flight)  # warm up both
        for round_ in range(args.rounds):
            for side, (client, name) in clients.items():
                rate, batches, items, ahead = window(client, name, images, args.in_flight)
                row = out[side]
                row["rates"].append(rate)
                row["batches"] += batches
                row["items"] += items
                row["ahead"] += ahead
                logger.info("round %d %s: %.0f images/s", round_, side, rate)
        for side, (client, name) in clients.items():
            out[side]["p50_ms"] = one_at_a_time(client, name, images[0], args.single)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pause-ms", type=float, default=5.0, help="per batch")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--requests", type=int, default=2000, help="images per window")
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--single", type=int, default=200, help="one-at-a-time calls")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    start_run(args.verbose, logger)
    with tempfile.TemporaryDirectory(prefix="dlhub-prefetch-") as tmp:
        result = measure(args, Path(tmp))
    print(f"pause {args.pause_ms} ms per batch, 3x{args.image_size}x{args.image_size} "
          f"float32 through CurveZMQ, map with {args.in_flight} in flight, "
          f"{args.rounds} rounds (median)")
    print(f"{'':<12}{'images/s':>10}{'mean batch':>12}{'batches ahead':>15}{'1 image p50 ms':>16}")
    for side, row in result.items():
        row["images_per_s"] = statistics.median(row["rates"])
        mean = row["items"] / max(row["batches"], 1)
        print(f"{side:<12}{row['images_per_s']:>10.0f}{mean:>12.1f}"
              f"{row['ahead'] / max(row['batches'], 1):>14.0%}{row['p50_ms']:>16.2f}")
    ratio = result["prefetch"]["images_per_s"] / result["none ahead"]["images_per_s"]
    print(f"prefetch / none ahead: {ratio:.2f}x images/s")
    save_json(RESULTS, {"settings": vars(args), "sides": result, "ratio": ratio})
    return 0


if __name__ == "__main__":
    sys.exit(main())
