"""Round-trip latency of one request: bare pyzmq floor vs dlhub-hpc vs Parsl HTEX.

    python benchmarks/latency.py [--requests N] [--sizes 8,1024,65536] [--plot out.png]

Every path has the same shape: a client (this process) -> a broker process -> a worker
process that echoes -> back, timed one request at a time in the client. Each path runs
with CurveZMQ on both sockets (``+curve``) and without (``plain``), and every ratio is
taken against the floor with the same setting:

* ``floor``: plain pyzmq. DEALER client -> relay process (two ROUTERs, one ``zmq.Poller``
  loop forwarding frames) -> DEALER worker that decodes and re-encodes the payload; with
  ``+curve`` both ROUTERs are CurveZMQ servers and client and worker CurveZMQ clients.
* ``dlhub-hpc``: ``Client.run("demo/noop", payload)`` through a hub process
  (``Hub.serve_forever``) and one worker started by ``Client.start_workers``; ``plain`` is
  a hub with ``HubConfig(benchmark_without_curve=True)`` (loopback only).
* ``parsl-htex``: ``app(payload).result()`` on Parsl's HighThroughputExecutor
  (interchange process + a one-worker pool) at Parsl's defaults (``poll_period`` 10 ms,
  ``encrypted=False``), smallest payload only; ``--htex-tuned-poll-period`` adds a
  labelled tuned row.

The floors and hubs run side by side and are timed in alternating rounds, so that all
see the same background load; HTEX runs afterwards, alone. Figures go to the terminal (a
rich table) and to ``benchmarks/results/latency.json``. Targets (``+curve`` on both
sides): no-op (smallest payload) and 1 MiB array p50 at most ``HUB_TARGET`` x the floor's;
the exit status is 1 when one is missed (``TARGET MISSED: ...``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
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
from benchmarks.common import (
    child_process,
    htex_path,
    hub_main,
    pyplot,
    quiet_child,
    reap,
    save_json,
    start_run,
    stop_process,
    summary,
    wait_for_hub,
)
from benchmarks.targets import Targets

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results" / "latency.json"
ARRAY_ITEMS = 131_072  # float64 -> 1 MiB
ARRAY_LABEL = "ndarray f64 1 MiB"
HUB_TARGET = 1.5  # hub p50 / floor p50 should be at most this
FLOOR, HUB, HTEX = "floor", "dlhub-hpc", "parsl-htex"
CURVE, PLAIN = "+curve", "plain"
FLOOR_CURVE, HUB_CURVE = f"{FLOOR} {CURVE}", f"{HUB} {CURVE}"
FLOOR_PLAIN, HUB_PLAIN = f"{FLOOR} {PLAIN}", f"{HUB} {PLAIN}"
HTEX_DEFAULTS = f"{HTEX} defaults"  # poll_period 10 ms, encrypted=False: Parsl's own
PARSL_POLL_PERIOD = 10  # ms, Parsl's default

Runner = Callable[[Any], Any]  # one round trip: payload in, echoed payload out


# ---- payloads and figures -------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    label: str
    size: int  # bytes on the wire, payload only
    value: Any


@dataclass
class Row:
    """The latency figures of one path at one payload (milliseconds)."""

    path: str
    payload: str
    size: int
    n: int
    p50: float
    p99: float
    mean: float
    round_p50s: list[float] = field(default_factory=list)
    ratio: float | None = None  # p50 / the matching floor's p50 at the same payload
    floor: str = ""  # that floor: the same encryption setting
    samples: list[float] = field(default_factory=list, repr=False)


def make_cases(sizes: Sequence[int]) -> list[Case]:
    """One bytes payload per size, then a 1 MiB float64 array."""
    rng = np.random.default_rng(0)
    cases = [Case(_label(size), size, rng.bytes(size)) for size in sizes]
    array = rng.random(ARRAY_ITEMS)
    cases.append(Case(ARRAY_LABEL, array.nbytes, array))
    return cases


def _label(size: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"bytes {size // scale} {unit}"
    return f"bytes {size} B"


def summarize(path: str, case: Case, rounds: Sequence[Sequence[float]]) -> Row:
    ms = sorted(s * 1000 for chunk in rounds for s in chunk)
    stats = summary(ms)
    return Row(path, case.label, case.size, len(ms), stats["p50"], stats["p99"],
               stats["mean"], [statistics.median(c) * 1000 for c in rounds if c],
               samples=ms)


def time_calls(call: Callable[[], Any], n: int, warmup: int) -> list[float]:
    """Run ``call`` ``warmup`` times untimed, then ``n`` times; return each duration (s)."""
    for _ in range(warmup):
        call()
    samples = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        call()
        samples.append(clock() - t0)
    return samples


def check_echo(path: str, run: Runner, case: Case) -> None:
    out = run(case.value)
    if isinstance(case.value, np.ndarray):
        ok = isinstance(out, np.ndarray) and bool(np.array_equal(out, case.value))
    else:
        ok = out == case.value
    if not ok:
        raise RuntimeError(f"{path} did not echo the {case.label} payload")


def measure(runners: dict[str, Runner], case: Case, n: int, warmup: int,
            rounds: int) -> list[Row]:
    """Time every runner on ``case``: warm each up, then alternate ``rounds`` chunks of calls."""
    calls = {name: functools.partial(run, case.value) for name, run in runners.items()}
    for name, run in runners.items():
        check_echo(name, run, case)
        time_calls(calls[name], 0, warmup)
    chunks: dict[str, list[list[float]]] = {name: [] for name in runners}
    rewarm = min(20, warmup)  # the other path ran last: refill caches first
    for i in range(rounds):
        count = n // rounds + (1 if i < n % rounds else 0)
        for name, call in calls.items():
            chunks[name].append(time_calls(call, count, rewarm))
    rows = [summarize(name, case, chunks[name]) for name in runners]
    for row in rows:
        logger.info("%-10s %-18s p50 %.3f ms", row.path, row.payload, row.p50)
    return rows


# ---- floor: bare pyzmq relay ----------------------------------------------------------

def floor_encode(value: Any) -> list[Any]:
    """bytes -> one msgpack frame; an ndarray -> a msgpack header and its raw buffer."""
    if isinstance(value, np.ndarray):
        value = np.ascontiguousarray(value)
        return [msgpack.packb([value.dtype.str, list(value.shape)]), value.data]
    return [msgpack.packb(value, use_bin_type=True)]


def floor_decode(frames: Sequence[Any]) -> Any:
    if len(frames) == 2:
        dtype, shape = msgpack.unpackb(frames[0])
        return np.frombuffer(frames[1], dtype=np.dtype(dtype)).reshape(shape)
    return msgpack.unpackb(frames[0], raw=False)


def relay_main(addresses: Connection, stop: MpEvent, keys: Keys | None) -> None:
    """The floor's broker: ROUTER for clients, ROUTER for the worker, one poll loop."""
    quiet_child()
    with relay_sockets(addresses, keys) as (front, back, poller):
        worker = b""
        while not stop.is_set():
            ready = dict(poller.poll(100))
            if back in ready:
                ident, *rest = back.recv_multipart(copy=False)
                if len(rest) == 1 and rest[0].bytes == READY:
                    worker = ident.bytes
                else:  # [client identity, *payload frames]
                    front.send_multipart(rest, copy=False)
            if front in ready and worker:
                back.send_multipart([worker, *front.recv_multipart(copy=False)], copy=False)


