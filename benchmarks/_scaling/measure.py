"""The hub process, the load a client puts on it, and the figures at each fleet size."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

import psutil

from benchmarks._scaling.fleet import SERVABLE, Fleet, cpu_seconds
from benchmarks.common import CTX, hub_main, stop_process, wait_for_hub

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def hub_process(home: Path, overrides: dict[str, Any]) -> Iterator[tuple[SpawnProcess, str,
                                                                              str]]:
    """A hub process; yields it with its client and worker addresses; stops it on exit."""
    proc = CTX.Process(target=hub_main, args=(str(home), overrides), name="hub")
    proc.start()
    try:
        client_address = wait_for_hub(home, proc)
        worker_address = str(json.loads((home / "hub.json").read_text())["worker_address"])
        yield proc, client_address, worker_address
    finally:
        stop_process(proc)


def hub_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "heartbeat_interval": args.heartbeat_interval,
        "heartbeat_timeout": max(10.0, 10 * args.heartbeat_interval),
        "heartbeats_per_second": args.heartbeats_per_second,
        "memo_max_bytes": 0,  # every request reaches a worker
        "default_timeout": 60.0,
        "batching": {SERVABLE: {"max_batch_size": args.batch_size}},
    }


def drive(client: Any, first: int, n: int, in_flight: int) -> float:
    """Send requests ``first .. first+n-1``, ``in_flight`` at a time; the wall seconds.

    Every answer is checked: the echo of its own request.
    """
    slots = threading.Semaphore(in_flight)
    futures = []
    started = time.perf_counter()
    for i in range(first, first + n):
        if not slots.acquire(timeout=60):
            raise RuntimeError("no answer from the hub for 60 s")
        future = client.submit(SERVABLE, i, cache=False)
        future.add_done_callback(lambda _: slots.release())
        futures.append(future)
    for i, future in enumerate(futures, first):
        if future.result(timeout=60) != i:
            raise RuntimeError(f"request {i} got someone else's answer")
    return time.perf_counter() - started


def wait_ready(client: Any, fleet: Fleet, timeout: float = 120.0) -> None:
    """Until the hub counts exactly the fleet's workers, each with the servable loaded."""
    deadline = time.monotonic() + timeout
    while True:
        fleet.check()
        workers = client.status()["workers"]
        ready = sum(1 for w in workers if w["state"] != "loading")
        if ready == len(workers) == fleet.size:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the hub has {len(workers)} workers ({ready} ready), not "
                               f"{fleet.size}, after {timeout}s")
        time.sleep(0.1)


@dataclass
class Sample:
    """The timed rounds at one fleet size in one pass."""

    workers: int
    processes: int
    walls: list[float]  # seconds per round
    cpus: list[float]  # hub CPU seconds per round
    fleet_cpu: float  # the worker hosts' CPU seconds over all rounds
    idle_share: float | None  # hub CPU seconds / wall seconds with no requests


@dataclass
class Row:
    """The figures at one fleet size, every pass together."""

    workers: int
    processes: int
    requests: int
    throughput: float  # requests per second, median of the rounds
    cpu_us: float  # hub CPU microseconds per request, all rounds together
    round_cpu_us: list[float] = field(default_factory=list)
    round_throughput: list[float] = field(default_factory=list)
    fleet_cpu_us: float = 0.0  # the worker hosts' CPU microseconds per request
    busy_share: float = 0.0  # hub CPU seconds / wall seconds while loaded
    idle_share: float | None = None  # the same with no requests (heartbeats only)
    ratio: float | None = None  # cpu_us / cpu_us at BASELINE workers


def measure_idle(hub: psutil.Process, seconds: float) -> float | None:
    if seconds <= 0:
        return None
    cpu0, t0 = cpu_seconds(hub), time.perf_counter()
    time.sleep(seconds)
    return (cpu_seconds(hub) - cpu0) / (time.perf_counter() - t0)


def measure(client: Any, hub: psutil.Process, fleet: Fleet, args: argparse.Namespace,
            first: int) -> Sample:
    """Warm up, then ``args.rounds`` timed rounds of ``args.requests`` at this fleet size."""
    idle = measure_idle(hub, args.idle)
    drive(client, first, args.warmup, args.in_flight)
    first += args.warmup
    walls, cpus = [], []
    fleet0 = fleet.cpu()
    for _ in range(args.rounds):
        cpu0 = cpu_seconds(hub)
        walls.append(drive(client, first, args.requests, args.in_flight))
        cpus.append(cpu_seconds(hub) - cpu0)
        first += args.requests
    sample = Sample(fleet.size, len(fleet.hosts), walls, cpus, fleet.cpu() - fleet0, idle)
    logger.info("%5d workers: %.0f req/s, hub %.1f us/request", sample.workers,
                args.requests * len(walls) / sum(walls), sum(cpus) / args.requests / len(cpus)
                * 1e6)
    return sample


def summarize(samples: Sequence[Sample], per_round: int) -> Row:
    """One row from every pass's sample at one fleet size."""
    walls = [w for s in samples for w in s.walls]
    cpus = [c for s in samples for c in s.cpus]
    idles = [s.idle_share for s in samples if s.idle_share is not None]
    total = per_round * len(walls)
    return Row(
        workers=samples[0].workers, processes=max(s.processes for s in samples),
        requests=total, throughput=statistics.median(per_round / w for w in walls),
        cpu_us=sum(cpus) / total * 1e6,
        round_cpu_us=[c / per_round * 1e6 for c in cpus],
        round_throughput=[per_round / w for w in walls],
        fleet_cpu_us=sum(s.fleet_cpu for s in samples) / total * 1e6,
        busy_share=sum(cpus) / sum(walls),
        idle_share=statistics.fmean(idles) if idles else None,
    )


def pass_order(counts: Sequence[int], passes: int) -> list[int]:
    """Up, then down, then up...: a drift in the machine's load hits every size alike."""
    order: list[int] = []
    for i in range(passes):
        order += counts if i % 2 == 0 else counts[::-1]
    return order


def sweep(args: argparse.Namespace, tmp: Path, hub_stats: dict[str, Any]) -> list[Row]:
    """One hub and a fleet resized through the counts; one ``Row`` per size."""
    from dlhub_hpc import Client
    from dlhub_hpc.examples import example_dir

    samples: dict[int, list[Sample]] = {count: [] for count in args.counts}
    with (
        hub_process(tmp / "hub", hub_overrides(args)) as (proc, client_address, worker_addr),
        Fleet(worker_addr, args.per_host, args.heartbeat_interval) as fleet,
        Client(client_address, timeout=60.0) as client,
    ):
        client.publish(example_dir("noop"))
        hub = psutil.Process(proc.pid)
        sent = 0
        for count in pass_order(args.counts, args.passes):
            fleet.resize(count)
            wait_ready(client, fleet)
            samples[count].append(measure(client, hub, fleet, args, sent))
            sent += args.warmup + args.requests * args.rounds
        hub_stats.update(client.status().get("stats", {}))
    return [summarize(samples[count], args.requests) for count in args.counts]
