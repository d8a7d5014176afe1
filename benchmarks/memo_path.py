"""Where a memo hit's time goes, and what the transport costs: tcp:// against ipc://.

    python benchmarks/memo_path.py [--rounds 5] [--calls 2000] [--transports tcp,ipc]

Two parts:

* in-process costs of one hit, per step (microseconds): the client encoding the Request,
  the broker decoding it, ``BrokerState.handle`` answering it from the memo cache (resolve,
  input check, key hashing, lookup), its key hashing alone, encoding the Reply, and the
  client decoding it;
* round trips, one request at a time, for each transport, timed in alternating rounds so
  that every path sees the same background load: ``raw floor`` (pyzmq alone: a ROUTER that
  sends the frames back), ``protocol floor`` (a ROUTER that decodes the Request and encodes
  a Reply: what any hub of this shape pays), ``hub hit`` (a real hub answering the noop
  from its memo cache, on a plain blocking DEALER) and ``Client.run`` (the same through the
  public client). The floors run plain and with CurveZMQ, which the hub always uses. The
  hub's workers connect over tcp in both cases; only the client side changes transport.

Target: a memo hit's request p50 (``hub hit`` and ``Client.run hit``, each transport) below
``MEMO_P50_US_TARGET``; the exit status is 1 when one misses it (``TARGET MISSED: ...``).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import psutil
import zmq

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    CpuWatch,
    child_process,
    hub_main,
    quiet_child,
    reap,
    save_json,
    start_run,
    stop_process,
    wait_for_hub,
)
from benchmarks.servables import make_inputs, prepare, ref
from benchmarks.targets import Targets
from dlhub_hpc import Client
from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.broker.events import ServableInfo
from dlhub_hpc.broker.memo import memo_key
from dlhub_hpc.broker.state import BrokerState, FromClient, Tick, ToClient
from dlhub_hpc.protocol import Reply, Request, decode, encode
from dlhub_hpc.security.client import ClientCurve
from dlhub_hpc.security.keys import KeyPair, curve_client, user_keypair
from dlhub_hpc.security.zap import user_id
from dlhub_hpc.servable.types import ArgType

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results"
SERVABLE = ref("noop")
MEMO_P50_US_TARGET = 150.0  # a memo hit's request p50, as in paper_suite.py
# (mode, CurveZMQ?) of the floor processes: raw echo, the protocol, the hub's loop shape
FLOORS = (("raw", False), ("raw", True), ("protocol", True), ("loop", True))


# ---- in-process costs ---------------------------------------------------------------------

def per_call_us(fn: Callable[[], Any], seconds: float = 0.3) -> float:
    """Best of five timings of ``fn``, microseconds per call."""
    number = max(1, int(seconds / 5 / max(timeit.timeit(fn, number=50) / 50, 1e-7)))
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def in_process_costs(payload: Any) -> dict[str, float]:
    """Each step of a memo hit, alone, in this process."""
    state, info = hit_state(payload)
    req = Request("r-1", SERVABLE, None, "", payload, None, True)
    frames = [zmq.Frame(f) for f in encode(req)]
    reply = Reply("r-1", True, payload, None, [0.0, 0.0])
    reply_frames = [zmq.Frame(f) for f in encode(reply)]
    event = FromClient(b"client", req, "")
    hits_before = state.memo.hits
    costs = {
        "client encode Request": per_call_us(lambda: encode(req)),
        "hub decode Request": per_call_us(lambda: decode(frames)),
        "hub state.handle (hit)": per_call_us(lambda: state.handle(event, 0.0)),
        "  of which memo_key": per_call_us(
            lambda: memo_key(info.digest, info.version, "run", payload)),
        "hub encode Reply": per_call_us(lambda: encode(reply)),
        "client decode Reply": per_call_us(lambda: decode(reply_frames)),
    }
    assert state.memo.hits > hits_before, "the in-process hit path missed the cache"
    return costs


# ---- the processes on the other end -------------------------------------------------------

def floor_main(address: str, address_file: str, mode: str, secret: str | None) -> None:
    """A ROUTER on ``address``: ``raw`` sends each message back as it came, ``protocol``
    decodes the Request and answers a Reply with its payload. With ``secret``, a CurveZMQ
    server (no ZAP handler: any client key is let in), as the hub is."""
    quiet_child()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    if secret is not None:
        sock.curve_server = True
        sock.curve_secretkey = secret.encode()
    sock.bind(address)
    Path(address_file).write_text(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    try:
        if mode == "loop":
            serve_like_hub(ctx, sock)
        while True:
            identity, *frames = sock.recv_multipart(copy=False)
            if mode == "raw":
                sock.send_multipart([identity, *frames], copy=False)
                continue
            req = decode(frames)
            assert isinstance(req, Request)
            reply = Reply(req.request_id, True, req.payload, None, [0.0, 0.0])
            sock.send_multipart([identity, *encode(reply)], copy=False)
    finally:
        sock.close(0)
        ctx.term()


def hit_state(payload: Any) -> tuple[BrokerState, ServableInfo]:
    """A BrokerState that knows the noop and has its answer to ``payload`` cached."""
    info = ServableInfo(SERVABLE, 1, "digest-noop-1", {"run": ArgType(type="any")},
                        max_batch_size=16, deterministic=True)
    with tempfile.TemporaryDirectory() as home:
        state = BrokerState(lambda name, version: info, HubConfig(home=Path(home)))
    state.memo.put(memo_key(info.digest, info.version, "run", payload), payload)
    return state, info


def serve_like_hub(ctx: zmq.Context[Any], clients: zmq.Socket[bytes]) -> None:
    """The hub's loop shape (``BrokerServer.run``) around a real ``BrokerState`` whose memo
    cache holds every answer asked for: a Poller over the client and worker ROUTERs and a
    wake-up pipe, a drain that asks EVENTS, decode, the caller's User-Id, ``handle``,
    encode, send. What is left of a hub hit once the hub process's other parts are gone."""
    workers = ctx.socket(zmq.ROUTER)
    workers.setsockopt(zmq.LINGER, 0)
    workers.bind("tcp://127.0.0.1:0")
    wake_r, _ = os.pipe()
    poller = zmq.Poller()
    for item in (clients, workers, wake_r):
        poller.register(item, zmq.POLLIN)
    state, _ = hit_state(make_inputs("noop", 1)[0])
    pollin = int(zmq.POLLIN)
    wait = 1.0
    while True:
        ready = dict(poller.poll(int(wait * 1000)))
        if clients in ready:
            while cast(int, clients.get(zmq.EVENTS)) & pollin:
                frames = clients.recv_multipart(copy=False)
                msg = decode(frames[1:])
                user = user_id(frames[1])
                assert isinstance(msg, Request)
                for action in state.handle(FromClient(frames[0].bytes, msg, user),
                                           time.monotonic()):
                    assert isinstance(action, ToClient)
                    clients.send_multipart([action.identity, *encode(action.message)],
                                           copy=False)
        wait = state.next_wakeup(time.monotonic())
        if wait == 0:
            state.handle(Tick(), time.monotonic())  # heartbeats due: none to send here
            wait = state.next_wakeup(time.monotonic())


