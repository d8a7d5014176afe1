"""A peer: PyTriton serving the same random forest (and a no-op), beside the hub, same run.

    python benchmarks/pytriton_peer.py [--seconds 4] [--rounds 3] [--json OUT.json]

One hub process serves ``bench/oqmd_rf`` (scikit-learn's own ``predict``, as published:
``compile_trees: false``) and ``bench/noop``, each with 2 workers and batches of up to 32
(the hub's default ``max_batch_delay``). One PyTriton process serves the same pickled
forest and a no-op with 2 model instances each, dynamic batching of up to 32 at Triton's
default queue delay (0: whatever is queued). Both sides at their defaults: CurveZMQ on
the hub's side, no encryption on PyTriton's (it has none of its own).

Each side keeps 32 one-row requests (1 x 132 float64) in flight for ``--seconds``,
``--rounds`` times, alternating hub and PyTriton windows so that both see the same load.
The hub's client is ``Client.submit`` in this process (a future per request, as
PyTriton's), and again ``Client.map`` (one thread keeping the window full); PyTriton's is
its own ``FuturesModelClient`` (HTTP, 32 threads) in a process of PyTriton's environment, since
PyTriton 0.7 needs numpy < 2 (``benchmarks/_pytriton_side.py``; ``make pytriton-env``
makes ``.venv-pytriton-bench`` from the system's Python, whose ``libpython`` Triton's
Python stub links). Reported: requests/s (median of the rounds), p50/p99, and the mean
batch each side formed. Target: the hub's forest rate at least ``TARGET`` x PyTriton's.
Results go to ``benchmarks/results/pytriton.json``.

``add_cold_start`` (used by ``cold_start.py``) times a PyTriton process from launch to its
first answer of ``add([1, 2])`` (Triton's HTTP/JSON protocol, from this process).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO_ROOT, save_json, start_run

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results" / "pytriton.json"
TARGET = 4.0  # hub forest req/s / PyTriton forest req/s, 32 in flight, at least
IN_FLIGHT = 32
MAX_BATCH = 32
INSTANCES = 2  # as many as the hub's workers
FOREST, NOOP, STATS = "oqmd_rf", "noop", "batch_stats"
HUB, HUB_MAP, PYTRITON = "dlhub-hpc", "dlhub-hpc map", "pytriton"


PYTRITON_PYTHON = REPO_ROOT / ".venv-pytriton-bench" / "bin" / "python"
SIDE = Path(__file__).resolve().parent / "_pytriton_side.py"
TENSOR_STORE_OFF = {"PYTRITON_NO_TENSORSTORE": "1"}
SETUP = {"tensor_store": "on"}  # how the last PyTriton server ran


def available() -> bool:
    """Is PyTriton's environment there (``make bench`` makes it: numpy < 2, its own)?"""
    return PYTRITON_PYTHON.exists()


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def infer_json(url: str, model: str, values: Sequence[float], timeout: float = 30) -> list[Any]:
    """One request on Triton's HTTP/JSON protocol (KServe v2); the first output's data."""
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, len(values)],
                                   "datatype": "FP64", "data": list(values)}]}).encode()
    req = urllib.request.Request(f"{url}/v2/models/{model}/infer", body,
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as reply:
        return list(json.loads(reply.read())["outputs"][0]["data"])


def wait_ready(proc: subprocess.Popen[Any], url: str, models: Sequence[str],
               timeout: float = 180.0) -> bool:
    """Every model ready (True), or the server exited or timed out (False)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if all(urllib.request.urlopen(f"{url}/v2/models/{m}/ready", timeout=5).status
                   == 200 for m in models):
                return True
        except OSError:  # not listening or not loaded yet
            pass
        time.sleep(0.02)
    return False


@contextlib.contextmanager
def triton_process(forest: bool) -> Iterator[str]:
    """A PyTriton server process; yields its HTTP URL once every model is ready.

    PyTriton's shared-memory tensor store is tried first; a second model instance waits
    only 1 s for the first one's handshake, which a loaded small machine can miss (the
    server then exits), so it is started again with the store off (tensors in base64
    through its proxy) and ``SETUP`` says so."""
    from benchmarks.cold_start import stop_group

    models = ["add", NOOP, STATS] + ([FOREST] if forest else [])
    for extra in ({}, TENSOR_STORE_OFF):
        ports = free_ports(3)
        args = [str(PYTRITON_PYTHON), str(SIDE), "serve", *map(str, ports)]
        args += ["forest"] if forest else []
        proc = subprocess.Popen(args, env={**os.environ, **extra}, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            url = f"http://127.0.0.1:{ports[0]}"
            if wait_ready(proc, url, models):
                SETUP["tensor_store"] = "off" if extra else "on"
                yield url
                return
            logger.warning("PyTriton did not load its models with %s; trying again",
                           extra or "its defaults")
        finally:
            stop_group(proc)
    raise RuntimeError(f"PyTriton did not start: run '{PYTRITON_PYTHON} {SIDE} serve 8000 "
                       "8001 8002' to see why")


def add_cold_start() -> float:
    """Seconds from launching a PyTriton process to its first answer of ``add([1, 2])``."""
    started = time.perf_counter()
    with triton_process(forest=False) as url:
        answer = infer_json(url, "add", [1.0, 2.0])
        elapsed = time.perf_counter() - started
    if answer != [3.0]:
        raise RuntimeError(f"PyTriton answered {answer!r}")
    return elapsed


def triton_mean_batch(url: str, model: str) -> tuple[int, int]:
    """(items, executions) so far: their ratio is the mean batch Triton formed."""
    row = infer_json(url, STATS, [0.0])
    executions, items = row[0:2] if model == FOREST else row[2:4]
    return int(items), int(executions)


class Driver:
    """PyTriton's client (``FuturesModelClient``) in PyTriton's environment: one window of
    ``in_flight`` requests per call."""

    def __init__(self, url: str, model: str) -> None:
        self.proc = subprocess.Popen(
            [str(PYTRITON_PYTHON), str(SIDE), "drive", url, model, str(IN_FLIGHT)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)

    def window(self, seconds: float) -> dict[str, float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{seconds}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("PyTriton's client process exited; run it alone to see why")
        result: dict[str, float] = json.loads(line)
        return result

    def close(self) -> None:
        from benchmarks.cold_start import stop_group

        stop_group(self.proc)


# ---- the comparison ---------------------------------------------------------------------

Window = Callable[[float], dict[str, float]]


def compare(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Alternating hub and PyTriton windows, forest and no-op."""
    from benchmarks.paper_suite import drive, drive_map, hub_session
    from benchmarks.servables import make_inputs, prepare, ref, variant

    source = prepare(FOREST, tmp / "servables")  # compile_trees: false, sklearn predict
    noop = prepare(NOOP, tmp / "servables")
    rows = make_inputs(FOREST, 4096)
    values = [np.array([float(i)]) for i in range(4096)]
    cases = {FOREST: (ref(FOREST), rows), NOOP: (ref(NOOP), values)}
    batching = {servable: {"max_batch_size": MAX_BATCH} for servable, _ in cases.values()}
    out: dict[str, Any] = {}
    with hub_session(tmp / "hub", {"batching": batching}) as session, \
            triton_process(forest=True) as url:
        for path in (source, noop):
            name = str(session.client.publish(path)["name"])
            session.start_workers(name, INSTANCES, INSTANCES)
        for model, (servable, inputs) in cases.items():
            def hub_window(seconds: float, servable: str = servable,
                           inputs: Sequence[Any] = inputs) -> dict[str, float]:
                return drive(lambda x: session.client.submit(servable, x, cache=False),
                             inputs, seconds, IN_FLIGHT)

            def hub_map(seconds: float, servable: str = servable,
                        inputs: Sequence[Any] = inputs) -> dict[str, float]:
                return drive_map(session.client, servable, inputs, seconds, IN_FLIGHT)

            driver = Driver(url, model)
            try:
                out[model] = alternate(session, url, model,
                                       {HUB: hub_window, HUB_MAP: hub_map,
                                        PYTRITON: driver.window}, args)
            finally:
                driver.close()
    _ = variant  # the hub's copy is the servable as published: scikit-learn's own predict
    return out


