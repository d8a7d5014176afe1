"""The Open Inference Protocol gateway beside PyTriton's HTTP endpoint, and beside the
native ``Client``: p50 latency and throughput on the same workloads, in the same run.

    python benchmarks/gateway.py [--requests N] [--concurrency C] [--pytriton-python PATH]

Paths (each an identity model, each a separate process from this one):

* ``native``: ``Client.run("demo/noop", x)`` through a hub process and one warm worker.
* ``gateway``: ``tritonclient.http`` -> ``dlhub-hpc gateway start`` -> the same hub and
  worker, with a bearer token, binary tensor data both ways.
* ``gateway grpc``: ``tritonclient.grpc`` -> the same gateway process's gRPC endpoint
  (``--grpc-port``), raw tensor contents both ways.
* ``pytriton``: ``tritonclient.http`` -> PyTriton's HTTP endpoint (Triton server + its
  Python backend) serving an identity model, binary tensor data both ways.
* the gateway's two legs alone, its floor: ``floor http`` is ``tritonclient.http`` -> a
  minimal aiohttp handler (uvloop where installed, as the gateway) that echoes the binary
  tensor back with its own JSON header, no hub; ``floor hub`` is ``AsyncClient.run`` (the
  gateway's connection to the hub) to the same hub and worker. Their p50s added up are
  what the gateway could reach doing no work of its own.

Workloads: ``no-op`` (one FP32 value), ``vector`` (256 FP32 values) and ``large``
(``--large-mib`` MiB of FP32, latency only: a detector frame or a field from a simulation;
on the hub's node the gateway's connection passes it as a memfd). Latency: one
request at a time, the paths timed in alternating rounds so they see the same background
load. Throughput: ``--concurrency`` threads, each with its own HTTP client (one shared
``Client`` for the native path), for a fixed number of requests.

PyTriton needs numpy<2 and the system's Python (its backend embeds the system libpython):
it runs from its own venv, ``.venv-pytriton-bench`` (``make pytriton-env``), or the Python
named with ``--pytriton-python`` or $DLHUB_HPC_PYTRITON_PYTHON; without one its rows are
not run. This side needs the ``bench`` extra (aiohttp, uvloop, orjson, tritonclient[http,grpc]).
Targets: the gateway's no-op p50 at most 1.5x the native Client's; the gateway ahead of
PyTriton on p50 and throughput, on both workloads. Figures go to
benchmarks/results/gateway.json.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    child_process,
    hub_main,
    percentile,
    reap,
    save_json,
    start_run,
    stop_process,
    wait_for_hub,
)
from benchmarks.targets import Targets

logger = logging.getLogger("benchmarks.gateway")

RESULTS = Path(__file__).parent / "results" / "gateway.json"
WORKLOADS = {"no-op": 1, "vector": 256}
Call = Callable[[np.ndarray], np.ndarray]
MakeCall = Callable[[], Call]  # one per thread


class Streamed(NamedTuple):
    """A path measured as a rate with a window of requests in flight on one connection:
    ``rate(x, n, in_flight)`` is requests per second for ``n`` requests."""

    rate: Callable[[np.ndarray, int, int], float]


BenchPath = MakeCall | Streamed


def free_port(count: int = 1) -> int:
    """A port with ``count`` free ports from it on (PyTriton takes three)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + count < 65536 and all(_free(port + i) for i in range(1, count)):
            return port
    raise RuntimeError("no free ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def http_call(url: str, model: str, token: str | None, batch_dim: bool) -> MakeCall:
    """A ``tritonclient.http`` caller of ``model`` at ``url`` (binary tensors both ways)."""
    import tritonclient.http as httpclient

    headers = {"Authorization": f"Bearer {token}"} if token else None

    def make() -> Call:
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))

        def call(x: np.ndarray) -> np.ndarray:
            data = x[np.newaxis] if batch_dim else x
            tensor = httpclient.InferInput("input", list(data.shape), "FP32")
            tensor.set_data_from_numpy(data, binary_data=True)
            out = httpclient.InferRequestedOutput("output", binary_data=True)
            result = client.infer(model, [tensor], outputs=[out], headers=headers)
            return result.as_numpy("output")

        return call

    return make


