"""The DLHub paper's evaluation (JPDC 147, 2021), reproduced against dlhub-hpc on this machine.

    python benchmarks/paper_suite.py [--quick] [--only NAME] [--plot-dir DIR]

For each servable in ``benchmarks/servables`` (noop, matminer_util, matminer_featurize,
oqmd_rf, cifar_cnn) a hub process of its own is started, the servable is published (and a
copy named ``<name>-nobatch`` that the hub never batches), and then:

* latency layers: sequential requests (memo cache off) on a raw DEALER socket, reading
  ``Reply.timing``: inference (the worker's batch), invocation (the hub), request (here);
* batch sweep: ``Client.run_batch`` of 1, 2, 4, ... 1024 items; time per item (figure 5);
* memoization: one input repeated, ``cache=False`` vs the memo cache, beside (noop only)
  a one-hop floor: the same client and a process that answers at once, with no hub;
* throughput: ``Client.submit`` keeping 32 requests in flight on 2 workers, the servable
  batched (as published, batches up to 1024) vs its ``-nobatch`` copy;

and Parsl's HighThroughputExecutor runs noop as a python_app with 32 in flight on 2 workers.
``oqmd_rf`` is published with scikit-learn's own predict (``compile_trees: false``), which
every oqmd_rf row measures, and again as ``oqmd_rf-compiled`` on the compiled tree path
(``compile_trees: true``), a separate throughput row labelled "compiled trees, fast path".
Tables go to the terminal, figures to ``benchmarks/results/paper_suite.json`` and PNGs. The
targets (``paper_report.targets``) end the output; the exit status is 1 when one is missed
(``TARGET MISSED: ...``); a target whose part was not run (``--only``) does not count.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import logging
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import zmq

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import paper_report as report
from benchmarks.common import (
    CpuWatch,
    child_process,
    echo,
    htex_app,
    hub_main,
    quiet_child,
    reap,
    start_run,
    stop_process,
    summary,
    wait_for_hub,
)
from benchmarks.servables import NAMES, OQMD_NOTE, make_inputs, prepare, ref, variant
from dlhub_hpc import Client
from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.errors import error_from_wire
from dlhub_hpc.hub import Hub
from dlhub_hpc.protocol import Reply, Request, decode, encode
from dlhub_hpc.security.client import ClientCurve
from dlhub_hpc.security.keys import KeyPair, curve_client, user_keypair

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results"
NOBATCH = "-nobatch"
COMPILED = "-compiled"  # oqmd_rf on the compiled tree path (compile_trees: true)
HTEX = "htex"
MAX_BATCH = 1024
MIN_CALLS = 100  # sequential calls always made, whatever the time budget


@dataclass(frozen=True)
class Settings:
    """How much of each measurement to take."""

    latency_n: int
    warmup: int
    sweep_sizes: tuple[int, ...]
    sweep_reps: int
    memo_n: int
    budget: float  # seconds of sequential calls, at most, once MIN_CALLS are done
    seconds: float  # each throughput window
    warmup_seconds: float
    in_flight: int = 32
    workers: int = 2
    htex_poll_period: int = 10  # ms: Parsl's default (HTEX at its defaults, unencrypted)
    transport: str = "tcp"  # how the client reaches the hub: tcp (loopback) or ipc

    @classmethod
    def make(cls, quick: bool, transport: str = "tcp") -> Settings:
        sizes = tuple(2**i for i in range(11))  # 1 .. 1024
        if quick:
            return cls(200, 20, sizes, 1, 1000, 3.0, 2.0, 0.5, transport=transport)
        return cls(2000, 100, sizes, 3, 5000, 15.0, 8.0, 1.0, transport=transport)


@dataclass
class ServableResult:
    """Everything measured for one servable (times in ms unless a key says otherwise)."""

    name: str
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    sweep: list[dict[str, float]] = field(default_factory=list)
    memo: dict[str, dict[str, float]] = field(default_factory=dict)
    throughput: dict[str, dict[str, float]] = field(default_factory=dict)
    hub_stats: dict[str, Any] = field(default_factory=dict)
    others_cores: dict[str, float] = field(default_factory=dict)  # CPU others used, per phase

    @contextlib.contextmanager
    def watch(self, phase: str, session: HubSession) -> Iterator[None]:
        """Note how many cores processes outside this run kept busy during ``phase``."""
        watch = CpuWatch(session.worker_pids)
        yield
        self.others_cores[phase] = watch.stop()["others"]


# ---- a raw client that reads Reply.timing ------------------------------------------------

@dataclass(frozen=True)
class Timed:
    value: Any
    request: float  # seconds, here: encode, send, wait, receive, decode
    invocation: float  # seconds at the hub, from the request's arrival to its reply
    inference: float  # seconds the worker ran the batch that held the request


class TimingClient:
    """A plain DEALER speaking ``dlhub_hpc.protocol``, one request at a time.

    ``Client.run`` returns only the value; this keeps the reply's ``timing`` too.
    """

    def __init__(self, address: str, timeout: float = 60.0,
                 server_key: str | None = None) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        # CurveZMQ as Client does (the hub answers nothing else); the floor passes its key
        server = server_key or ClientCurve().server_key_for(address)
        if server:
            curve_client(self._sock, server, user_keypair())
        # a blocking receive with a timeout, as Client.run waits: cheaper than poll + recv
        self._sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
        self._sock.connect(address)
        self._ids = itertools.count()

    def call(self, servable: str, payload: Any, *, cache: bool = True) -> Timed:
        clock = time.perf_counter
        request_id = f"t-{next(self._ids)}"
        t0 = clock()
        self._sock.send_multipart(
            encode(Request(request_id, servable, None, "", payload, None, cache)), copy=False)
        while True:
            try:
                reply = decode(self._sock.recv_multipart(copy=False))
            except zmq.Again:
                raise RuntimeError(f"no reply from the hub for {servable} in time") from None
            if isinstance(reply, Reply) and reply.request_id == request_id:
                break
        elapsed = clock() - t0
        if not reply.ok:
            raise error_from_wire(reply.error or {})
        invocation, inference = reply.timing or (float("nan"), float("nan"))
        return Timed(reply.value, elapsed, invocation, inference)

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()


# ---- a hub process with its workers -------------------------------------------------------

class HubSession:
    """A client of a hub process; remembers every worker pid it saw, to reap them later."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.worker_pids: set[int] = set()

    def stats(self) -> dict[str, Any]:
        status = self.client.status()
        self.worker_pids.update(w["pid"] for w in status["workers"])
        return dict(status.get("stats", {}))

    def start_workers(self, servable: str, count: int, total: int) -> None:
        """Start ``count`` more workers of ``servable``; wait until ``total`` serve it."""
        self.client.start_workers(servable, count)
        self.client.wait_for_workers(servable, total, timeout=180)
        self.stats()

    def stop_workers(self, servable: str, timeout: float = 30.0) -> None:
        """Stop the workers of ``servable`` and wait until the hub has seen them go."""
        self.client.stop_workers(servable)
        deadline = time.monotonic() + timeout
        while any(w["servable"].split("@")[0] == servable
                  for w in self.client.status()["workers"]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the workers of {servable} did not stop in {timeout}s")
            time.sleep(0.1)


@contextlib.contextmanager
def hub_session(home: Path, overrides: dict[str, Any]) -> Iterator[HubSession]:
    """A hub process (``HubConfig`` ``overrides``); stopped with all its workers on exit."""
    with child_process(hub_main, str(home), overrides, name="hub") as proc:
        session: HubSession | None = None
        try:
            with Client(wait_for_hub(home, proc)) as client:
                session = HubSession(client)
                yield session
                with contextlib.suppress(Exception):
                    session.stats()
        finally:
            stop_process(proc)  # SIGTERM: the hub cancels its pilot blocks, then exits
            if session is not None:
                reap(sorted(session.worker_pids))


# ---- measurements -------------------------------------------------------------------------

T = TypeVar("T")


def budgeted(call: Callable[[int], T], n: int, budget: float) -> list[T]:
    """``call(i)`` for i up to ``n``, one after another; stops after ``budget`` seconds once
    ``MIN_CALLS`` are done (a 15 ms servable would take minutes otherwise)."""
    results: list[T] = []
    deadline = time.monotonic() + budget
    for i in range(n):
        results.append(call(i))
        if len(results) >= MIN_CALLS and time.monotonic() > deadline:
            break
    return results


def timed_calls(raw: TimingClient, servable: str, inputs: Sequence[Any], n: int,
                budget: float, *, cache: bool) -> list[Timed]:
    """Up to ``n`` sequential calls, cycling through ``inputs`` (see ``budgeted``)."""
    return budgeted(lambda i: raw.call(servable, inputs[i % len(inputs)], cache=cache),
                    n, budget)


def latency_layers(raw: TimingClient, servable: str, inputs: Sequence[Any],
                   settings: Settings) -> dict[str, dict[str, float]]:
    """Sequential requests with the memo cache off: each layer's p50/p99/mean in ms."""
    for x in inputs[:settings.warmup]:
        raw.call(servable, x, cache=False)
    timed = timed_calls(raw, servable, inputs, settings.latency_n, settings.budget,
                        cache=False)
    return {
        "inference": summary([t.inference for t in timed], 1000),
        "invocation": summary([t.invocation for t in timed], 1000),
        "request": summary([t.request for t in timed], 1000),
    }


def batch_sweep(session: HubSession, servable: str, inputs: Sequence[Any],
                sizes: Sequence[int], reps: int) -> list[dict[str, float]]:
    """``run_batch`` of each size: the median time per item, and the batches the hub made.

    Small sizes repeat more (up to 256 items in all, at least ``reps`` times) so that one
    slow round trip does not make the figure.
    """
    client = session.client
    client.run_batch(servable, list(inputs[:16]), cache=False)  # warm the client's thread
    points = []
    for size in sizes:
        count = max(reps, min(32, 256 // size))
        before = session.stats()
        times = []
        for rep in range(count):
            chunk = [inputs[(rep * size + i) % len(inputs)] for i in range(size)]
            t0 = time.perf_counter()
            client.run_batch(servable, chunk, cache=False)
            times.append(time.perf_counter() - t0)
        batches = session.stats().get("batches", 0) - before.get("batches", 0)
        seconds = statistics.median(times)
        points.append({"size": size, "seconds": seconds, "per_item_ms": seconds / size * 1000,
                       "runs": count, "hub_batches_per_run": batches / count})
        logger.info("%s batch %d: %.3f ms per item", servable, size, seconds / size * 1000)
    return points


def memoization(session: HubSession, raw: TimingClient, servable: str, value: Any,
                settings: Settings) -> dict[str, dict[str, float]]:
    """One input repeated: memo cache off (``cache=False``), then on (after one miss)."""
    out = {}
    for mode, cache in (("off", False), ("on", True)):
        raw.call(servable, value, cache=cache)  # on: fills the cache
        before = session.stats().get("memo_hits", 0)
        timed = timed_calls(raw, servable, [value], settings.memo_n, settings.budget,
                            cache=cache)
        hits = session.stats().get("memo_hits", 0) - before
        out[mode] = {**summary([t.request for t in timed], 1e6),
                     "invocation_p50_us": summary([t.invocation for t in timed], 1e6)["p50"],
                     "memo_hits": hits}
    before = session.stats().get("memo_hits", 0)
    out["client on"] = client_calls(session.client, servable, value, settings)
    out["client on"]["memo_hits"] = session.stats().get("memo_hits", 0) - before
    return out


def client_calls(client: Client, servable: str, value: Any,
                 settings: Settings) -> dict[str, float]:
    """Round trips through the public ``Client.run`` (memo cache on), microseconds."""
    def call(_: int) -> float:
        t0 = time.perf_counter()
        client.run(servable, value)
        return time.perf_counter() - t0

    for i in range(settings.warmup):
        call(i)
    return summary(budgeted(call, settings.memo_n, settings.budget), 1e6)


def floor_main(address_file: str, address: str, secret: str) -> None:
    """One hop and no hub: a ROUTER that answers each ``Request`` with its own payload, a
    CurveZMQ server like the hub (no ZAP handler: any client key is let in)."""
    quiet_child()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.curve_server = True
    sock.curve_secretkey = secret.encode()
    sock.bind(address)
    Path(address_file).write_text(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    try:
        while True:
            identity, *frames = sock.recv_multipart(copy=False)
            req = decode(frames)
            assert isinstance(req, Request)
            reply = Reply(req.request_id, True, req.payload, None, [0.0, 0.0])
            sock.send_multipart([identity, *encode(reply)], copy=False)
    finally:
        sock.close(0)
        ctx.term()


def one_hop_floor(tmp: Path, value: Any, settings: Settings) -> dict[str, float]:
    """What a memo hit cannot beat: the same client, one hop to a process that answers,
    on the same transport as the hub's clients."""
    address_file = tmp / "floor-address"
    address = "tcp://127.0.0.1:0" if settings.transport == "tcp" else f"ipc://{tmp}/floor.sock"
    key = KeyPair.generate()
    with child_process(floor_main, str(address_file), address, key.secret, name="floor"):
        deadline = time.monotonic() + 30
        while not address_file.is_file() or not address_file.read_text():
            if time.monotonic() > deadline:
                raise RuntimeError("the one-hop floor process did not start")
            time.sleep(0.02)
        raw = TimingClient(address_file.read_text(), server_key=key.public)
        try:
            for _ in range(settings.warmup):
                raw.call("floor/echo", value)
            watch = CpuWatch()
            timed = timed_calls(raw, "floor/echo", [value], settings.memo_n, settings.budget,
                                cache=True)
            others = watch.stop()["others"]
        finally:
            raw.close()
        with Client(address_file.read_text(), server_key=key.public) as client:
            through_client = client_calls(client, "floor/echo", value, settings)
    return {**summary([t.request for t in timed], 1e6), "others_cores": others,
            **{f"client_{k}": v for k, v in through_client.items()}}


def embedded_memo(tmp: Path, source: Path, value: Any, settings: Settings) -> dict[str, float]:
    """Memo hits from a caller that runs the hub in its own process (``Hub(...).start()``)
    and reaches it on ``inproc://`` through ``Hub.client()``: no socket between them."""
    home = tmp / "hub-embedded"
    config = HubConfig(home=home, client_address="tcp://127.0.0.1:0",
                       worker_address="tcp://127.0.0.1:0")
    servable = ref("noop")
    session: HubSession | None = None
    try:
        with Hub(config) as hub, hub.client() as client:
            session = HubSession(client)
            client.publish(source)
            session.start_workers(servable, 1, 1)
            for _ in range(settings.warmup):
                client.run(servable, value)
            before = session.stats().get("memo_hits", 0)
            watch = CpuWatch(session.worker_pids)

            def hit(_: int) -> float:
                t0 = time.perf_counter()
                client.run(servable, value)
                return time.perf_counter() - t0

            times = budgeted(hit, settings.memo_n, settings.budget)
            others = watch.stop()["others"]
            hits = session.stats().get("memo_hits", 0) - before
    finally:
        if session is not None:
            reap(sorted(session.worker_pids))
    return {**summary(times, 1e6), "memo_hits": hits, "others_cores": others}


Submit = Callable[[Any], "Future[Any]"]


def drive(submit: Submit, inputs: Sequence[Any], seconds: float,
          in_flight: int) -> dict[str, float]:
    """Keep ``in_flight`` requests outstanding for ``seconds``; requests/s and latency (ms)."""
    slots = threading.Semaphore(in_flight)
    latencies: list[float] = []
    errors: list[BaseException] = []
    last = [0.0]

    def done(t0: float, fut: Future[Any]) -> None:
        now = time.perf_counter()
        exc = fut.exception()
        if exc is None:
            latencies.append(now - t0)
        else:
            errors.append(exc)
        last[0] = max(last[0], now)
        slots.release()

    start = time.perf_counter()
    for i in itertools.count():
        if time.perf_counter() - start >= seconds:
            break
        slots.acquire()
        t0 = time.perf_counter()
        submit(inputs[i % len(inputs)]).add_done_callback(functools.partial(done, t0))
    for _ in range(in_flight):  # wait for the last ones
        if not slots.acquire(timeout=120):
            raise RuntimeError("requests still unanswered two minutes after the window")
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed; the first: {errors[0]!r}")
    stats = summary(latencies, 1000)
    return {**stats, "requests_per_s": len(latencies) / (last[0] - start)}


def drive_map(client: Client, servable: str, inputs: Sequence[Any], seconds: float,
              in_flight: int) -> dict[str, float]:
    """``drive``'s window through ``Client.map``: one thread keeps ``in_flight`` requests
    outstanding on the map's socket. A request's latency runs from when ``map`` takes its
    input to when it yields its output."""
    clock = time.perf_counter
    taken: list[float] = []

    def feed() -> Iterator[Any]:
        while clock() - start < seconds:
            taken.append(clock())
            yield inputs[len(taken) % len(inputs)]

    latencies = []
    start = clock()
    for i, _ in enumerate(client.map(servable, feed(), cache=False, in_flight=in_flight)):
        latencies.append(clock() - taken[i])
    stats = summary(latencies, 1000)
    return {**stats, "requests_per_s": len(latencies) / (clock() - start)}


def throughput(session: HubSession, servable: str, inputs: Sequence[Any],
               settings: Settings) -> dict[str, float]:
    """``drive`` through ``Client.submit`` (memo cache off), after a warm-up window."""
    def submit(x: Any) -> Future[Any]:
        return session.client.submit(servable, x, cache=False)

    drive(submit, inputs, settings.warmup_seconds, settings.in_flight)
    before = session.stats()
    result = drive(submit, inputs, settings.seconds, settings.in_flight)
    after = session.stats()
    batches = after.get("batches", 0) - before.get("batches", 0)
    items = after.get("batched_items", 0) - before.get("batched_items", 0)
    result["mean_batch"] = items / batches if batches else float("nan")
    return result


def htex_throughput(run_dir: Path, settings: Settings) -> dict[str, float]:
    """noop (echo) as a Parsl python_app on HTEX with the same workers and requests in flight."""
    inputs = make_inputs("noop", 4096)
    with htex_app(run_dir, settings.htex_poll_period, echo, settings.workers) as app:
        app(inputs[0]).result(timeout=120)  # the pool is up
        drive(app, inputs, settings.warmup_seconds, settings.in_flight)
        watch = CpuWatch(marker=str(run_dir))  # the worker pool's command line names it
        result = drive(app, inputs, settings.seconds, settings.in_flight)
        return {**result, "others_cores": watch.stop()["others"]}


# ---- one servable, start to end ----------------------------------------------------------

def hub_overrides(name: str, home: Path, transport: str) -> dict[str, Any]:
    """Batches of up to ``MAX_BATCH`` for ``name`` (and its ``-compiled`` copy); never batch
    the ``-nobatch`` copies. With ``ipc``, clients reach the hub on a Unix socket in
    ``home`` (workers: tcp)."""
    batching = {}
    for base in (name, name + COMPILED):
        batching[ref(base)] = {"max_batch_size": MAX_BATCH}
        batching[ref(base + NOBATCH)] = {"max_batch_size": 1}
    overrides: dict[str, Any] = {"batching": batching}
    if transport == "ipc":
        overrides["client_address"] = f"ipc://{home}/clients.sock"
    return overrides


def bench_servable(name: str, tmp: Path, settings: Settings,
                   say: Callable[[str], None]) -> ServableResult:
    """Publish ``name`` in a hub of its own and take every measurement of it."""
    say(f"[bold]{name}[/bold]: preparing")
    if name == "oqmd_rf":
        say(OQMD_NOTE)
    source = prepare(name, tmp / "servables")
    unbatched = variant(source, tmp / "servables" / (name + NOBATCH), NOBATCH)
    inputs = make_inputs(name, 4096)
    result = ServableResult(name)
    batched_ref, unbatched_ref = ref(name), ref(name + NOBATCH)
    home = tmp / f"hub-{name}"
    with hub_session(home, hub_overrides(name, home, settings.transport)) as session:
        session.client.publish(source)
        session.client.publish(unbatched)
        say(f"{name}: 1 worker; latency layers, batch sweep, memoization")
        session.start_workers(batched_ref, 1, 1)
        raw = TimingClient(session.client.address)
        try:
            with result.watch("latency", session):
                result.latency = latency_layers(raw, batched_ref, inputs, settings)
            with result.watch("sweep", session):
                result.sweep = batch_sweep(session, batched_ref, inputs, settings.sweep_sizes,
                                           settings.sweep_reps)
            with result.watch("memo", session):
                result.memo = memoization(session, raw, batched_ref, inputs[0], settings)
        finally:
            raw.close()
        if name == "noop":
            result.memo["floor"] = one_hop_floor(tmp, inputs[0], settings)
            result.others_cores["floor"] = result.memo["floor"]["others_cores"]
            say(f"{name}: memo hits from a caller with the hub embedded (inproc)")
            result.memo["embedded"] = embedded_memo(tmp, source, inputs[0], settings)
            result.others_cores["embedded"] = result.memo["embedded"]["others_cores"]
        say(f"{name}: {settings.workers} workers; throughput, batching on then off")
        session.start_workers(batched_ref, settings.workers - 1, settings.workers)
        on_off(session, result, "", (batched_ref, unbatched_ref), inputs, settings)
        if name == "oqmd_rf":  # the same forest on the compiled tree path: its own row
            say(f"{name}: again on the compiled tree path (compile_trees: true)")
            copies = [variant(source, tmp / "servables" / (name + COMPILED + suffix),
                              COMPILED + suffix, compile_trees=True)
                      for suffix in ("", NOBATCH)]
            for copy in copies:
                session.client.publish(copy)
            refs = (ref(name + COMPILED), ref(name + COMPILED + NOBATCH))
            session.start_workers(refs[0], settings.workers, settings.workers)
            on_off(session, result, "compiled ", refs, inputs, settings)
        result.hub_stats = session.stats()
    return result


def on_off(session: HubSession, result: ServableResult, prefix: str, refs: tuple[str, str],
           inputs: Sequence[Any], settings: Settings) -> None:
    """Throughput of ``refs[0]`` (batched; its workers already up), then of ``refs[1]``
    (unbatched) on as many workers; ``result.throughput[prefix + "on" / "off"]``."""
    with result.watch(f"throughput {prefix}on", session):
        result.throughput[prefix + "on"] = throughput(session, refs[0], inputs, settings)
    session.stop_workers(refs[0])
    session.start_workers(refs[1], settings.workers, settings.workers)
    with result.watch(f"throughput {prefix}off", session):
        result.throughput[prefix + "off"] = throughput(session, refs[1], inputs, settings)
    session.stop_workers(refs[1])


# ---- main -----------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer requests and shorter windows (a few minutes in all)")
    parser.add_argument("--only", choices=[*NAMES, HTEX], action="append", default=None,
                        help="run only this servable (or 'htex'); may repeat")
    parser.add_argument("--transport", choices=["tcp", "ipc"], default="tcp",
                        help="how the clients reach the hub: loopback tcp (default) or a "
                        "Unix socket (ipc), as a caller on the hub's own node may")
    parser.add_argument("--plot-dir", type=Path, default=RESULTS,
                        help=f"where the PNG figures go (default {RESULTS})")
    parser.add_argument("--json", type=Path, default=RESULTS / "paper_suite.json",
                        help="where the results go (default benchmarks/results/paper_suite.json)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each measurement")
    return parser.parse_args(argv)


def run_all(args: argparse.Namespace, settings: Settings, tmp: Path) -> report.Results:
    console = report.console()
    results = report.Results(settings=vars(settings) | {"quick": args.quick})
    chosen = args.only or [*NAMES, HTEX]
    for name in NAMES:
        if name in chosen:
            result = bench_servable(name, tmp, settings, console.print)
            results.servables[name] = vars(result)
        if name == "noop" and HTEX in chosen:  # right after noop: the same background
            console.print(f"[bold]parsl-htex[/bold]: noop as a python_app, {settings.workers} "
                          f"workers, {settings.in_flight} in flight")
            results.htex = htex_throughput(tmp / "runinfo", settings)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start_run(args.verbose, logger)
    started = time.monotonic()
    settings = Settings.make(args.quick, args.transport)
    with tempfile.TemporaryDirectory(prefix="dlhub-paper-") as tmp:
        results = run_all(args, settings, Path(tmp))
    results.seconds = time.monotonic() - started
    report.show(results)
    report.write_json(results, args.json)
    report.plot_all(results, args.plot_dir)
    targets = report.targets(results)
    targets.report()
    return targets.exit_code()


if __name__ == "__main__":
    sys.exit(main())
