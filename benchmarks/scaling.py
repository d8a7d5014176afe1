"""Broker cost against the number of connected workers: 1, 2, 4, ..., 1024 workers, one hub.

    python benchmarks/scaling.py [--counts 1,2,...,1024] [--requests 1000] [--plot out.png]

The DLHub paper served one servable from up to 512 containers, 1,000 requests a trial.
Here one hub process serves ``demo/noop`` to a fleet of workers resized through the
counts, up and then down again (``--passes``), so that a drift in the machine's load
touches every size alike. At each size a client in this process sends ``--requests``
requests with ``--in-flight`` outstanding (``Client.submit``), ``--rounds`` times, and the
run reports the throughput and the hub process's CPU seconds (psutil, all its threads)
per request. What is measured is the broker's bookkeeping and fan-out, which should not
grow with the number of idle workers: the target is hub CPU per request at the largest
size within ``TARGET`` x of that at ``BASELINE`` (8) workers.

Two cores cannot run 1,024 worker processes, so the workers are *simulated worker loops
sharing processes*: a worker host process opens up to ``--per-host`` DEALER sockets, each
a separate worker identity speaking the real protocol (Hello -> Assign -> Ready, a
BatchResult echoing each Batch, Heartbeat every interval from a heartbeat socket of its
own as ``dlhub_hpc.worker`` does, Bye on exit), all served by one poll loop (epoll on the
sockets' ``ZMQ_FD``, so that a wake-up does not cost more in a bigger host). The hub
cannot tell them from real workers. A size adds hosts or stops the newest (their workers
say Bye).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import resource
import selectors
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import psutil
import zmq

from dlhub_hpc.errors import ProtocolError
from dlhub_hpc.protocol import (
    Assign,
    Batch,
    BatchResult,
    Bye,
    Heartbeat,
    Hello,
    Message,
    Ready,
    Shutdown,
    decode,
    encode,
)
from dlhub_hpc.security.keys import curve_client, hub_public_key, worker_credential

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    CTX,
    hub_main,
    pyplot,
    quiet_child,
    save_json,
    start_run,
    stop_process,
    wait_for_hub,
)

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results" / "scaling.json"
SERVABLE = "demo/noop"
DEFAULT_COUNTS = "1,2,4,8,16,32,64,128,256,512,1024"
BASELINE = 8  # workers: the size the largest one is compared with
TARGET = 1.25  # hub CPU per request at the largest size / at BASELINE, at most


# ---- simulated workers: many worker loops in one process ------------------------------

@dataclass(frozen=True)
class HostSpec:
    """What one worker host process runs: ``count`` workers named ``prefix-NNNN``."""

    prefix: str
    count: int
    servable: str
    heartbeat_interval: float
    heartbeat_socket: bool = True  # heartbeats from a second socket, as the real worker


class WorkerHost:
    """``spec.count`` worker identities, each its own DEALER socket, in one poll loop."""

    def __init__(self, address: str, spec: HostSpec) -> None:
        self.spec = spec
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.ctx.MAX_SOCKETS = max(1024, 2 * spec.count + 16)
        # epoll on each socket's ZMQ_FD: a wake-up costs O(ready sockets); zmq.Poller would
        # walk every socket on every wake-up (about 1 us each), which grows with the fleet
        self.selector = selectors.EpollSelector()
        # Every worker connection passes the hub's CurveZMQ check with the worker credential
        # the hub recorded for its address, as a real worker does.
        server, credential = hub_public_key(address), worker_credential(address)
        self.curve = None if server is None or credential is None else (server, credential)
        self.names: dict[zmq.Socket[bytes], str] = {}  # the live workers' main sockets
        # per worker: its main socket, the socket its heartbeats go from, their frames
        self.beats: list[tuple[zmq.Socket[bytes], zmq.Socket[bytes], list[Any]]] = []
        for i in range(spec.count):
            worker_id = f"{spec.prefix}-{i:04d}"
            sock = self._socket(address, worker_id)
            self.names[sock] = worker_id
            self.selector.register(sock, selectors.EVENT_READ, sock)
            beat = self._socket(address, f"{worker_id}/hb") if spec.heartbeat_socket else sock
            self.beats.append((sock, beat, encode(Heartbeat(worker_id))))
            sock.send_multipart(encode(Hello(worker_id, spec.servable, None,
                                             socket.gethostname(), os.getpid(), spec.prefix)))
        for sock in list(self.names):  # arms ZMQ_FD: it signals only after a look found none
            self._drain(sock)
        # staggered, as independent workers would be: worker i beats at phase i / count
        start = time.monotonic()
        self.due: deque[tuple[float, int]] = deque(
            (start + spec.heartbeat_interval * (i + 1) / spec.count, i)
            for i in range(spec.count)
        )

    def _socket(self, address: str, identity: str) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, identity.encode())
        if self.curve is not None:
            curve_client(sock, *self.curve)
        sock.connect(address)
        return sock

    def run(self, stop: MpEvent) -> None:
        """Serve until ``stop`` is set or the hub has told every worker to leave."""
        next_check = 0.0
        while self.names:
            now = time.monotonic()
            if now >= next_check:
                if stop.is_set():
                    return
                next_check = now + 0.1
            wait = min(self.due[0][0] - now, next_check - now) if self.due else 0.1
            for key, _ in self.selector.select(max(0.0, wait)):
                self._drain(key.data)
            self._heartbeats(time.monotonic())

    def _drain(self, sock: zmq.Socket[bytes]) -> None:
        # ZMQ_FD only says "look": read EVENTS (which resets it) until no message is left
        while sock in self.names and cast(int, sock.get(zmq.EVENTS)) & zmq.POLLIN:
            frames = sock.recv_multipart(copy=False)
            try:
                self._answer(sock, decode(frames))
            except ProtocolError as exc:
                logger.warning("dropped a malformed message from the hub: %s", exc)

    def _answer(self, sock: zmq.Socket[bytes], msg: Message) -> None:
        if isinstance(msg, Batch):  # the echo servable: every item comes back as it went
            results = [[True, payload] for payload in msg.payloads]
            sock.send_multipart(encode(BatchResult(msg.batch_id, results, 0.0)), copy=False)
        elif isinstance(msg, Assign):  # nothing to load: an echo needs no bundle
            sock.send_multipart(encode(Ready(self.names[sock])))
        elif isinstance(msg, Shutdown):
            logger.warning("the hub told %s to leave: %s", self.names[sock], msg.reason)
            self.selector.unregister(sock)
            del self.names[sock]
        # a Heartbeat from the hub needs no answer

    def _heartbeats(self, now: float) -> None:
        interval = self.spec.heartbeat_interval
        for _ in range(len(self.due)):
            if self.due[0][0] > now:
                return
            due, i = self.due.popleft()
            main, beat, frames = self.beats[i]
            if main in self.names:  # a worker the hub sent away beats no more
                beat.send_multipart(frames)
                if beat is main:  # a send may take the ZMQ_FD signal of a message
                    self._drain(main)
                self.due.append((max(due + interval, now), i))

    def close(self, reason: str) -> None:
        """Say goodbye for every worker still registered, then close every socket."""
        for sock, worker_id in self.names.items():
            with contextlib.suppress(zmq.ZMQError):
                sock.send_multipart(encode(Bye(worker_id, reason)))
        for sock in self.names:
            sock.close(linger=500)  # let the goodbyes reach the hub
        self.selector.close()
        self.ctx.destroy(linger=0)


def worker_host_main(address: str, spec: HostSpec, stop: MpEvent) -> None:
    """A worker host process: ``spec.count`` simulated workers until ``stop`` is set."""
    quiet_child()
    host = WorkerHost(address, spec)
    reason = "the benchmark stopped it"
    try:
        host.run(stop)
    finally:
        host.close(reason)


@dataclass
class Host:
    """One worker host process, its own stop event and how many workers it runs."""

    proc: SpawnProcess
    stop: MpEvent
    count: int


class Fleet:
    """Worker host processes attached to one hub, grown and shrunk a host at a time."""

    def __init__(self, address: str, per_host: int, heartbeat_interval: float) -> None:
        self.address = address
        self.per_host = per_host
        self.heartbeat_interval = heartbeat_interval
        self.hosts: list[Host] = []
        self.started = 0  # hosts ever started: names stay unique after a shrink

    @property
    def size(self) -> int:
        return sum(h.count for h in self.hosts)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(self.hosts)

    def resize(self, target: int) -> None:
        """Add hosts up to ``target`` workers, or stop the newest down to ``target``."""
        while self.hosts and self.size - self.hosts[-1].count >= target:
            self.close([self.hosts.pop()])
        if self.size > target:
            raise ValueError(f"cannot shrink to {target} workers: the newest host runs "
                             f"{self.hosts[-1].count}; use powers of two for --counts")
        while self.size < target:
            self._start(min(self.per_host, target - self.size))

    def _start(self, count: int) -> None:
        spec = HostSpec(f"sim{self.started:03d}", count, SERVABLE, self.heartbeat_interval)
        stop = CTX.Event()
        proc = CTX.Process(target=worker_host_main, args=(self.address, spec, stop),
                           name=f"worker-host-{self.started}")
        self.hosts.append(Host(proc, stop, count))
        self.started += 1
        proc.start()

    def cpu(self) -> float:
        """CPU seconds of the running worker hosts."""
        return sum(cpu_seconds(psutil.Process(h.proc.pid)) for h in self.hosts if h.proc.pid)

    def check(self) -> None:
        dead = [h.proc for h in self.hosts if not h.proc.is_alive()]
        if dead:
            raise RuntimeError(f"{dead[0].name} exited with status {dead[0].exitcode}")

    @staticmethod
    def close(hosts: Sequence[Host]) -> None:
        """Their workers say goodbye and exit; any host that does not is terminated."""
        for host in hosts:
            host.stop.set()
        deadline = time.monotonic() + 5.0
        for host in hosts:
            host.proc.join(max(0.0, deadline - time.monotonic()))
        for host in hosts:
            stop_process(host.proc)


# ---- the hub and the load -------------------------------------------------------------

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
        "memo_max_bytes": 0,  # every request reaches a worker
        "default_timeout": 60.0,
        "batching": {SERVABLE: {"max_batch_size": args.batch_size}},
    }


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


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


# ---- one size ---------------------------------------------------------------------------

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


# ---- report ---------------------------------------------------------------------------

def add_ratios(rows: list[Row], baseline: int) -> float | None:
    """Each row's CPU per request over the baseline's; returns the largest size's."""
    base = next((r.cpu_us for r in rows if r.workers == baseline), None)
    if base is None:
        return None
    for row in rows:
        row.ratio = row.cpu_us / base
    return rows[-1].ratio if rows[-1].workers > baseline else None


