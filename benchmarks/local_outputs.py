"""A small input, a large output: a servable makes a float64 array from its size, through a
hub on this node, for a client that holds a same-node link and one that does not.

    python benchmarks/local_outputs.py [--mib 32] [--rounds 7]

Both clients run in one process, in alternating rounds, against one hub (CurveZMQ on, its
default) and one warm worker: ``path`` has opened its link (``Client.open_local_path``), so
the worker's memfd comes back mapped, with no copy through the hub; ``curve`` has
``local_fast_path = False``, so the same array crosses the hub's CurveZMQ sockets. Each
round reads one float of every 4 KiB page of the answer. The first round is a warm-up.

Target (exit status 1 if missed): path p50 < curve p50.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``dlhub_hpc`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlhub_hpc import Client, Hub, HubConfig

SPEC = """\
datacite: {title: Makes a float64 array from a size, creators: ["Bench, Ada"]}
dlhub: {owner: bench, name: maker}
servable:
  type: python_function
  methods:
    run: {function: "maker:make", input: {type: dict}, output: {type: ndarray}}
"""
CODE = """\
import numpy as np


def make(args: dict) -> np.ndarray:
    return np.full(int(args["n"]), float(args["fill"]))
"""


def measure(hub: Hub, folder: Path, n: int, rounds: int) -> dict[str, list[float]]:
    (folder / "servable.yaml").write_text(SPEC)
    (folder / "maker.py").write_text(CODE)
    with Client(hub.client_address, timeout=300) as path, \
            Client(hub.client_address, timeout=300) as curve:
        name = path.publish(folder)["name"]
        path.start_workers(name, 1)
        path.wait_for_workers(name, 1, timeout=120)
        while not hub.server.fast.workers_linked():  # the worker links right after Hello
            time.sleep(0.05)
        if not path.open_local_path():
            raise SystemExit("no same-node link: this system has no memfds, or the hub's "
                             "path is off")
        curve.local_fast_path = False
        times: dict[str, list[float]] = {"path": [], "curve": []}
        for i in range(rounds + 1):
            for label, client in (("path", path), ("curve", curve)):
                started = time.perf_counter()
                out = client.run(name, {"n": n, "fill": float(i)}, cache=False)
                float(out[::512].sum())  # one float of every 4 KiB page
                if i:
                    times[label].append(time.perf_counter() - started)
        return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        hub = Hub(HubConfig(home=Path(home) / "hub", client_address="tcp://127.0.0.1:0",
                            worker_address="tcp://127.0.0.1:0")).start()
        try:
            folder = Path(home) / "maker"
            folder.mkdir()
            times = measure(hub, folder, args.mib * 2**20 // 8, args.rounds)
        finally:
            hub.stop()
    p50 = {label: statistics.median(ts) for label, ts in times.items()}
    for label, value in p50.items():
        print(f"{args.mib} MiB output, {label}: p50 {value * 1e3:.1f} ms")
    ratio = p50["path"] / p50["curve"]
    print(f"path / curve: {ratio:.2f} (target < 1)")
    return 0 if ratio < 1 else 1


if __name__ == "__main__":
    sys.exit(main())
