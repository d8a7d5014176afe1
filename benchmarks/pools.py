"""Shared pools: 200 small servables on 4 pooled workers, a Zipf mix, beside dedicated workers.

    python benchmarks/pools.py [--servables 200] [--requests 2000] [--zipf 1.1] [--seed 0]

One hub process (CurveZMQ on, as deployed) holds ``--servables`` servables of the same code
and different weights (``weight * sum(x)``; ``--weight-bytes`` of weights each), tagged
``poolbench``; 4 pooled workers (``tag:poolbench``) share them with a memory budget that
holds ``--slots`` models each, so the mix keeps loading and evicting. The hot 4 of the mix
are published once more under their own names (``dedicated-K``, the same weights) with one
worker each: a servable with workers of its own is served by them, never by a pool.

The request mix is Zipf-distributed over the servables (rank ``k`` drawn with probability
proportional to ``1 / k**s``, seeded). Latency: the mix is sent one request at a time
(``Client.run``, ``cache=False``), in alternating rounds with the same rounds' requests for
the hot 4 sent to their dedicated workers, so both see the same load. A pooled request is
*cold* when the hub's pool load counter moved during it (it made a worker load its model:
the hub's ``pool_counters`` operation, read before and after each request, outside the
timed call, and alike around the dedicated requests), else *hot*; each cold
one is set against its load's own time, which the worker measures and the hub reports
(``last_load_s``). Throughput: the whole mix with ``--in-flight`` requests outstanding
(``Client.submit``) through the pool, and its hot-4 requests through the dedicated workers.

Targets (``benchmarks/targets.py``): hot p50 through the pool at most ``HOT_TARGET`` (1.2x)
the dedicated workers' p50; a cold request's time past its model's load at most
``COLD_EXTRA_MS`` (20 ms) at p50. Results: ``benchmarks/results/pools.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    child_process,
    hub_main,
    reap,
    save_json,
    start_run,
    stop_process,
    summary,
)
from benchmarks.common import wait_for_hub as wait_hub
from benchmarks.servables.scaled import write_scaled
from benchmarks.targets import Targets

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results" / "pools.json"
HOT_TARGET = 1.2  # pool hot p50 / dedicated p50
COLD_EXTRA_MS = 20.0  # cold request p50 past its model's load
WORKERS = 4
HOT = 4


def zipf_mix(n_servables: int, requests: int, s: float, seed: int) -> list[int]:
    """``requests`` servable ranks (0 = the most popular), Zipf-distributed, seeded."""
    p = 1.0 / np.arange(1, n_servables + 1) ** s
    rng = np.random.default_rng(seed)
    return [int(k) for k in rng.choice(n_servables, size=requests, p=p / p.sum())]


def publish_all(client: Any, root: Path, args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The pooled servables (by rank) and the hot ones' dedicated copies."""
    pooled, dedicated = [], []
    for k in range(args.servables):
        d = write_scaled(root, f"pooled-{k}", float(k + 1), args.weight_bytes, "poolbench")
        pooled.append(str(client.publish(d)["name"]))
    for k in range(HOT):
        d = write_scaled(root, f"dedicated-{k}", float(k + 1), args.weight_bytes, "poolhot")
        dedicated.append(str(client.publish(d)["name"]))
    return pooled, dedicated


@contextlib.contextmanager
def bench_hub(home: Path, args: argparse.Namespace) -> Iterator[tuple[Any, list[str], list[str]]]:
    """A hub process with the servables published, the pool's workers and the dedicated
    ones started; yields (client, pooled names, dedicated names)."""
    from dlhub_hpc import Client
    from dlhub_hpc.cli.pools import wait_for_pool
    from dlhub_hpc.servable.pools import PoolSpec

    pids: list[int] = []
    with child_process(hub_main, str(home), {"memo_max_bytes": 0}, name="hub") as proc:
        try:
            with Client(wait_hub(home, proc), timeout=120) as client:
                started = time.perf_counter()
                pooled, dedicated = publish_all(client, home.parent / "servables", args)
                logger.info("published %d servables in %.1fs", len(pooled) + len(dedicated),
                            time.perf_counter() - started)
                ref = PoolSpec.parse("tag:poolbench", args.slots * args.model_bytes).ref()
                client.start_workers(ref, WORKERS)
                for name in dedicated:
                    client.start_workers(name, 1)
                wait_for_pool(client, ref, WORKERS, timeout=120)
                for name in dedicated:
                    client.wait_for_workers(name, 1, timeout=120)
                pids = [w["pid"] for w in client.status()["workers"]]
                yield client, pooled, dedicated
        finally:
            stop_process(proc)
            reap(pids)


def pool_loads(client: Any, servable: str | None = None) -> tuple[int, float | None]:
    """The hub's pool load counter, and ``servable``'s last load in seconds (the worker's
    own time), from the hub's ``pool_counters`` operation (no registry listing)."""
    got = client.control("pool_counters", servable=servable)
    return int(got["pool_loads"]), (got["servable"] or {}).get("last_load_s")


def timed(client: Any, name: str, x: list[float], expected: float) -> float:
    started = time.perf_counter()
    value = client.run(name, x, cache=False)
    elapsed = time.perf_counter() - started
    if value != expected:
        raise RuntimeError(f"{name} answered {value!r}, not {expected!r}")
    return elapsed