def alternate(session: Any, url: str, model: str, sides: dict[str, Window],
              args: argparse.Namespace) -> dict[str, Any]:
    for window in sides.values():  # warm-up
        window(args.warmup)

    def counts(side: str) -> tuple[int, int]:  # (items, batches) so far
        if side == PYTRITON:
            return triton_mean_batch(url, model)
        stats = session.stats()
        return stats.get("batched_items", 0), stats.get("batches", 0)

    runs: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    formed = dict.fromkeys(sides, (0, 0))
    for _ in range(args.rounds):
        for side, window in sides.items():
            before = counts(side)
            runs[side].append(window(args.seconds))
            after = counts(side)
            formed[side] = (formed[side][0] + after[0] - before[0],
                            formed[side][1] + after[1] - before[1])
    result: dict[str, Any] = {}
    for side, rounds in runs.items():
        result[side] = {
            "requests_per_s": statistics.median(r["requests_per_s"] for r in rounds),
            "round_requests_per_s": [r["requests_per_s"] for r in rounds],
            "p50_ms": statistics.median(r["p50"] for r in rounds),
            "p99_ms": max(r["p99"] for r in rounds),
            "mean_batch": _ratio(*formed[side]),
        }
    tri = result[PYTRITON]["requests_per_s"]
    result["ratio"] = result[HUB]["requests_per_s"] / tri
    result["map_ratio"] = result[HUB_MAP]["requests_per_s"] / tri
    logger.info("%s: hub / pytriton = %.2fx (submit), %.2fx (map)", model, result["ratio"],
                result["map_ratio"])
    return result


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def settings_note() -> dict[str, str]:
    return {
        "pytriton tensor store": SETUP["tensor_store"],
        "dlhub-hpc": f"{INSTANCES} workers, max_batch_size {MAX_BATCH}, default delay, "
                     "CurveZMQ on (default), scikit-learn predict",
        "pytriton": f"{INSTANCES} instances, max_batch_size {MAX_BATCH}, dynamic batcher "
                    "defaults (queue delay 0), HTTP, no encryption, scikit-learn predict, "
                    "numpy < 2 in its own environment",
    }


