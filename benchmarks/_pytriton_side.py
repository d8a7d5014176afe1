"""PyTriton's side of ``pytriton_peer.py``, run under a Python that has PyTriton.

PyTriton 0.7 needs numpy < 2 (its client reads numpy 2 answers as empty arrays), which this
project's environment does not have, so this file imports nothing of the project: it runs
in its own environment (``make bench`` makes ``.venv-pytriton-bench`` from the system's
Python, whose ``libpython`` Triton's Python stub links).

    python benchmarks/_pytriton_side.py serve HTTP GRPC METRICS [forest]
    python benchmarks/_pytriton_side.py drive URL MODEL IN_FLIGHT

``serve`` binds the forest (with ``forest``: trained here as
``benchmarks.servables.train_oqmd_rf`` trains the hub's, same data, seed and scikit-learn
version, so the same trees; a numpy 2 pickle does not load under numpy 1), a no-op,
``add`` and ``batch_stats`` (executions and items per model: the mean batch Triton
formed), 2 instances each, dynamic batching of up to 32 at Triton's defaults. ``drive``
reads a number of seconds per line on stdin, keeps ``IN_FLIGHT`` one-row requests
outstanding that long with ``FuturesModelClient``, and writes one JSON line: requests/s
and latency p50/p99 in ms.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import threading
import time
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MAX_BATCH = 32
INSTANCES = 2
FOREST, NOOP, STATS = "oqmd_rf", "noop", "batch_stats"


def train_forest(rows: int = 2000, features: int = 132) -> Any:
    """``benchmarks.servables.train_oqmd_rf``'s forest, step for step."""
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(0)
    x = rng.random((rows, features))
    y = x[:, :8].sum(axis=1) + 0.1 * rng.standard_normal(rows)
    model = RandomForestRegressor(n_estimators=100, max_depth=12, n_jobs=-1, random_state=0)
    model.fit(x, y)
    model.n_jobs = 1  # one instance per core predicts on its own core
    return model


def serve(http: int, grpc: int, metrics: int, forest_too: bool) -> None:
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    config = TritonConfig(http_port=http, grpc_port=grpc, metrics_port=metrics,
                          http_address="127.0.0.1", grpc_address="127.0.0.1",
                          metrics_address="127.0.0.1")
    batching = ModelConfig(max_batch_size=MAX_BATCH, batcher=DynamicBatcher())
    counts = {FOREST: [0, 0], NOOP: [0, 0]}
    f64 = np.float64

    def bind(triton: Any, name: str, fn: Any, shape_in: tuple[int, ...],
             shape_out: tuple[int, ...], instances: int = INSTANCES,
             cfg: Any = batching) -> None:
        triton.bind(name, [fn] * instances, config=cfg,
                    inputs=[Tensor(name="x", dtype=f64, shape=shape_in)],
                    outputs=[Tensor(name="y", dtype=f64, shape=shape_out)])

    with Triton(config=config) as triton:
        if forest_too:
            model = train_forest()

            @batch
            def forest(x: np.ndarray) -> dict[str, np.ndarray]:
                counts[FOREST][0] += 1
                counts[FOREST][1] += len(x)
                return {"y": model.predict(x).reshape(-1, 1)}

            bind(triton, FOREST, forest, (132,), (1,))

        @batch
        def noop(x: np.ndarray) -> dict[str, np.ndarray]:
            counts[NOOP][0] += 1
            counts[NOOP][1] += len(x)
            return {"y": x}

        @batch
        def add(x: np.ndarray) -> dict[str, np.ndarray]:
            return {"y": x.sum(axis=1, keepdims=True)}

        @batch
        def stats(x: np.ndarray) -> dict[str, np.ndarray]:
            row = [float(v) for name in (FOREST, NOOP) for v in counts[name]]
            return {"y": np.tile(np.array(row), (len(x), 1))}

        bind(triton, NOOP, noop, (-1,), (-1,))
        bind(triton, "add", add, (-1,), (1,), instances=1)
        bind(triton, STATS, stats, (1,), (4,), instances=1, cfg=ModelConfig(max_batch_size=1))
        triton.serve()


def drive(url: str, model: str, in_flight: int) -> None:
    from pytriton.client import FuturesModelClient

    rng = np.random.default_rng(1)
    inputs = (list(rng.random((4096, 132))) if model == FOREST
              else [np.array([float(i)]) for i in range(4096)])
    with FuturesModelClient(url, model, max_workers=in_flight, init_timeout_s=120) as client:
        for line in sys.stdin:
            print(json.dumps(window(client, inputs, float(line), in_flight)), flush=True)


def window(client: Any, inputs: list[np.ndarray], seconds: float,
           in_flight: int) -> dict[str, float]:
    slots = threading.Semaphore(in_flight)
    latencies: list[float] = []
    errors: list[BaseException] = []
    last = [0.0]

    def done(t0: float, fut: Any) -> None:
        now = time.perf_counter()
        if fut.exception() is None:
            latencies.append(now - t0)
        else:
            errors.append(fut.exception())
        last[0] = max(last[0], now)
        slots.release()

    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds:
        slots.acquire()
        t0 = time.perf_counter()
        client.infer_sample(x=inputs[i % len(inputs)]).add_done_callback(
            lambda fut, t0=t0: done(t0, fut))
        i += 1
    for _ in range(in_flight):
        if not slots.acquire(timeout=120):
            raise RuntimeError("PyTriton requests unanswered two minutes after the window")
    if errors:
        raise RuntimeError(f"{len(errors)} PyTriton requests failed: {errors[0]!r}")
    ms = sorted(x * 1000 for x in latencies)
    return {"requests_per_s": len(ms) / (last[0] - start), "p50": statistics.median(ms),
            "p99": ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]}


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    if argv[0] == "serve":
        serve(int(argv[1]), int(argv[2]), int(argv[3]), argv[4:] == ["forest"])
    elif argv[0] == "drive":
        drive(argv[1], argv[2], int(argv[3]))
    else:
        raise SystemExit(f"unknown command {argv[0]!r}: serve or drive")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
