"""Throughput at 32 in flight: the hub's no-op against a batching two-hop relay floor.

    python benchmarks/throughput.py [--seconds 4] [--rounds 3] [--json OUT.json]

Both sides have the same shape and settings: a client in this process keeping
``--in-flight`` (32) requests outstanding, a broker process, 2 worker processes that echo,
CurveZMQ on both of the broker's sockets, batches of up to 32.

* ``floor +curve, batching``: plain pyzmq. A DEALER client; a relay process (two CurveZMQ
  ROUTERs, one ``zmq.Poller`` loop) that queues requests and hands a free worker all that
  is queued (up to 32) as one message; a DEALER worker per process that echoes each item of
  the batch in one reply. The least any batching broker of this shape can cost.
* ``dlhub-hpc +curve, map``: ``Client.map("demo/noop", inputs, in_flight=32)`` through a
  hub process with 2 workers (``max_batch_size`` 32; the hub's default delay): like the
  floor's client, one thread keeping the window full on one socket. A request's latency
  runs from when ``map`` takes its input to when it yields its output.
* ``dlhub-hpc +curve, submit``: the same hub through ``Client.submit`` (a future per
  request, the client's I/O thread between caller and socket), 32 futures outstanding.

Windows alternate (``--rounds`` of ``--seconds`` each) so both see the same load. Target:
the hub's requests/s through ``map`` at least ``TARGET`` x the floor's. Results go to
``benchmarks/results/throughput.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import zmq

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._floor import (
    READY,
    Keys,
    curve_client,
    curve_keys,
    relay_process,
    relay_sockets,
    worker_socket,
)
from benchmarks.common import child_process, quiet_child, save_json, start_run
from benchmarks.targets import Targets

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results" / "throughput.json"
TARGET = 0.8  # hub req/s / floor req/s, at least
WORKERS = 2
MAX_BATCH = 32
FLOOR, HUB, SUBMIT = "floor +curve, batching", "dlhub-hpc +curve, map", "dlhub-hpc +curve, submit"
PAYLOAD = b"noop-payload"


# ---- the floor: a batching relay --------------------------------------------------------

def relay_main(addresses: Connection, stop: MpEvent, keys: Keys) -> None:
    """Queue client requests; a free worker gets everything queued, up to MAX_BATCH."""
    quiet_child()
    with relay_sockets(addresses, keys) as (front, back, poller):
        queue: deque[list[bytes]] = deque()
        free: deque[bytes] = deque()
        while not stop.is_set():
            ready = dict(poller.poll(100))
            while back in ready:
                try:
                    worker, *frames = back.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if frames != [READY]:  # [client, request id, payload] per item
                    for i in range(0, len(frames), 3):
                        front.send_multipart(frames[i:i + 3])
                free.append(worker)
            while front in ready:
                try:
                    queue.append(front.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
            while free and queue:
                batch = [queue.popleft() for _ in range(min(MAX_BATCH, len(queue)))]
                back.send_multipart([free.popleft(), *(f for item in batch for f in item)])


def worker_main(address: str, stop: MpEvent, keys: Keys) -> None:
    """Echo every item of a batch, in one reply."""
    quiet_child()
    with worker_socket(address, keys) as sock:
        while not stop.is_set():
            if sock.poll(100):
                sock.send_multipart(sock.recv_multipart())


class FloorDriver:
    """A DEALER in this process that keeps ``in_flight`` requests outstanding."""

    def __init__(self, address: str, keys: Keys) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        curve_client(self.sock, keys)
        self.sock.connect(address)

    def window(self, seconds: float, in_flight: int) -> dict[str, float]:
        clock = time.perf_counter
        sent: dict[bytes, float] = {}
        latencies: list[float] = []
        n = 0
        start = clock()
        while True:
            now = clock()
            while len(sent) < in_flight and now - start < seconds:
                key = str(n).encode()
                n += 1
                sent[key] = now
                self.sock.send_multipart([key, PAYLOAD])
            if not sent:
                break
            if not self.sock.poll(30_000):
                raise RuntimeError("the floor relay stopped answering")
            key, _ = self.sock.recv_multipart()
            latencies.append(clock() - sent.pop(key))
        return {"requests_per_s": len(latencies) / (clock() - start),
                "p50_ms": statistics.median(latencies) * 1000}

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


@contextlib.contextmanager
def floor_path() -> Iterator[Callable[[float, int], dict[str, float]]]:
    keys = curve_keys()
    with relay_process(relay_main, keys) as (front, back, stop), \
            contextlib.ExitStack() as stack:
        for i in range(WORKERS):
            stack.enter_context(child_process(worker_main, back, stop, keys,
                                              name=f"floor-worker-{i}"))
        driver = FloorDriver(front, keys)
        try:
            yield driver.window
        finally:
            driver.close()


# ---- the hub ----------------------------------------------------------------------------

Window = Callable[[float, int], dict[str, float]]


@contextlib.contextmanager
def hub_paths(tmp: Path) -> Iterator[tuple[Window, Window]]:
    """The hub's two windows: through ``Client.map`` and through ``Client.submit``."""
    from benchmarks.paper_suite import drive, drive_map, hub_session
    from dlhub_hpc.examples import example_dir

    overrides = {"batching": {"demo/noop": {"max_batch_size": MAX_BATCH}}}
    inputs = [PAYLOAD + str(i).encode() for i in range(4096)]
    with hub_session(tmp / "hub", overrides) as session:
        client = session.client
        client.publish(example_dir("noop"))
        session.start_workers("demo/noop", WORKERS, WORKERS)

        def mapped(seconds: float, in_flight: int) -> dict[str, float]:
            result = drive_map(client, "demo/noop", inputs, seconds, in_flight)
            return {"requests_per_s": result["requests_per_s"], "p50_ms": result["p50"]}

        def submitted(seconds: float, in_flight: int) -> dict[str, float]:
            result = drive(lambda x: client.submit("demo/noop", x, cache=False), inputs,
                           seconds, in_flight)
            return {"requests_per_s": result["requests_per_s"], "p50_ms": result["p50"]}

        yield mapped, submitted


