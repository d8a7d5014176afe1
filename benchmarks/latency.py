"""Round-trip latency of one request: bare pyzmq floor vs dlhub-hpc vs Parsl HTEX.

    python benchmarks/latency.py [--requests N] [--sizes 8,1024,65536] [--plot out.png]

Every path has the same shape: a client process -> a broker process -> a worker process
that echoes -> back, with sequential round trips timed in the client (this process).

* ``floor``: plain pyzmq. DEALER client -> relay process (two ROUTERs, one ``zmq.Poller``
  loop forwarding frames) -> DEALER worker that decodes and re-encodes the payload.
* ``dlhub-hpc``: ``Client.run("demo/noop", payload)`` through a hub process
  (``Hub.serve_forever``) and one worker started by ``Client.start_workers``.
* ``parsl-htex``: ``app(payload).result()`` on Parsl's HighThroughputExecutor
  (interchange process + one-worker pool), small payload only.

Figures go to the terminal (a rich table) and to ``benchmarks/results/latency.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import psutil
import zmq

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results" / "latency.json"
ARRAY_LABEL = "ndarray f64 1 MiB"
ARRAY_ITEMS = 131_072  # float64 -> 1 MiB
READY = b"READY"
HUB_TARGET = 1.5  # hub p50 / floor p50 should be at most this
HTEX_TARGET = 5.0  # HTEX p50 / hub p50 should be at least this

_CTX = mp.get_context("spawn")


# ---- results --------------------------------------------------------------------------

@dataclass
class Row:
    """The latency figures of one path at one payload size (milliseconds)."""

    path: str
    payload: str
    size: int
    n: int
    p50: float
    p99: float
    mean: float
    ratio: float | None = None  # p50 / floor p50 at the same payload
    samples: list[float] = field(default_factory=list, repr=False)


def summarize(path: str, payload: str, size: int, seconds: Sequence[float]) -> Row:
    ms = sorted(s * 1000 for s in seconds)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return Row(path, payload, size, len(ms), statistics.median(ms), p99,
               statistics.fmean(ms), samples=ms)


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


def payloads(sizes: Sequence[int]) -> list[tuple[str, int, Any]]:
    """``(label, size in bytes, value)`` for each bytes size, then the 1 MiB float64 array."""
    rng = np.random.default_rng(0)
    out: list[tuple[str, int, Any]] = [
        (_label(size), size, rng.bytes(size)) for size in sizes
    ]
    array = rng.random(ARRAY_ITEMS)
    out.append((ARRAY_LABEL, array.nbytes, array))
    return out


def _label(size: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"bytes {size // scale} {unit}"
    return f"bytes {size} B"


def same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(a, b))
    return bool(a == b)


# ---- child processes ------------------------------------------------------------------

@contextlib.contextmanager
def child_processes() -> Iterator[list[SpawnProcess]]:
    """Processes appended to the yielded list are stopped on exit, whatever happens."""
    procs: list[SpawnProcess] = []
    try:
        yield procs
    finally:
        for proc in procs:
            stop_process(proc)


def stop_process(proc: SpawnProcess, grace: float = 10.0) -> None:
    """SIGTERM, wait ``grace`` seconds, then SIGKILL."""
    if proc.pid is None:
        return
    if proc.is_alive():
        proc.terminate()
        proc.join(grace)
    if proc.is_alive():
        logger.warning("%s did not stop on SIGTERM; killing it", proc.name)
        proc.kill()
        proc.join(2)


def reap(pids: Sequence[int], grace: float = 5.0) -> None:
    """Make sure none of ``pids`` (and their children) is still running."""
    procs: list[psutil.Process] = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            procs += [proc, *proc.children(recursive=True)]
    if not procs:
        return
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        logger.warning("process %d outlived its parent's shutdown; killing it", proc.pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=2)


def _quiet_child() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")


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


def _router(ctx: zmq.Context[Any]) -> tuple[zmq.Socket[bytes], str]:
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:0")
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


def relay_main(addresses: Any, stop: MpEvent) -> None:
    """The floor's broker: ROUTER for clients, ROUTER for the worker, one poll loop."""
    _quiet_child()
    ctx = zmq.Context()
    front, front_addr = _router(ctx)
    back, back_addr = _router(ctx)
    addresses.send((front_addr, back_addr))
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    worker = b""
    try:
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
    finally:
        front.close(0)
        back.close(0)
        ctx.term()