def echo_worker_main(address: str, stop: MpEvent, keys: Keys | None) -> None:
    """The floor's worker: decode the payload, re-encode it, send it back."""
    quiet_child()
    with worker_socket(address, keys) as sock:
        while not stop.is_set():
            if not sock.poll(100):
                continue
            client, *frames = sock.recv_multipart(copy=False)
            value = floor_decode([f.buffer for f in frames])
            sock.send_multipart([client, *floor_encode(value)], copy=False)


class FloorClient:
    """A DEALER in this process, one request at a time."""

    def __init__(self, address: str, keys: Keys | None, timeout: float = 30.0) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        curve_client(self._sock, keys)
        # Block in short slices: a signal that lands on another thread (Ctrl-C) is then
        # acted on within 100 ms, and a dead relay fails the run instead of hanging it.
        self._sock.setsockopt(zmq.RCVTIMEO, 100)
        self._slices = max(1, int(timeout * 10))
        self._sock.connect(address)

    def run(self, value: Any) -> Any:
        self._sock.send_multipart(floor_encode(value), copy=False)
        for _ in range(self._slices):
            try:
                frames = self._sock.recv_multipart(copy=False)
            except zmq.Again:
                continue
            return floor_decode([f.buffer for f in frames])
        raise RuntimeError("no reply from the floor relay; did its processes die?")

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()