# ---- main ---------------------------------------------------------------------------------

def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    out: dict[str, list[dict[str, float]]] = {FLOOR: [], HUB: [], SUBMIT: []}
    with floor_path() as floor, hub_paths(tmp) as (mapped, submitted):
        sides = {FLOOR: floor, HUB: mapped, SUBMIT: submitted}
        for window in sides.values():
            window(args.warmup, args.in_flight)
        for _ in range(args.rounds):
            for name, window in sides.items():
                out[name].append(window(args.seconds, args.in_flight))
    result: dict[str, Any] = {
        name: {"requests_per_s": statistics.median(r["requests_per_s"] for r in runs),
               "round_requests_per_s": [r["requests_per_s"] for r in runs],
               "p50_ms": statistics.median(r["p50_ms"] for r in runs)}
        for name, runs in out.items()}
    result["ratio"] = result[HUB]["requests_per_s"] / result[FLOOR]["requests_per_s"]
    result["submit_ratio"] = result[SUBMIT]["requests_per_s"] / result[FLOOR]["requests_per_s"]
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="each timed window")
    parser.add_argument("--warmup", type=float, default=2.0, help="untimed window first")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    start_run(args.verbose, logger)
    with tempfile.TemporaryDirectory(prefix="dlhub-throughput-") as tmp:
        result = measure(args, Path(tmp))
    for name in (FLOOR, HUB, SUBMIT):
        print(f"{name:26} {result[name]['requests_per_s']:8.0f} req/s  "
              f"p50 {result[name]['p50_ms']:.2f} ms")
    print(f"map / floor = {result['ratio']:.2f}x; submit / floor = "
          f"{result['submit_ratio']:.2f}x")
    save_json(args.json, {"benchmark": "throughput", "in_flight": args.in_flight,
                          "workers": WORKERS, "max_batch": MAX_BATCH,
                          "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                          "results": result, "target_min": TARGET})
    targets = Targets()
    targets.check(f"{args.in_flight} in flight: {HUB} req/s / {FLOOR} req/s", result["ratio"],
                  TARGET, better="higher", unit="x")
    targets.report()
    return targets.exit_code()


if __name__ == "__main__":
    sys.exit(main())