def print_table(result: dict[str, Any]) -> None:
    for model, sides in result.items():
        for side in (HUB, HUB_MAP, PYTRITON):
            s = sides[side]
            print(f"{model:8} {side:14} {s['requests_per_s']:8.0f} req/s  p50 {s['p50_ms']:.2f} ms"
                  f"  p99 {s['p99_ms']:.2f} ms  mean batch {s['mean_batch']:.1f}")
        print(f"{model:8} dlhub-hpc / pytriton = {sides['ratio']:.2f}x (submit), "
              f"{sides['map_ratio']:.2f}x (map)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="each timed window")
    parser.add_argument("--warmup", type=float, default=2.0, help="untimed window first")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    start_run(args.verbose, logger)
    from benchmarks.targets import Targets

    targets = Targets()
    if not available():
        why = f"no PyTriton environment at {PYTRITON_PYTHON}: make pytriton-env"
        save_json(args.json, {"benchmark": "pytriton", "skipped": why})
        print(f"pytriton: {why}")
        targets.check("forest 32 in flight: hub req/s / PyTriton req/s", None, TARGET,
                      better="higher", unit="x")
        targets.report()
        return 0
    with tempfile.TemporaryDirectory(prefix="dlhub-pytriton-") as tmp:
        result = compare(args, Path(tmp))
    print_table(result)
    save_json(args.json, {"benchmark": "pytriton", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                          "settings": settings_note(), "in_flight": IN_FLIGHT,
                          "results": result, "target_min": TARGET})
    targets.check("forest (scikit-learn predict) 32 in flight: hub (submit) req/s / PyTriton "
                  "req/s", result[FOREST]["ratio"], TARGET, better="higher", unit="x")
    targets.check("forest (scikit-learn predict) 32 in flight: hub (map) req/s / PyTriton "
                  "req/s", result[FOREST]["map_ratio"], TARGET, better="higher", unit="x")
    targets.report()
    return targets.exit_code()


if __name__ == "__main__":
    sys.exit(main())