@contextlib.contextmanager
def floor_path(curve: bool) -> Iterator[Runner]:
    """Relay and echo worker processes; yields a round trip through them. ``curve``:
    CurveZMQ on both of the relay's sockets, as the hub has."""
    keys = curve_keys() if curve else None
    with relay_process(relay_main, keys) as (front, back, stop), \
            child_process(echo_worker_main, back, stop, keys, name="floor-worker"):
        client = FloorClient(front, keys)
        try:
            yield client.run
        finally:
            client.close()


# ---- dlhub-hpc: hub process + one warm worker ------------------------------------------

@contextlib.contextmanager
def hub_path(home: Path, stats: dict[str, Any], curve: bool) -> Iterator[Runner]:
    """A hub process with ``demo/noop`` published and one warm worker; yields ``Client.run``.
    ``curve`` False: a hub with ``benchmark_without_curve`` (loopback, no CurveZMQ).

    On a normal exit ``stats`` gets the hub's counters, read before it stops.
    """
    from dlhub_hpc import Client
    from dlhub_hpc.examples import example_dir

    worker_pids: list[int] = []
    overrides = {} if curve else {"benchmark_without_curve": True}
    from dlhub_hpc import HubConfig
    if "local_fast_path" in HubConfig.model_fields:
        # Like the floor, every byte goes through the sockets (and CurveZMQ when on); the
        # same-node path is measured against its own floor (a memcpy-bound round trip).
        overrides["local_fast_path"] = False
    with child_process(hub_main, str(home), overrides, name="hub") as proc:
        try:
            with Client(wait_for_hub(home, proc)) as client:
                client.publish(example_dir("noop"))
                client.start_workers("demo/noop", 1)
                client.wait_for_workers("demo/noop", 1)
                worker_pids = [w["pid"] for w in client.status()["workers"]]
                yield lambda value: client.run("demo/noop", value)
                stats.update(client.status().get("stats", {}))
        finally:
            stop_process(proc)  # SIGTERM: the hub cancels its pilot blocks, then exits
            reap(worker_pids)
    shortcut = stats.get("memo_hits", 0) + stats.get("single_flight_joins", 0)
    if shortcut:
        logger.warning("the hub answered %d requests without its worker (memo cache or "
                       "single flight): the dlhub-hpc rows understate the full path", shortcut)


# ---- report ---------------------------------------------------------------------------

def matching_floor(path: str) -> str | None:
    """The floor a path is compared with: CurveZMQ on both sides or off on both."""
    if path.startswith(FLOOR):
        return None
    return FLOOR_CURVE if path.endswith(CURVE) else FLOOR_PLAIN  # HTEX: encrypted=False


def add_ratios(rows: list[Row]) -> None:
    p50 = {(r.path, r.payload): r.p50 for r in rows}
    for row in rows:
        floor = matching_floor(row.path)
        if floor is not None and (floor, row.payload) in p50:
            row.floor, row.ratio = floor, row.p50 / p50[(floor, row.payload)]