def print_table(rows: list[Row], ratio: float | None, args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=(f"One hub, N connected workers: {args.passes} x {args.rounds} x "
                         f"{args.requests} requests per size, {args.in_flight} in flight, "
                         "demo/noop, "
                         f"batch size {args.batch_size} ({os.cpu_count()} CPUs)"))
    columns = ("workers", "processes", "requests", "req/s", "hub CPU us/req", "rounds' range",
               f"vs {BASELINE} workers", "hub CPU loaded", "hub CPU idle")
    for name in columns:
        table.add_column(name, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(
            str(r.workers), str(r.processes), str(r.requests), f"{r.throughput:,.0f}",
            f"{r.cpu_us:.1f}", f"{min(r.round_cpu_us):.0f}-{max(r.round_cpu_us):.0f}",
            "" if r.ratio is None else f"{r.ratio:.2f}x",
            f"{r.busy_share:.0%}", "" if r.idle_share is None else f"{r.idle_share:.1%}",
        )
    console = Console()
    if not console.is_terminal:  # piped or captured: rich would assume 80 columns
        console = Console(width=130)
    console.print(table)
    console.print(
        f"Workers are simulated worker loops speaking the real protocol, up to "
        f"{args.per_host} sharing one process ({rows[-1].processes} processes at "
        f"{rows[-1].workers} workers); heartbeats every {args.heartbeat_interval:g} s each way. "
        "hub CPU loaded / idle: the hub's CPU time over wall time (100% = one core), while "
        f"serving and with no requests ({args.idle:g} s)."
    )
    verdict = ("" if ratio is None else
               "[green]met[/green]" if ratio <= TARGET else "[red]missed[/red]")
    shown = "n/a" if ratio is None else f"{ratio:.2f}"
    console.print(f"hub CPU per request at {rows[-1].workers} workers / at {BASELINE} workers "
                  f"= {shown} (target <= {TARGET}) {verdict}")


def write_json(rows: list[Row], ratio: float | None, hub_stats: dict[str, Any],
               args: argparse.Namespace, path: Path) -> None:
    data = {
        "benchmark": "scaling",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": sys.version.split()[0], "load_average": list(os.getloadavg())},
        "versions": {"pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "plot")},
        "workers": "simulated worker loops speaking the real protocol, sharing processes",
        "ratio": ratio,
        "target": {"baseline_workers": BASELINE, "cpu_per_request_ratio_max": TARGET},
        "rows": [asdict(r) for r in rows],
        "hub_stats": hub_stats,
    }
    save_json(path, data)


def plot(rows: list[Row], path: Path) -> None:
    """Throughput and hub CPU per request against the number of workers (log2 axis)."""
    plt = pyplot()
    if plt is None:
        return
    xs = [r.workers for r in rows]
    fig, (rate, cpu) = plt.subplots(1, 2, figsize=(12, 4.5))
    rate.plot(xs, [r.throughput for r in rows], "o-")
    rate.set_ylabel("requests per second")
    rate.set_ylim(bottom=0)
    cpu.plot(xs, [r.cpu_us for r in rows], "o-", label="hub CPU per request")
    cpu.plot([r.workers for r in rows for _ in r.round_cpu_us],
             [c for r in rows for c in r.round_cpu_us], ".", color="tab:blue", alpha=0.3,
             label="one round")
    base = next((r.cpu_us for r in rows if r.workers == BASELINE), None)
    if base is not None:
        cpu.axhline(base * TARGET, color="tab:red", linestyle="--",
                    label=f"target: {TARGET}x the {BASELINE}-worker figure")
    cpu.set_ylabel("hub CPU per request (us)")
    cpu.set_ylim(bottom=0)
    cpu.legend()
    for ax in (rate, cpu):
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("connected workers (simulated, sharing processes)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- main -----------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--counts", default=DEFAULT_COUNTS,
                        help=f"worker counts, comma-separated (default {DEFAULT_COUNTS})")
    parser.add_argument("--requests", type=int, default=1000,
                        help="timed requests per round (default 1000, as in the paper)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="timed rounds per size and pass (default 3)")
    parser.add_argument("--passes", type=int, default=2,
                        help="sweeps over the counts, alternately up and down (default 2)")
    parser.add_argument("--warmup", type=int, default=200,
                        help="untimed requests per size first (default 200)")
    parser.add_argument("--in-flight", type=int, default=32,
                        help="requests outstanding at once (default 32)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="the hub's max_batch_size for demo/noop (default 1: every "
                             "request is its own batch, the most fan-out)")
    parser.add_argument("--heartbeat-interval", type=float, default=1.0,
                        help="seconds between heartbeats, hub and workers (default 1)")
    parser.add_argument("--per-host", type=int, default=128,
                        help="simulated workers per worker host process (default 128)")
    parser.add_argument("--idle", type=float, default=1.0,
                        help="seconds the idle hub's CPU is measured per size (0: skip)")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"default {RESULTS}")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG plot here")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each size")
    args = parser.parse_args(argv)
    try:
        args.counts = sorted({int(c) for c in args.counts.split(",") if c.strip()})
    except ValueError:
        parser.error(f"--counts should be integers separated by commas, not {args.counts!r}")
    if not args.counts or args.counts[0] < 1:
        parser.error("--counts needs at least one count >= 1")
    if min(args.requests, args.rounds, args.passes, args.in_flight, args.batch_size,
           args.per_host) < 1:
        parser.error("--requests, --rounds, --passes, --in-flight, --batch-size and "
                     "--per-host must be >= 1")
    if args.warmup < 0 or args.heartbeat_interval <= 0 or args.idle < 0:
        parser.error("--warmup and --idle must be >= 0, --heartbeat-interval > 0")
    return args


def raise_fd_limit(workers: int) -> None:
    """The hub holds two connections per worker; spawned children inherit the limit."""
    need = 2 * workers + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise SystemExit(f"{workers} workers need about {need} open files; the hard limit "
                         f"is {hard} (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start_run(args.verbose, logger)
    raise_fd_limit(args.counts[-1])
    started = time.monotonic()
    hub_stats: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dlhub-scaling-") as tmp:
        rows = sweep(args, Path(tmp), hub_stats)
    ratio = add_ratios(rows, BASELINE)
    print_table(rows, ratio, args)
    write_json(rows, ratio, hub_stats, args, args.json)
    if args.plot is not None:
        plot(rows, args.plot)
    logger.info("done in %.1fs", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