def latency_rounds(client: Any, pooled: list[str], dedicated: list[str], mix: list[int],
                   rounds: int) -> dict[str, list[float]]:
    """Alternating rounds: a slice of the mix through the pool (hot or cold by the hub's
    load counter), then that slice's hot-4 requests through the dedicated workers. Both
    read the counter around each request alike: a status call just before a request
    slows it, and the two sides must pay the same."""
    out: dict[str, list[float]] = {"hot": [], "hot4": [], "cold": [], "cold_extra": [],
                                   "load": [], "dedicated": []}
    size = -(-len(mix) // rounds)
    for r in range(rounds):
        part = mix[r * size:(r + 1) * size]
        for i, k in enumerate(part):
            x = [1.0, float(i % 7)]
            before, _ = pool_loads(client)
            elapsed = timed(client, pooled[k], x, (k + 1) * sum(x))
            after, load = pool_loads(client, f"{pooled[k]}@1")
            if after == before:
                out["hot"].append(elapsed)
                if k < HOT:
                    out["hot4"].append(elapsed)
                continue
            out["cold"].append(elapsed)
            out["load"].append(load or 0.0)
            out["cold_extra"].append(elapsed - (load or 0.0))
        for i, k in enumerate(part):
            if k < HOT:
                x = [1.0, float(i % 7)]
                pool_loads(client)
                out["dedicated"].append(timed(client, dedicated[k], x, (k + 1) * sum(x)))
                pool_loads(client, f"{dedicated[k]}@1")
    return out


def throughput(client: Any, names: list[str], mix: list[int], in_flight: int) -> float:
    """Requests/s for ``mix`` (ranks into ``names``), ``in_flight`` outstanding."""
    pending: list[tuple[Future[Any], float]] = []
    started = time.perf_counter()
    for i, k in enumerate(mix):
        if len(pending) >= in_flight:
            future, expected = pending.pop(0)
            if future.result(timeout=120) != expected:
                raise RuntimeError("a wrong answer under load")
        x = [1.0, float(i % 7)]
        pending.append((client.submit(names[k], x, cache=False), (k + 1) * sum(x)))
    for future, expected in pending:
        if future.result(timeout=120) != expected:
            raise RuntimeError("a wrong answer under load")
    return len(mix) / (time.perf_counter() - started)


def report(lat: dict[str, list[float]], pools: dict[str, Any], tput: dict[str, float],
           args: argparse.Namespace) -> dict[str, Any]:
    rows = {name: summary(values, 1000.0) for name, values in lat.items() if values}
    for name, row in rows.items():
        print(f"{name:10} n {row['n']:5.0f}  p50 {row['p50']:8.3f} ms  p99 {row['p99']:8.3f} ms")
    counts = pools["servables"].values()
    loads = sum(c["loads"] for c in counts)
    hits = sum(c["hits"] for c in counts)
    hit_rate = hits / (hits + loads) if hits + loads else None
    print(f"pool, whole run: {loads} loads, {sum(c['evictions'] for c in counts)} evictions, "
          f"hit rate {hit_rate if hit_rate is None else round(hit_rate, 3)} (batches sent "
          f"to a worker holding the servable, of all); load: the worker's own time")
    print(f"throughput ({args.in_flight} in flight): pool {tput['pool']:.0f} req/s over the "
          f"whole mix, dedicated {tput['dedicated']:.0f} req/s over its hot-{HOT} requests")
    return {"latency_ms": rows, "loads": loads, "hits": hits, "hit_rate": hit_rate,
            "throughput_rps": tput,
            "settings": {k: v for k, v in vars(args).items() if k != "json"}}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--servables", type=int, default=200)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--zipf", type=float, default=1.1, help="the exponent s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weight-bytes", type=int, default=256 * 1024)
    parser.add_argument("--model-bytes", type=int, default=512 * 1024,
                        help="what a worker counts per model (its weights, RSS and arrays)")
    parser.add_argument("--slots", type=int, default=8, help="models a budget holds")
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start_run(args.verbose, logger)
    mix = zipf_mix(args.servables, args.requests, args.zipf, args.seed)
    with tempfile.TemporaryDirectory(prefix="dlhub-pools-") as tmp, \
            bench_hub(Path(tmp) / "home", args) as (client, pooled, dedicated):
        lat = latency_rounds(client, pooled, dedicated, mix, args.rounds)
        tput = {"pool": throughput(client, pooled, mix, args.in_flight),
                "dedicated": throughput(client, dedicated, [k for k in mix if k < HOT],
                                        args.in_flight)}
        pools = client.status()["pools"]
    result = report(lat, pools, tput, args)
    save_json(args.json, result)
    rows = result["latency_ms"]
    targets = Targets()
    hot, ded = rows.get("hot"), rows.get("dedicated")
    targets.check("hot p50, pool / dedicated", hot and ded and hot["p50"] / ded["p50"],
                  HOT_TARGET, unit="x")
    extra = rows.get("cold_extra")
    targets.check("cold p50 past its model's load", extra and extra["p50"], COLD_EXTRA_MS,
                  unit="ms")
    targets.report()
    return targets.exit_code()


if __name__ == "__main__":
    sys.exit(main())