def wait_for_file(path: Path, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text():
            return path.read_text()
        time.sleep(0.02)
    raise RuntimeError(f"{path} was not written within {timeout}s")


@contextlib.contextmanager
def floor(tmp: Path, transport: str, mode: str,
          curve: KeyPair | None) -> Iterator[tuple[str, int]]:
    tag = f"{mode}-{'curve' if curve else 'plain'}"
    address = "tcp://127.0.0.1:0" if transport == "tcp" else f"ipc://{tmp}/{tag}.sock"
    address_file = tmp / f"{tag}-{transport}.address"
    with child_process(floor_main, address, str(address_file), mode,
                       curve.secret if curve else None, name=f"{tag}-floor-{transport}") as proc:
        try:
            yield wait_for_file(address_file), proc.pid or 0
        finally:
            stop_process(proc)


@contextlib.contextmanager
def memo_hub(tmp: Path, transport: str, source: Path,
             payload: Any) -> Iterator[tuple[Client, int]]:
    """A hub whose clients connect over ``transport``, with noop's answer to ``payload``
    already in its memo cache (one worker made it)."""
    home = tmp / f"hub-{transport}"
    overrides = {} if transport == "tcp" else {"client_address": f"ipc://{tmp}/hub.sock"}
    worker_pids: set[int] = set()
    with child_process(hub_main, str(home), overrides, name=f"hub-{transport}") as proc:
        try:
            with Client(wait_for_hub(home, proc)) as client:
                client.publish(source)
                client.start_workers(SERVABLE, 1)
                client.wait_for_workers(SERVABLE, 1, timeout=180)
                worker_pids.update(w["pid"] for w in client.status()["workers"])
                client.run(SERVABLE, payload)  # the miss that fills the cache
                yield client, proc.pid or 0
        finally:
            stop_process(proc)
            reap(sorted(worker_pids))


# ---- the client side ------------------------------------------------------------------------

class BlockingCaller:
    """A DEALER that sends a Request and blocks in recv (RCVTIMEO), like ``Client.run``;
    a CurveZMQ client (this user's key pair) of a server with ``server_key``."""

    def __init__(self, address: str, server_key: str | None, echo: bool = False) -> None:
        self._echo = echo  # the raw floor sends the Request itself back
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if server_key is not None:
            curve_client(self._sock, server_key, user_keypair())
        self._sock.setsockopt(zmq.RCVTIMEO, 60_000)
        self._sock.connect(address)
        self._ids = itertools.count()

    def __call__(self, payload: Any) -> Any:
        rid = f"m-{next(self._ids)}"
        self._sock.send_multipart(
            encode(Request(rid, SERVABLE, None, "", payload, None, True)), copy=False)
        reply = decode(self._sock.recv_multipart(copy=False))
        if self._echo:
            return reply
        assert isinstance(reply, Reply) and reply.request_id == rid and reply.ok, reply
        return reply.value

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()


def round_trips(call: Callable[[Any], Any], payload: Any, n: int) -> list[float]:
    clock = time.perf_counter
    times = []
    for _ in range(n):
        t0 = clock()
        call(payload)
        times.append(clock() - t0)
    return times


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid``, all its threads."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def measure(paths: dict[str, Path_], payload: Any, rounds: int,
            calls: int, pin: bool = False) -> dict[str, dict[str, Any]]:
    """Alternating rounds of ``calls`` round trips per path: p50 per round (us), and the
    server process's CPU per call (us; psutil counts 10 ms ticks)."""
    for path in paths.values():
        round_trips(path.call, payload, 200)  # warm up
    p50s: dict[str, list[float]] = {name: [] for name in paths}
    p99s: dict[str, list[float]] = {name: [] for name in paths}
    cpu: dict[str, float] = dict.fromkeys(paths, 0.0)
    watch = CpuWatch()
    for r in range(rounds):
        for name, path in paths.items():
            if pin:  # the caller (and its I/O thread) on one core, the server on the other
                psutil.Process(path.pid).cpu_affinity([1])
                psutil.Process().cpu_affinity([0])
            before = cpu_seconds(path.pid)
            times = sorted(round_trips(path.call, payload, calls))
            cpu[name] += cpu_seconds(path.pid) - before
            p50s[name].append(statistics.median(times) * 1e6)
            p99s[name].append(times[int(0.99 * (len(times) - 1))] * 1e6)
        logger.info("round %d done", r + 1)
    others = watch.stop()["others"]
    return {name: {"p50_us": statistics.median(p50s[name]), "p50_rounds_us": p50s[name],
                   "p99_us": statistics.median(p99s[name]),
                   "server_cpu_us": cpu[name] / (rounds * calls) * 1e6, "others_cores": others}
            for name in paths}