def echo_worker_main(address: str, stop: MpEvent) -> None:
    """The floor's worker: decode the payload, re-encode it, send it back."""
    _quiet_child()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    sock.send(READY)
    try:
        while not stop.is_set():
            if not sock.poll(100):
                continue
            client, *frames = sock.recv_multipart(copy=False)
            value = floor_decode([f.buffer for f in frames])
            sock.send_multipart([client, *floor_encode(value)], copy=False)
    finally:
        sock.close(0)
        ctx.term()


class FloorClient:
    """A DEALER in this process, one request at a time."""

    def __init__(self, address: str) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(address)

    def run(self, value: Any) -> Any:
        self._sock.send_multipart(floor_encode(value), copy=False)
        frames = self._sock.recv_multipart(copy=False)
        return floor_decode([f.buffer for f in frames])

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()


def bench_floor(cases: list[tuple[str, int, Any]], n: int, warmup: int) -> list[Row]:
    stop = _CTX.Event()
    parent, child = _CTX.Pipe()
    with child_processes() as procs:
        procs.append(_CTX.Process(target=relay_main, args=(child, stop), name="floor-relay"))
        procs[-1].start()
        if not parent.poll(30):
            raise RuntimeError("the floor relay did not start")
        front_addr, back_addr = parent.recv()
        procs.append(_CTX.Process(target=echo_worker_main, args=(back_addr, stop),
                                  name="floor-worker"))
        procs[-1].start()
        client = FloorClient(front_addr)
        try:
            rows = [_measure("floor", client.run, case, n, warmup) for case in cases]
        finally:
            client.close()
            stop.set()
    return rows


def _measure(
    path: str, run: Callable[[Any], Any], case: tuple[str, int, Any], n: int, warmup: int
) -> Row:
    label, size, value = case
    if not same(run(value), value):
        raise RuntimeError(f"{path} did not echo the {label} payload")
    row = summarize(path, label, size, time_calls(lambda: run(value), n, warmup))
    logger.info("%s %s: p50 %.3f ms", path, label, row.p50)
    return row


# ---- dlhub-hpc: hub process + one warm worker ------------------------------------------

def hub_main(home: str) -> None:
    """The hub as its own process, as ``dlhub-hpc hub start`` will run it."""
    _quiet_child()
    from dlhub_hpc import Hub, HubConfig

    config = HubConfig(home=Path(home), client_address="tcp://127.0.0.1:0",
                       worker_address="tcp://127.0.0.1:0")
    Hub(config).serve_forever()


def wait_for_hub(home: Path, proc: SpawnProcess, timeout: float = 60.0) -> str:
    """The client address the hub wrote in ``home/hub.json`` once it listens."""
    deadline = time.monotonic() + timeout
    state = home / "hub.json"
    while time.monotonic() < deadline:
        if not proc.is_alive():
            raise RuntimeError(f"the hub process exited with status {proc.exitcode}")
        with contextlib.suppress(OSError, ValueError, KeyError):
            return str(json.loads(state.read_text())["client_address"])
        time.sleep(0.05)
    raise RuntimeError(f"the hub did not write {state} within {timeout}s")