def headline(rows: list[Row], small: str) -> dict[str, float | None]:
    """The ratios the targets and the summary use, each hub against its matching floor."""
    def ratio(path: str, payload: str) -> float | None:
        return next((r.ratio for r in rows if r.path == path and r.payload == payload), None)

    htex = [r for r in rows if r.path.startswith(HTEX) and r.payload == small]
    hub = next((r.p50 for r in rows if r.path == HUB_PLAIN and r.payload == small), None)
    return {
        "hub_curve_p50_over_floor_curve_p50": ratio(HUB_CURVE, small),
        "hub_plain_p50_over_floor_plain_p50": ratio(HUB_PLAIN, small),
        "hub_curve_array_p50_over_floor_curve_p50": ratio(HUB_CURVE, ARRAY_LABEL),
        "hub_plain_array_p50_over_floor_plain_p50": ratio(HUB_PLAIN, ARRAY_LABEL),
        **{f"{r.path} p50 / {HUB_PLAIN} p50": r.p50 / hub for r in htex if hub},
    }


def print_table(rows: list[Row], ratios: dict[str, float | None], small: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Round-trip latency, sequential requests ({os.cpu_count()} CPUs)")
    for name in ("path", "payload", "n", "p50 ms", "p99 ms", "mean ms", "p50 / floor",
                 "floor"):
        table.add_column(name, justify="left" if name in ("path", "payload", "floor")
                         else "right", no_wrap=True)
    for r in rows:
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}x"
        table.add_row(r.path, r.payload, str(r.n), f"{r.p50:.3f}", f"{r.p99:.3f}",
                      f"{r.mean:.3f}", ratio, r.floor)
    console = Console()
    if not console.is_terminal:  # piped or captured: rich would assume 80 columns
        console = Console(width=120)
    console.print(table)
    for name, value in ratios.items():
        console.print(f"{name} = {_fmt(value)} at {small if 'array' not in name else ARRAY_LABEL}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def write_json(rows: list[Row], ratios: dict[str, float | None], hub_stats: dict[str, Any],
               args: argparse.Namespace, path: Path, small: str) -> None:
    import parsl

    data = {
        "benchmark": "latency",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": sys.version.split()[0],
                    "load_average": list(os.getloadavg())},
        "versions": {"pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(),
                     "msgpack": ".".join(map(str, msgpack.version)),
                     "numpy": np.__version__, "parsl": parsl.__version__},
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "plot")},
        "ratios": ratios,
        "targets": {"hub_curve_p50_over_floor_curve_p50_max": HUB_TARGET,
                    "hub_curve_array_p50_over_floor_curve_p50_max": HUB_TARGET},
        "small_payload": small,
        "rows": [{k: v for k, v in asdict(r).items() if k != "samples"} for r in rows],
        "hub_stats": hub_stats,
    }
    save_json(path, data)


