"""What Prometheus metrics cost a request: no-op p50 through a hub with metrics off and on.

    python benchmarks/metrics_cost.py [--requests N] [--rounds R] [--sizes 8]

Two hub processes (CurveZMQ on, as deployed), each with ``demo/noop`` and one warm worker,
one without ``metrics_port`` and one with it (the loop records every request; a scraper
reads ``/metrics`` every second meanwhile, as Prometheus would). They are timed in
alternating rounds of ``Client.run`` (``benchmarks/latency.py``'s ``measure``), so both see
the same background load. First, the broker's state machine alone is timed per request
with and without the recorder (no sockets: the loop's own cost, free of network noise).
Figures go to the terminal and to ``benchmarks/results/metrics_cost.json``; the targets:
metrics on costs at most ``COST_TARGET`` (5 %) of the p50 with metrics off, and at most
``STATE_TARGET`` (15 %) of the state's own time per request.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import child_process, hub_main, reap, save_json, start_run, stop_process
from benchmarks.common import wait_for_hub as wait_hub
from benchmarks.latency import Runner, make_cases, measure
from benchmarks.targets import Targets
from dlhub_hpc.metrics.reading import read_token

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results" / "metrics_cost.json"
OFF, ON = "hub metrics off", "hub metrics on"
COST_TARGET = 1.05  # p50 with metrics / p50 without
STATE_TARGET = 1.15  # the state's time per request with the recorder / without


def state_cost(n: int, metrics: bool) -> float:
    """Seconds per request for the broker's state alone (no sockets): arrival, dispatch to
    an idle worker, result and reply, with or without the metrics recorder."""
    import time

    from dlhub_hpc.broker.state import BrokerState, FromClient, FromWorker, ServableInfo
    from dlhub_hpc.metrics import BrokerMetrics
    from dlhub_hpc.protocol import BatchResult, Hello, Ready, Request
    from dlhub_hpc.servable.types import ArgType

    info = ServableInfo("demo/noop", 1, "digest", {"run": ArgType(type="any")})
    state = BrokerState(lambda name, version: info)
    state.metrics = BrokerMetrics() if metrics else None
    state.handle(FromWorker(b"w", Hello("w", "demo/noop", None, "node", 1, None)), 0.0)
    state.handle(FromWorker(b"w", Ready("w")), 0.0)
    clock = time.perf_counter
    started = clock()
    for i in range(n):
        now = i * 1e-4
        state.handle(FromClient(b"c", Request(str(i), "demo/noop", None, "", [i], None, False)),
                     now)
        state.handle(FromWorker(b"w", BatchResult(i + 1, [[True, [i]]], 1e-5)), now + 5e-5)
    return (clock() - started) / n


@contextlib.contextmanager
def scraping(url: str, token: str | None, period: float = 1.0) -> Iterator[list[int]]:
    """Read ``url`` (with the hub's metrics ``token``) every ``period`` seconds in a
    thread; yields the list of page sizes."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    pages: list[int] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(period):
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                        timeout=5) as reply:
                pages.append(len(reply.read()))

    thread = threading.Thread(target=loop, name="scraper", daemon=True)
    thread.start()
    try:
        yield pages
    finally:
        stop.set()
        thread.join(timeout=10)


@contextlib.contextmanager
def hub(home: Path, metrics: bool) -> Iterator[Runner]:
    """A hub process serving ``demo/noop`` with one worker; with ``metrics`` it serves
    /metrics on a free port and is scraped each second."""
    from dlhub_hpc import Client
    from dlhub_hpc.examples import example_dir

    overrides: dict[str, Any] = {"metrics_port": 0} if metrics else {}
    pids: list[int] = []
    with child_process(hub_main, str(home), overrides, name="hub") as proc:
        try:
            with Client(wait_hub(home, proc)) as client, contextlib.ExitStack() as stack:
                client.publish(example_dir("noop"))
                client.start_workers("demo/noop", 1)
                client.wait_for_workers("demo/noop", 1)
                pids = [w["pid"] for w in client.status()["workers"]]
                if metrics:
                    hub_file = json.loads((home / "hub.json").read_text())
                    stack.enter_context(scraping(hub_file["metrics_url"],
                                                 read_token(hub_file["metrics_token_file"])))
                yield lambda value: client.run("demo/noop", value, cache=False)
        finally:
            stop_process(proc)
            reap(pids)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--sizes", default="8")
    parser.add_argument("--state-requests", type=int, default=5000,
                        help="requests through the broker state alone, per run (40 runs)")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start_run(args.verbose, logger)
    state: dict[str, float] = {}
    for i in range(40):  # short alternating runs, the best of each: least disturbed by load
        key = "on" if i % 2 else "off"
        state[key] = min(state.get(key, float("inf")), state_cost(args.state_requests, i % 2 == 1))
    print(f"broker state alone: {state['off'] * 1e6:.2f} us/request with metrics off, "
          f"{state['on'] * 1e6:.2f} us on (+{(state['on'] - state['off']) * 1e6:.2f} us)")
    case = min(make_cases(args.sizes)[:-1], key=lambda c: c.size)  # the no-op payload
    with tempfile.TemporaryDirectory(prefix="dlhub-metrics-") as tmp, \
            hub(Path(tmp) / "off", False) as off, hub(Path(tmp) / "on", True) as on:
        rows = measure({OFF: off, ON: on}, case, args.requests, args.warmup, args.rounds)
    by = {r.path: r for r in rows}
    ratio = by[ON].p50 / by[OFF].p50
    for r in rows:
        print(f"{r.path:18} {r.payload:12} p50 {r.p50:.3f} ms  p99 {r.p99:.3f} ms  "
              f"rounds {', '.join(f'{x:.3f}' for x in r.round_p50s)}")
    print(f"metrics on / off p50: {ratio:.3f}x (+{(by[ON].p50 - by[OFF].p50) * 1000:.1f} us)")
    save_json(args.json, {"state_us_per_request": {k: v * 1e6 for k, v in state.items()},
                          "payload": case.label, "requests": args.requests,
                          "rounds": args.rounds, "ratio_p50": ratio,
                          "rows": [{"path": r.path, "p50_ms": r.p50, "p99_ms": r.p99,
                                    "round_p50s_ms": r.round_p50s} for r in rows]})
    targets = Targets()
    targets.check("no-op p50: metrics on / off", ratio, COST_TARGET, unit="x")
    targets.check("broker state per request: metrics on / off", state["on"] / state["off"],
                  STATE_TARGET, unit="x")
    targets.report()
    return targets.exit_code()


if __name__ == "__main__":
    sys.exit(main())