def bench_hub(cases: list[tuple[str, int, Any]], n: int, warmup: int, home: Path) -> list[Row]:
    from dlhub_hpc import Client
    from dlhub_hpc.examples import example_dir

    worker_pids: list[int] = []
    with child_processes() as procs:
        procs.append(_CTX.Process(target=hub_main, args=(str(home),), name="hub"))
        procs[-1].start()
        try:
            client = Client(wait_for_hub(home, procs[-1]))
            try:
                client.publish(example_dir("noop"))
                client.start_workers("demo/noop", 1)
                client.wait_for_workers("demo/noop", 1)
                worker_pids = [w["pid"] for w in client.status()["workers"]]
                run = lambda value: client.run("demo/noop", value)  # noqa: E731
                return [_measure("dlhub-hpc", run, case, n, warmup) for case in cases]
            finally:
                client.close()
        finally:
            stop_process(procs[-1])  # SIGTERM: the hub cancels its pilot blocks
            reap(worker_pids)


# ---- Parsl HighThroughputExecutor -----------------------------------------------------

def echo(x: Any) -> Any:
    return x


def htex_config(run_dir: Path) -> Any:
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    executor = HighThroughputExecutor(
        label="htex",
        address="127.0.0.1",
        max_workers_per_node=1,
        poll_period=1,  # ms; the default is 10
        heartbeat_period=2,
        encrypted=False,  # the hub and the floor are unencrypted too
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
    )
    return Config(executors=[executor], run_dir=str(run_dir), strategy_period=0.5,
                  usage_tracking=0, initialize_logging=False)


def bench_htex(case: tuple[str, int, Any], n: int, warmup: int, run_dir: Path) -> Row:
    import parsl

    with venv_on_path():  # HTEX starts interchange.py and process_worker_pool.py by name
        dfk = parsl.load(htex_config(run_dir))
        try:
            app = parsl.python_app(echo, executors=["htex"])
            return _measure("parsl-htex", lambda value: app(value).result(), case, n, warmup)
        finally:
            dfk.cleanup()
            parsl.clear()


@contextlib.contextmanager
def venv_on_path() -> Iterator[None]:
    """Put this interpreter's ``bin`` first on ``PATH`` (the venv may not be activated)."""
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), old])
    try:
        yield
    finally:
        os.environ["PATH"] = old


# ---- report ---------------------------------------------------------------------------

def add_ratios(rows: list[Row]) -> None:
    floor = {r.payload: r.p50 for r in rows if r.path == "floor"}
    for row in rows:
        if row.payload in floor:
            row.ratio = row.p50 / floor[row.payload]


def headline(rows: list[Row], small: str) -> dict[str, float | None]:
    def p50(path: str) -> float | None:
        return next((r.p50 for r in rows if r.path == path and r.payload == small), None)

    floor, hub, htex = p50("floor"), p50("dlhub-hpc"), p50("parsl-htex")
    return {
        "hub_p50_over_floor_p50": hub / floor if hub and floor else None,
        "htex_p50_over_hub_p50": htex / hub if htex and hub else None,
    }