@dataclass(frozen=True)
class Path_:
    call: Callable[[Any], Any]
    pid: int  # the process answering


def transport_paths(tmp: Path, transport: str, source: Path, payload: Any,
                    stack: contextlib.ExitStack) -> dict[str, Path_]:
    paths: dict[str, Path_] = {}
    server = KeyPair.generate()
    for mode, curve in FLOORS:
        address, pid = stack.enter_context(floor(tmp, transport, mode, server if curve else None))
        caller = BlockingCaller(address, server.public if curve else None, echo=mode == "raw")
        stack.callback(caller.close)
        paths[f"{transport} {mode} floor{' +curve' if curve else ''}"] = Path_(caller, pid)
    client, pid = stack.enter_context(memo_hub(tmp, transport, source, payload))
    hit = BlockingCaller(client.address, ClientCurve().server_key_for(client.address))
    stack.callback(hit.close)
    paths[f"{transport} hub hit"] = Path_(hit, pid)
    paths[f"{transport} Client.run hit"] = Path_(lambda x: client.run(SERVABLE, x), pid)
    return paths


# ---- main -----------------------------------------------------------------------------------

def show(costs: dict[str, float], trips: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 100))
    table = Table(title="one memo hit, in process (best of 5)")
    table.add_column("step")
    table.add_column("us", justify="right")
    for step, us in costs.items():
        table.add_row(step, f"{us:.1f}")
    console.print(table)
    table = Table(title="round trips, one at a time (alternating rounds)")
    for col in ("path", "p50 us", "p50 range (rounds)", "p99 us", "server CPU us/call"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for name, m in trips.items():
        table.add_row(name, f"{m['p50_us']:.0f}",
                      f"{min(m['p50_rounds_us']):.0f}-{max(m['p50_rounds_us']):.0f}",
                      f"{m['p99_us']:.0f}", f"{m['server_cpu_us']:.0f}")
    console.print(table)
    others = max((m["others_cores"] for m in trips.values()), default=0.0)
    console.print(f"cores kept busy by other processes meanwhile: {others:.2f} (of 2); "
                  f"target: a memo hit's request p50 < {MEMO_P50_US_TARGET:g} us")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000, help="round trips per path per round")
    parser.add_argument("--transports", default="tcp,ipc")
    parser.add_argument("--pin", action="store_true",
                        help="pin this process to CPU 0 and each server to CPU 1 (2+ cores)")
    parser.add_argument("--json", type=Path, default=RESULTS / "memo_path.json")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    start_run(args.verbose, logger)
    payload = make_inputs("noop", 1)[0]
    costs = in_process_costs(payload)
    with tempfile.TemporaryDirectory(prefix="dlhub-memo-") as tmp_name, \
            contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        source = prepare("noop", tmp / "servables")
        paths: dict[str, Path_] = {}
        for transport in args.transports.split(","):
            paths.update(transport_paths(tmp, transport, source, payload, stack))
        trips = measure(paths, payload, args.rounds, args.calls, args.pin)
    show(costs, trips)
    targets = Targets()
    for name, m in trips.items():
        if name.endswith(" hit"):
            targets.check(f"memo hit request p50, {name}", m["p50_us"], MEMO_P50_US_TARGET,
                          strict=True, unit="us")
    save_json(args.json, {"in_process_us": costs, "round_trips": trips,
                          "targets": targets.as_json(),
                          "settings": vars(args) | {"json": str(args.json)}})
    targets.report()
    return targets.exit_code()


if __name__ == "__main__":
    sys.exit(main())