def plot(rows: list[Row], path: Path) -> None:
    """p50 bars per payload (log scale) and latency CDFs at the smallest payload."""
    plt = pyplot()
    if plt is None:
        return
    from matplotlib.ticker import FormatStrFormatter
    paths = list(dict.fromkeys(r.path for r in rows))
    labels = list(dict.fromkeys(r.payload for r in rows))
    fig, (bars, cdf) = plt.subplots(1, 2, figsize=(13, 5))
    width = 0.8 / len(paths)
    for i, name in enumerate(paths):
        p50 = {r.payload: r.p50 for r in rows if r.path == name}
        xs = [j + i * width for j, label in enumerate(labels) if label in p50]
        bars.bar(xs, [p50[label] for label in labels if label in p50], width, label=name)
    bars.set_xticks([j + width * (len(paths) - 1) / 2 for j in range(len(labels))], labels,
                    rotation=15)
    bars.set_yscale("log")
    bars.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    bars.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    bars.set_ylabel("p50 round trip (ms)")
    bars.legend()
    for row in (r for r in rows if r.payload == labels[0]):
        ys = [(i + 1) / len(row.samples) for i in range(len(row.samples))]
        cdf.plot(row.samples, ys, label=row.path)
    cdf.set_xscale("log")
    cdf.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    cdf.set_xlabel(f"round trip (ms), {labels[0]}")
    cdf.set_ylabel("fraction of requests")
    cdf.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- main -----------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000,
                        help="timed round trips per payload, floor and hub (default 2000)")
    parser.add_argument("--htex-requests", type=int, default=300,
                        help="timed round trips for Parsl HTEX (default 300)")
    parser.add_argument("--warmup", type=int, default=200,
                        help="untimed round trips per path and payload first (default 200)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternating floor/hub rounds the requests are split in (default 5)")
    parser.add_argument("--sizes", default="8,1024,65536",
                        help="bytes payload sizes, comma-separated (default 8,1024,65536)")
    parser.add_argument("--htex-tuned-poll-period", type=int, default=None,
                        help="also time HTEX with this poll_period (ms), as a row labelled "
                             "tuned; the plain HTEX row keeps Parsl's default (10 ms)")
    parser.add_argument("--no-htex", action="store_true", help="skip Parsl HTEX")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"default {RESULTS}")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG plot here")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each measurement")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes should be integers separated by commas, not {args.sizes!r}")
    if not args.sizes or min(args.sizes) < 0:
        parser.error("--sizes needs at least one size >= 0")
    if min(args.requests, args.htex_requests, args.rounds) < 1 or args.warmup < 0:
        parser.error("--requests, --htex-requests and --rounds must be >= 1, --warmup >= 0")
    return args


def run_all(args: argparse.Namespace, tmp: Path, hub_stats: dict[str, Any]) -> list[Row]:
    cases = make_cases(args.sizes)
    small = min(cases[:-1], key=lambda c: c.size)
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        runners = {
            FLOOR_CURVE: stack.enter_context(floor_path(curve=True)),
            HUB_CURVE: stack.enter_context(hub_path(tmp / "hub-curve", hub_stats, curve=True)),
            FLOOR_PLAIN: stack.enter_context(floor_path(curve=False)),
            HUB_PLAIN: stack.enter_context(hub_path(tmp / "hub-plain", {}, curve=False)),
        }
        for case in cases:
            rows += measure(runners, case, args.requests, args.warmup, args.rounds)
    if not args.no_htex:
        polls = {HTEX_DEFAULTS: PARSL_POLL_PERIOD}
        if args.htex_tuned_poll_period is not None:
            polls[f"{HTEX} tuned poll {args.htex_tuned_poll_period} ms"] = \
                args.htex_tuned_poll_period
        for label, poll in polls.items():
            with htex_path(tmp / f"runinfo-{poll}", poll) as htex:
                rows += measure({label: htex}, small, args.htex_requests,
                                min(args.warmup, args.htex_requests), 1)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start_run(args.verbose, logger)
    started = time.monotonic()
    hub_stats: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dlhub-bench-") as tmp:
        rows = run_all(args, Path(tmp), hub_stats)
    add_ratios(rows)
    small = min((r for r in rows if r.path == FLOOR_CURVE and r.payload.startswith("bytes")),
                key=lambda r: r.size).payload
    ratios = headline(rows, small)
    print_table(rows, ratios, small)
    write_json(rows, ratios, hub_stats, args, args.json, small)
    if args.plot is not None:
        plot(rows, args.plot)
    logger.info("done in %.1fs", time.monotonic() - started)
    targets = Targets()
    targets.check(f"no-op: hub +curve p50 / floor +curve p50 at {small}",
                  ratios["hub_curve_p50_over_floor_curve_p50"], HUB_TARGET, unit="x")
    targets.check(f"{ARRAY_LABEL}: hub +curve p50 / floor +curve p50",
                  ratios["hub_curve_array_p50_over_floor_curve_p50"], HUB_TARGET, unit="x")
    targets.report()
    return targets.exit_code()


if __name__ == "__main__":
    sys.exit(main())