def print_table(rows: list[Row], ratios: dict[str, float | None], small: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Round-trip latency, sequential requests ({os.cpu_count()} cores)")
    for name in ("path", "payload", "n"):
        table.add_column(name, justify="right" if name == "n" else "left", no_wrap=True)
    for name in ("p50 ms", "p99 ms", "mean ms", "p50 / floor"):
        table.add_column(name, justify="right", no_wrap=True)
    for r in rows:
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}x"
        table.add_row(r.path, r.payload, str(r.n), f"{r.p50:.3f}", f"{r.p99:.3f}",
                      f"{r.mean:.3f}", ratio)
    console = Console()
    console.print(table)
    hub, htex = ratios["hub_p50_over_floor_p50"], ratios["htex_p50_over_hub_p50"]
    console.print(f"hub p50 / floor p50 = {_fmt(hub)} at {small} (target <= {HUB_TARGET}) "
                  f"{_verdict(hub, lambda v: v <= HUB_TARGET)}")
    console.print(f"HTEX p50 / hub p50 = {_fmt(htex)} at {small} (target >= {HTEX_TARGET}) "
                  f"{_verdict(htex, lambda v: v >= HTEX_TARGET)}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _verdict(value: float | None, ok: Callable[[float], bool]) -> str:
    if value is None:
        return ""
    return "[green]met[/green]" if ok(value) else "[red]missed[/red]"


def write_json(rows: list[Row], ratios: dict[str, float | None], args: argparse.Namespace,
               path: Path) -> None:
    import parsl

    data = {
        "benchmark": "latency",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": sys.version.split()[0]},
        "versions": {"pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(),
                     "msgpack": ".".join(map(str, msgpack.version)),
                     "numpy": np.__version__, "parsl": parsl.__version__},
        "settings": {"requests": args.requests, "htex_requests": args.htex_requests,
                     "warmup": args.warmup, "sizes": args.sizes},
        "ratios": ratios,
        "targets": {"hub_p50_over_floor_p50_max": HUB_TARGET,
                    "htex_p50_over_hub_p50_min": HTEX_TARGET},
        "rows": [{k: v for k, v in asdict(r).items() if k != "samples"} for r in rows],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def plot(rows: list[Row], path: Path) -> None:
    """p50 bars per payload (log scale) and latency CDFs for the smallest payload."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed; no plot (pip install matplotlib)")
        return
    paths = list(dict.fromkeys(r.path for r in rows))
    labels = list(dict.fromkeys(r.payload for r in rows))
    fig, (bars, cdf) = plt.subplots(1, 2, figsize=(13, 5))
    width = 0.8 / len(paths)
    for i, name in enumerate(paths):
        by_label = {r.payload: r.p50 for r in rows if r.path == name}
        xs = [j + i * width for j, label in enumerate(labels) if label in by_label]
        bars.bar(xs, [by_label[label] for label in labels if label in by_label], width,
                 label=name)
    bars.set_xticks([j + width * (len(paths) - 1) / 2 for j in range(len(labels))], labels,
                    rotation=15)
    bars.set_yscale("log")
    bars.set_ylabel("p50 round trip (ms)")
    bars.legend()
    for row in (r for r in rows if r.payload == labels[0]):
        ys = [(i + 1) / len(row.samples) for i in range(len(row.samples))]
        cdf.plot(row.samples, ys, label=row.path)
    cdf.set_xscale("log")
    cdf.set_xlabel(f"round trip (ms), {labels[0]}")
    cdf.set_ylabel("fraction of requests")
    cdf.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- main -----------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000,
                        help="timed round trips per payload, floor and hub (default 2000)")
    parser.add_argument("--htex-requests", type=int, default=300,
                        help="timed round trips for Parsl HTEX (default 300)")
    parser.add_argument("--warmup", type=int, default=200,
                        help="untimed round trips before each measurement (default 200)")
    parser.add_argument("--sizes", default="8,1024,65536",
                        help="bytes payload sizes, comma-separated (default 8,1024,65536)")
    parser.add_argument("--no-htex", action="store_true", help="skip Parsl HTEX")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"default {RESULTS}")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG plot here")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not args.sizes or min(args.sizes) < 0:
        parser.error("--sizes needs at least one size >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verbose:
        logger.setLevel(logging.INFO)
    cases = payloads(args.sizes)
    small = min(cases[:-1], key=lambda c: c[1])
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dlhub-bench-") as tmp:
        rows = bench_floor(cases, args.requests, args.warmup)
        rows += bench_hub(cases, args.requests, args.warmup, Path(tmp) / "hub")
        if not args.no_htex:
            warmup = min(args.warmup, args.htex_requests)
            rows.append(bench_htex(small, args.htex_requests, warmup, Path(tmp) / "runinfo"))
    add_ratios(rows)
    ratios = headline(rows, small[0])
    print_table(rows, ratios, small[0])
    write_json(rows, ratios, args, args.json)
    if args.plot is not None:
        plot(rows, args.plot)
    logger.info("done in %.1fs", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
