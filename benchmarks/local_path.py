"""A 256 MiB float64 echo through the hub's same-node fast path, against the floor.

    python benchmarks/local_path.py [--mib 256] [--rounds 5] [--floor ipc|tcp] [--curve-rounds 1]

The fast path and the floor run in one run, in alternating rounds, on the same array:

* hub, fast path: ``Client.run("demo/noop", x)`` through a hub process with CurveZMQ on
  (its default) and one warm worker; caller, hub and worker share this node, so the array
  goes as a sealed memfd handed over the hub's AF_UNIX socket (issue 17, "same-node fast
  path"); the reply comes back the same way.
* floor: one bare pyzmq round trip of the same bytes to an echo process (a ROUTER that
  sends each message back), no encryption, over ``--floor`` (ipc:// by default, the
  cheaper of the two): the memcpy-bound cost of moving 256 MiB there and back.
* hub, CurveZMQ path (``--curve-rounds``, 0 to skip): the same echo with
  ``client.local_fast_path = False``, so the array crosses every hop encrypted; measured
  after the others, shown for context, with no target.

Each round ends by reading one float of every 4 KiB page of the answer, on every row, so
a lazily mapped answer pays for its page faults as the floor's copy did. The first answer
of each row is checked bit-exact.

Target (exit status 1 if missed): hub fast path p50 / floor p50 <= 3.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    CTX,
    child_process,
    hub_main,
    percentile,
    quiet_child,
    start_run,
    wait_for_hub,
)
from benchmarks.targets import Targets
from dlhub_hpc import Client
from dlhub_hpc.errors import DlhubHpcError

logger = logging.getLogger(__name__)

EXAMPLES = Path(__file__).resolve().parents[1] / "dlhub_hpc" / "examples"
TARGET_RATIO = 3.0
MIB = 2**20


def echo_server(address: str, ready: Any) -> None:
    """The floor's far end: a ROUTER that sends every message straight back."""
    quiet_child()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(address)
    ready.send(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    while True:
        sock.send_multipart(sock.recv_multipart(copy=False), copy=False)


def touch(y: np.ndarray) -> float:
    """Read one float of every 4 KiB page of ``y`` (what a caller that uses it pays)."""
    return float(y.reshape(-1).view(np.float64)[::512].sum())


def timed(call: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    y = call()
    touch(y)
    return time.perf_counter() - started, y


def floor_call(sock: zmq.Socket[bytes], x: np.ndarray) -> Callable[[], np.ndarray]:
    def call() -> np.ndarray:
        sock.send(x, copy=False)
        frame = sock.recv(copy=False)
        return np.frombuffer(frame.buffer, dtype=x.dtype).reshape(x.shape)
    return call


def hub_call(client: Client, x: np.ndarray) -> Callable[[], np.ndarray]:
    def call() -> np.ndarray:
        y: np.ndarray = client.run("demo/noop", x, cache=False, timeout=600)
        return y
    return call


def measure(rows: dict[str, Callable[[], np.ndarray]], rounds: dict[str, int],
            x: np.ndarray) -> dict[str, list[float]]:
    """Alternating rounds of each row; the first answer of each is checked bit-exact."""
    times: dict[str, list[float]] = {name: [] for name in rows}
    for i in range(max(rounds.values())):
        for name, call in rows.items():
            if i >= rounds[name]:
                continue
            seconds, y = timed(call)
            if i == 0 and y.tobytes() != x.tobytes():
                raise AssertionError(f"{name}: the echo is not bit-exact")
            del y
            times[name].append(seconds)
            logger.info("%s round %d: %.3f s", name, i, seconds)
    return times


def run(args: argparse.Namespace) -> int:
    x = np.random.default_rng(0).standard_normal(args.mib * MIB // 8)
    home = Path(tempfile.mkdtemp(prefix="dlhub-local-"))
    floor_address = ("ipc://" + str(home / "floor.sock") if args.floor == "ipc"
                     else "tcp://127.0.0.1:0")
    ours, theirs = CTX.Pipe()
    with child_process(hub_main, str(home / "hub"), {"memo_max_bytes": 0}, name="hub") as hub, \
            child_process(echo_server, floor_address, theirs, name="floor"):
        address = wait_for_hub(home / "hub", hub)
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(ours.recv())
        with Client(address, timeout=600) as fast, Client(address, timeout=600) as curve:
            curve.local_fast_path = False
            fast.publish(EXAMPLES / "noop")
            fast.start_workers("demo/noop", 1)
            fast.wait_for_workers("demo/noop", 1, timeout=120)
            hub_call(fast, x[:MIB])()  # opens the client's link; warms the worker
            rows = {"hub, fast path": hub_call(fast, x), "floor": floor_call(sock, x)}
            times = measure(rows, dict.fromkeys(rows, args.rounds), x)
            stats = fast.status()["stats"]
            if args.curve_rounds:  # context only: a failure there is reported, not raised
                try:
                    times.update(measure({"hub, CurveZMQ path": hub_call(curve, x)},
                                         {"hub, CurveZMQ path": args.curve_rounds}, x))
                except DlhubHpcError as exc:
                    print(f"hub, CurveZMQ path: not measured ({type(exc).__name__}: "
                          f"{exc.message})")
        sock.close()
        ctx.term()
    return report(times, stats, args)


def report(times: dict[str, list[float]], stats: dict[str, Any],
           args: argparse.Namespace) -> int:
    floor_name = f"floor: bare pyzmq {args.floor}://, no encryption"
    print(f"{args.mib} MiB float64 echo, {args.rounds} alternating rounds")
    print(f"{'row':<44} {'n':>3} {'p50 s':>8} {'min s':>8} {'GiB/s':>7}")
    for name, values in times.items():
        label = floor_name if name == "floor" else name + (
            " (CurveZMQ on)" if name.startswith("hub") else "")
        p50 = percentile(values, 50)
        rate = 2 * args.mib / 1024 / p50  # there and back
        print(f"{label:<44} {len(values):>3} {p50:>8.3f} {min(values):>8.3f} {rate:>7.2f}")
    print(f"hub counters: local_path_in {stats.get('local_path_in', 0)}, "
          f"local_path_out {stats.get('local_path_out', 0)}")
    ratio = percentile(times["hub, fast path"], 50) / percentile(times["floor"], 50)
    targets = Targets()
    targets.check("hub fast path p50 / bare pyzmq round trip p50", ratio, TARGET_RATIO,
                  unit="x")
    targets.report()
    return targets.exit_code()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--curve-rounds", type=int, default=1)
    parser.add_argument("--floor", choices=("ipc", "tcp"), default="ipc")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    start_run(args.verbose, logger)
    with contextlib.suppress(KeyboardInterrupt):
        return run(args)
    return 130


if __name__ == "__main__":
    sys.exit(main())