def grpc_stream(address: str, model: str, token: str | None, batch_dim: bool) -> Streamed:
    """``tritonclient.grpc``'s stream API (``start_stream`` / ``async_stream_infer``) with
    ``in_flight`` requests outstanding on one stream."""
    import tritonclient.grpc as grpcclient

    headers = {"authorization": f"Bearer {token}"} if token else None

    def rate(x: np.ndarray, n: int, in_flight: int) -> float:
        data = x[np.newaxis] if batch_dim else x
        tensor = grpcclient.InferInput("input", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        room, lock, done = threading.Semaphore(in_flight), threading.Lock(), threading.Event()
        answered, failed = [0], []

        def callback(result: Any, error: Any) -> None:
            with lock:
                answered[0] += 1
                if error is not None:
                    failed.append(error)
                elif not np.array_equal(result.as_numpy("output").reshape(-1), x):
                    failed.append("an answer that is not its input")
                if answered[0] == n:
                    done.set()
            room.release()

        client = grpcclient.InferenceServerClient(address)
        try:
            client.start_stream(callback, headers=headers)
            start = time.perf_counter()
            for i in range(n):
                room.acquire()
                client.async_stream_infer(model, [tensor], request_id=str(i))
            if not done.wait(600):
                raise RuntimeError(f"the stream to {address} answered {answered[0]} of {n}")
            elapsed = time.perf_counter() - start
            client.stop_stream()
        finally:
            client.close()
        if failed:
            raise RuntimeError(f"the stream to {address} failed: {failed[0]}")
        return n / elapsed

    return Streamed(rate)


def map_rate(client: Any, servable: str) -> Streamed:
    """``Client.map`` with ``in_flight`` requests outstanding on its socket."""
    def rate(x: np.ndarray, n: int, in_flight: int) -> float:
        start = time.perf_counter()
        for y in client.map(servable, (x for _ in range(n)), in_flight=in_flight, cache=False):
            if not np.array_equal(np.asarray(y), x):
                raise RuntimeError("an answer that is not its input")
        return n / (time.perf_counter() - start)

    return Streamed(rate)


def grpc_call(address: str, model: str, token: str) -> MakeCall:
    """A ``tritonclient.grpc`` caller of ``model`` at ``address`` (HOST:PORT)."""
    import tritonclient.grpc as grpcclient

    headers = {"authorization": f"Bearer {token}"}

    def make() -> Call:
        client = grpcclient.InferenceServerClient(address)

        def call(x: np.ndarray) -> np.ndarray:
            tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            result = client.infer(model, [tensor], headers=headers)
            return result.as_numpy("output")

        return call

    return make


@contextlib.contextmanager
def dlhub_paths(home: Path) -> Iterator[dict[str, BenchPath]]:
    """A hub process with demo/noop and one warm worker, and a gateway process before it
    (REST and gRPC)."""
    from dlhub_hpc import Client
    from dlhub_hpc.examples import example_dir

    worker_pids: list[int] = []
    with child_process(hub_main, str(home), {}, name="hub") as proc:
        gateway = None
        try:
            address = wait_for_hub(home, proc)
            client = Client(address, timeout=60)
            client.publish(example_dir("noop"))
            client.start_workers("demo/noop", 1)
            client.wait_for_workers("demo/noop", 1)
            worker_pids = [w["pid"] for w in client.status()["workers"]]
            token = client.control("tokens", action="create", identity=getpass.getuser(),
                                   note="benchmark")["token"]
            gateway = subprocess.Popen(
                [sys.executable, "-m", "dlhub_hpc.cli", "--hub", address, "gateway", "start",
                 "--port", "0", "--grpc-port", "0"], stdout=subprocess.PIPE, text=True)
            assert gateway.stdout is not None
            url, grpc_url = (gateway.stdout.readline() for _ in range(2))  # REST, then gRPC
            if not grpc_url.startswith("gateway listening on grpc://"):
                raise RuntimeError(f"the gateway did not start: {url!r} {grpc_url!r}")
            grpc_address = grpc_url.split()[-1].removeprefix("grpc://")
            yield {"native": lambda: lambda x: client.run("demo/noop", x, cache=False),
                   "gateway": http_call(url.split()[-1], "demo/noop", token, batch_dim=False),
                   "gateway grpc": grpc_call(grpc_address, "demo/noop", token),
                   "native map": map_rate(client, "demo/noop"),
                   "gateway grpc stream": grpc_stream(grpc_address, "demo/noop", token,
                                                      batch_dim=False)}
            client.close()
        finally:
            if gateway is not None:
                gateway.terminate()
                gateway.wait(timeout=30)
            stop_process(proc)
            reap(worker_pids)


def floor_server(port: int) -> None:
    """An HTTP server that answers an inference request with its own tensor: the HTTP leg
    with nothing of the gateway's in it (child process)."""
    import asyncio
    import json

    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        size = int(request.headers["Inference-Header-Content-Length"])
        tensor = json.loads(body[:size])["inputs"][0]
        head = json.dumps({"model_name": "floor", "model_version": "1", "outputs": [
            {"name": "output", "datatype": tensor["datatype"], "shape": tensor["shape"],
             "parameters": {"binary_data_size": len(body) - size}}]}).encode()
        return web.Response(body=head + body[size:], content_type="application/octet-stream",
                            headers={"Inference-Header-Content-Length": str(len(head))})

    async def serve() -> None:
        app = web.Application(client_max_size=2**30)  # large tensors too
        app.router.add_post("/v2/models/floor/infer", echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    try:
        import uvloop
    except ImportError:
        asyncio.run(serve())
    else:
        uvloop.run(serve())


@contextlib.contextmanager
def floor_paths(address: str) -> Iterator[dict[str, BenchPath]]:
    """The gateway's two legs, each alone: HTTP to a bare echo, and AsyncClient to the hub
    at ``address``."""
    import asyncio

    from dlhub_hpc.async_client import AsyncClient

    port = free_port()
    with child_process(floor_server, port, name="http-floor"):
        url = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while _free(port):
            if time.monotonic() > deadline:
                raise RuntimeError("the HTTP floor's server did not listen")
            time.sleep(0.05)

        opened: list[tuple[asyncio.AbstractEventLoop, AsyncClient]] = []

        def hub_leg() -> Call:
            loop = asyncio.new_event_loop()  # one per calling thread, as the gateway has one
            client = AsyncClient(address, timeout=60)
            opened.append((loop, client))

            def call(x: np.ndarray) -> np.ndarray:
                return np.asarray(loop.run_until_complete(
                    client.run("demo/noop", x, cache=False)))

            return call

        try:
            yield {"floor http": http_call(f"http://{url}", "floor", None, batch_dim=False),
                   "floor hub": hub_leg}
        finally:
            for loop, client in opened:  # the callers' threads are done with them
                loop.run_until_complete(client.close())
                loop.close()


@contextlib.contextmanager
def pytriton_path(python: str | None) -> Iterator[dict[str, BenchPath]]:
    """PyTriton serving an identity model, or nothing when no Python with it is given."""
    if not python:
        logger.warning("no Python with nvidia-pytriton (--pytriton-python or "
                       "$DLHUB_HPC_PYTRITON_PYTHON): the PyTriton rows are not run")
        yield {}
        return
    port = free_port(3)
    server = Path(__file__).parent / "_pytriton" / "server.py"
    proc = subprocess.Popen([python, str(server), str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        tail: list[str] = []  # Triton logs on stdout too: read up to the ready line, then drain it
        for line in proc.stdout:
            if line.startswith("pytriton ready"):
                break
            tail = [*tail[-20:], line]
        else:
            raise RuntimeError(f"PyTriton did not start (exit {proc.poll()}): {''.join(tail)}")
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        yield {"pytriton": http_call(f"http://127.0.0.1:{port}", "noop", None, batch_dim=True),
               "pytriton grpc stream": grpc_stream(f"127.0.0.1:{port + 1}", "noop", None,
                                                   batch_dim=True)}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def latencies(calls: dict[str, Call], x: np.ndarray, n: int, rounds: int, warm: int = 50
              ) -> dict[str, list[float]]:
    """Seconds per request, the paths taking turns round by round."""
    out: dict[str, list[float]] = {name: [] for name in calls}
    for name, call in calls.items():  # warm up, and check the answer is the input
        for _ in range(warm):
            got = call(x)
        if not np.array_equal(np.asarray(got).reshape(-1), x):
            raise RuntimeError(f"{name} did not echo its input")
    for _ in range(rounds):
        for name, call in calls.items():
            for _ in range(n // rounds):
                start = time.perf_counter()
                call(x)
                out[name].append(time.perf_counter() - start)
    return out


def throughput(make: MakeCall, x: np.ndarray, n: int, threads: int, shared: bool) -> float:
    """Requests per second with ``threads`` callers making ``n`` requests in all."""
    one = make() if shared else None
    callers = [one or make() for _ in range(threads)]
    ready = threading.Barrier(threads + 1)

    def work(call: Call) -> None:
        ready.wait()
        for _ in range(n // threads):
            call(x)

    pool = [threading.Thread(target=work, args=(c,)) for c in callers]
    for t in pool:
        t.start()
    ready.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    return (n // threads) * threads / (time.perf_counter() - start)


def stream_rates(streams: dict[str, Streamed], x: np.ndarray, n: int, rounds: int,
                 in_flight: int) -> dict[str, float]:
    """Each windowed path's median rate over ``rounds``, the paths taking turns."""
    rates: dict[str, list[float]] = {name: [] for name in streams}
    for path in streams.values():  # warm up
        path.rate(x, min(n, 200), in_flight)
    for _ in range(rounds):
        for name, path in streams.items():
            rates[name].append(path.rate(x, max(n // rounds, in_flight), in_flight))
    return {name: float(np.median(r)) for name, r in rates.items()}


def measure(paths: dict[str, BenchPath], args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    streams = {name: p for name, p in paths.items() if isinstance(p, Streamed)}
    makers = {name: p for name, p in paths.items() if not isinstance(p, Streamed)}
    calls = {name: make() for name, make in makers.items()}
    for workload, size in WORKLOADS.items():
        x = np.random.default_rng(0).random(size, dtype=np.float32)
        for name, rate in stream_rates(streams, x, args.requests, args.rounds,
                                       args.in_flight).items():
            figures[f"{name} {workload}"] = {"p50_ms": None, "p99_ms": None,
                                             "throughput_rps": rate, "in_flight": args.in_flight}
        times = latencies(calls, x, args.requests, args.rounds)
        for name in makers:
            rps = throughput(makers[name], x, args.requests, args.concurrency,
                             shared=name == "native")
            figures[f"{name} {workload}"] = {
                "p50_ms": percentile(times[name], 50) * 1e3,
                "p99_ms": percentile(times[name], 99) * 1e3,
                "throughput_rps": rps, "requests": len(times[name]),
                "concurrency": args.concurrency,
            }
            logger.info("%s %s: %s", name, workload, figures[f"{name} {workload}"])
    if args.large_mib > 0:
        x = np.random.default_rng(0).random(args.large_mib * 2**18, dtype=np.float32)
        n = args.large_requests
        times = latencies(calls, x, n, min(args.rounds, n), warm=2)
        for name in makers:
            figures[f"{name} large"] = {
                "p50_ms": percentile(times[name], 50) * 1e3,
                "p99_ms": percentile(times[name], 99) * 1e3,
                "throughput_rps": None, "requests": len(times[name]), "mib": args.large_mib}
    return figures


def check_targets(figures: dict[str, Any]) -> Targets:
    targets = Targets()

    def get(path: str, workload: str, key: str) -> float | None:
        row = figures.get(f"{path} {workload}")
        return None if row is None else float(row[key])

    gw, native = get("gateway", "no-op", "p50_ms"), get("native", "no-op", "p50_ms")
    targets.check("gateway / native Client p50, no-op", None if gw is None or native is None
                  else gw / native, 1.5, unit="x")
    for workload in WORKLOADS:
        for key, better, unit in (("p50_ms", "lower", "x"), ("throughput_rps", "higher", "x")):
            mine, theirs = get("gateway", workload, key), get("pytriton", workload, key)
            ratio = None if mine is None or theirs is None else mine / theirs
            targets.check(f"gateway / PyTriton HTTP {key.split('_')[0]}, {workload}", ratio,
                          1.0, better, strict=True, unit=unit)  # type: ignore[arg-type]
    return targets


def print_table(figures: dict[str, Any]) -> None:
    def cell(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    print(f"{'path':<28}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}")
    for name, row in figures.items():
        print(f"{name:<28}{cell(row['p50_ms'], '.3f'):>10}{cell(row['p99_ms'], '.3f'):>10}"
              f"{cell(row['throughput_rps'], '.0f'):>10}")


def print_floors(figures: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The gateway's two legs added up beside the native path and the gateway itself."""
    out = {}
    for workload in [w for w in (*WORKLOADS, "large") if f"gateway {w}" in figures]:
        p50 = {path: figures[f"{path} {workload}"]["p50_ms"]
               for path in ("floor http", "floor hub", "native", "gateway")}
        legs = p50["floor http"] + p50["floor hub"]
        out[workload] = {"legs_ms": legs, "legs_vs_native": legs / p50["native"],
                         "gateway_own_ms": p50["gateway"] - legs}
        print(f"floor, {workload}: HTTP leg {p50['floor http']:.3f} + hub leg "
              f"{p50['floor hub']:.3f} = {legs:.3f} ms, {legs / p50['native']:.2f}x the native "
              f"Client; the gateway's own work adds {p50['gateway'] - legs:.3f} ms")
    return out


def hub_address(home: Path) -> str:
    return str(json.loads((home / "hub.json").read_text())["client_address"])


def default_pytriton_python() -> str | None:
    named = os.environ.get("DLHUB_HPC_PYTRITON_PYTHON")
    made = Path(__file__).resolve().parents[1] / ".venv-pytriton-bench" / "bin" / "python"
    return named or (str(made) if made.exists() else None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="per path and workload")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--in-flight", type=int, default=32,
                        help="requests outstanding on one stream or map (the windowed rows)")
    parser.add_argument("--large-mib", type=int, default=16,
                        help="the large workload's size in MiB of FP32 (0: not run)")
    parser.add_argument("--large-requests", type=int, default=20)
    parser.add_argument("--pytriton-python", default=default_pytriton_python(),
                        help="a Python with nvidia-pytriton (default: $DLHUB_HPC_PYTRITON_PYTHON,"
                        " else .venv-pytriton-bench's from 'make pytriton-env')")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    start_run(args.verbose, logger)
    if args.pytriton_python and not Path(args.pytriton_python).exists():
        parser.error(f"--pytriton-python {args.pytriton_python} does not exist; make it with "
                     "'make pytriton-env', or leave the option out to run without PyTriton")
    with tempfile.TemporaryDirectory(prefix="dlhub-gateway-bench-") as tmp, \
            dlhub_paths(Path(tmp) / "home") as ours, \
            floor_paths(hub_address(Path(tmp) / "home")) as floors, \
            pytriton_path(args.pytriton_python) as pt:
        figures = measure({**ours, **floors, **pt}, args)
    print_table(figures)
    floors_seen = print_floors(figures)
    targets = check_targets(figures)
    targets.report()
    save_json(RESULTS, {"figures": figures, "floors": floors_seen, "targets": targets.as_json(),
                        "requests": args.requests, "concurrency": args.concurrency,
                        "pytriton": bool(args.pytriton_python)})
    return targets.exit_code()


if __name__ == "__main__":
    sys.exit(main())
