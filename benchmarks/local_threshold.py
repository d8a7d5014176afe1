"""Where the same-node fast path starts to pay: mid-sized arrays through CurveZMQ against
the same arrays as sealed memfds, the figures behind ``HubConfig.local_min_bytes``.

    python benchmarks/local_threshold.py [--kib 32,64,128,256,512,1024] [--requests 200]

Two hubs in turn, each in this process (CurveZMQ on, tcp on loopback) with one worker
process of ``demo/noop`` (the pilot's worker command): one with ``local_min_bytes`` over
every size (arrays cross CurveZMQ, as between nodes), one at the least it takes (16385
bytes: every array goes as a memfd). For each float64 array size: the echo's p50 one at a
time, and ``Client.map``'s rate with ``--in-flight`` (32) outstanding. Where the memfd
column wins on both is where the threshold belongs. Figures go to
benchmarks/results/local_threshold.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import hub_and_worker, percentile, save_json, start_run
from dlhub_hpc.examples import example_dir

logger = logging.getLogger("benchmarks.local_threshold")
RESULTS = Path(__file__).parent / "results" / "local_threshold.json"
LEAST = 16385  # HubConfig.local_min_bytes's floor


def sweep(min_bytes: int, sizes_kib: list[int], args: argparse.Namespace
          ) -> dict[int, dict[str, float]]:
    """Per size: p50 ms one at a time and req/s through ``map``, on a hub whose arrays of
    ``min_bytes`` and more go as memfds."""
    out: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="dlhub-threshold-") as tmp, hub_and_worker(
            Path(tmp), example_dir("noop"), {"local_min_bytes": min_bytes}) as (client, name):
        for kib in sizes_kib:
            x = np.random.default_rng(kib).random(kib * 128)  # float64: 8 bytes each
            if not np.array_equal(client.run(name, x, cache=False), x):
                raise RuntimeError(f"the {kib} KiB echo did not return its input")
            for _ in range(20):
                client.run(name, x, cache=False)
            seconds = []
            for _ in range(args.requests):
                start = time.perf_counter()
                client.run(name, x, cache=False)
                seconds.append(time.perf_counter() - start)
            start = time.perf_counter()
            for _ in client.map(name, [x] * args.mapped, in_flight=args.in_flight,
                                cache=False):
                pass
            out[kib] = {"p50_ms": percentile(seconds, 50) * 1e3,
                        "rps": args.mapped / (time.perf_counter() - start)}
            logger.info("min_bytes %s, %s KiB: %s", min_bytes, kib, out[kib])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kib", default="32,64,128,256,512,1024",
                        help="array sizes in KiB, comma-separated")
    parser.add_argument("--requests", type=int, default=200, help="one-at-a-time echoes")
    parser.add_argument("--mapped", type=int, default=2000, help="echoes through map")
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    start_run(args.verbose, logger)
    sizes = [int(k) for k in args.kib.split(",")]
    over = max(sizes) * 1024 + 1
    curve, memfd = sweep(over, sizes, args), sweep(LEAST, sizes, args)
    print(f"{'KiB':>6}{'CurveZMQ p50 ms':>17}{'memfd p50 ms':>14}{'CurveZMQ req/s':>16}"
          f"{'memfd req/s':>13}")
    rows: dict[str, Any] = {}
    for kib in sizes:
        a, b = curve[kib], memfd[kib]
        print(f"{kib:>6}{a['p50_ms']:>17.2f}{b['p50_ms']:>14.2f}{a['rps']:>16.0f}"
              f"{b['rps']:>13.0f}")
        rows[str(kib)] = {"curve": a, "memfd": b}
    wins = [k for k in sizes if memfd[k]["p50_ms"] < curve[k]["p50_ms"]
            and memfd[k]["rps"] > curve[k]["rps"]]
    print(f"memfd ahead on both from {min(wins)} KiB" if wins else "memfd ahead nowhere")
    save_json(RESULTS, {"sizes": rows, "in_flight": args.in_flight})
    return 0


if __name__ == "__main__":
    sys.exit(main())
