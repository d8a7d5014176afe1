"""Cold start: from process launch to the first answer, for the hub's workers and peers.

    python benchmarks/cold_start.py [--rounds 5] [--cache-dir DIR] [--json OUT.json]

Builds (or finds in the cache) the image of ``demo/add``, starts one hub in this process,
then times, for each mode, from launching its process(es) to the first answer of
``add([1, 2])`` (the request is sent right after the launch; the hub queues it until the
worker is ready). Modes, timed in alternating rounds so that all see the same load:

* ``floor``: ``python -c`` that imports numpy and answers one request over a pipe: the
  least any Python server of this model can cost, with no network and no framework,
* ``hub worker bare``: ``python -m dlhub_hpc.worker`` on the host (runtime ``none``),
* ``hub worker bwrap``: bubblewrap over the image's root filesystem directory,
* ``hub worker ch-run dir`` / ``ch-run sqfs``: Charliecloud over the directory, the SquashFS,
* ``parsl-htex``: a Parsl DFK with one HighThroughputExecutor at Parsl's defaults
  (``parsl.load`` starts the interchange and a one-worker pool) to its first app result,
* ``pytriton``: a PyTriton server process (Triton and the Python model) to its first
  inference answer, where ``nvidia-pytriton`` is installed (the ``bench`` extra).

The image's sha256 check (done once before a batch of workers starts) is timed apart.
Prints a rich table with the median and mean, and each median as a multiple of the floor's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``dlhub_hpc`` importable from the repo
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console
from rich.table import Table

import dlhub_hpc.examples
from dlhub_hpc import Client, Hub, HubConfig
from dlhub_hpc.container.build import BuildResult, ImageBuilder, default_cache_dir
from dlhub_hpc.container.launch import runnable_image
from dlhub_hpc.container.runtimes import get_runtime
from dlhub_hpc.pilot.command import Container, worker_command
from dlhub_hpc.registry.images import ImageRecord

logger = logging.getLogger(__name__)

ADD = Path(dlhub_hpc.examples.__file__).parent / "add"
SERVABLE = "demo/add"
RESULTS = Path(__file__).resolve().parent / "results"
FLOOR = "floor (python -c, numpy, pipe)"
REQUEST = [1.0, 2.0]
# The floor: a fresh interpreter that imports numpy and answers one request on stdin.
FLOOR_CODE = ("import sys, numpy; "
              "print(float(numpy.array(sys.stdin.readline().split(), float).sum()), flush=True)")
console = Console()
Launch = Callable[[], float]  # one cold start: seconds from launch to the first answer


def ready_count(client: Client) -> int:
    return sum(
        1 for w in client.status()["workers"]
        if w["servable"].split("@")[0] == SERVABLE and w["state"] != "loading"
    )


def wait_until(cond: Callable[[], bool], timeout: float, poll: float = 0.005) -> bool:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if cond():
            return True
        time.sleep(poll)
    return False


def stop_group(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM the process group, SIGKILL after 15 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def one_cold_start(client: Client, cmd: list[str]) -> float:
    """Seconds from starting ``cmd`` to the first answer it gives; the worker is then stopped."""
    if not wait_until(lambda: ready_count(client) == 0, 30):
        raise RuntimeError("a previous worker is still registered")
    env = {**os.environ, "USER": os.environ.get("USER", "root")}
    started = time.perf_counter()
    # Its own process group: ch-run over a .sqfs runs the worker as a child that a signal to
    # ch-run alone would not reach.
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        answer = client.submit(SERVABLE, REQUEST, cache=False).result(timeout=120)
        elapsed = time.perf_counter() - started
        if answer != sum(REQUEST):
            raise RuntimeError(f"wrong answer {answer!r} from {' '.join(cmd)}")
        return elapsed
    finally:
        stop_group(proc)


def floor_cold_start() -> float:
    """A bare interpreter that imports numpy and answers one request over a pipe."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", FLOOR_CODE], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(" ".join(map(str, REQUEST)) + "\n")
        proc.stdin.flush()
        answer = proc.stdout.readline()
        elapsed = time.perf_counter() - started
        if float(answer) != sum(REQUEST):
            raise RuntimeError(f"the floor answered {answer!r}")
        return elapsed
    finally:
        stop_group(proc)


def add(numbers: list[float]) -> float:
    return float(sum(numbers))


def htex_cold_start(run_dir: Path) -> float:
    """``parsl.load`` (interchange and a one-worker pool, Parsl's defaults) to a result."""
    from benchmarks.common import htex_app

    started = time.perf_counter()
    with htex_app(run_dir, poll_period=10, func=add) as app:
        answer = app(REQUEST).result(timeout=120)
        elapsed = time.perf_counter() - started
    if answer != sum(REQUEST):
        raise RuntimeError(f"HTEX answered {answer!r}")
    return elapsed


def peer_modes(tmp: Path) -> dict[str, Launch]:
    """The floor, Parsl HTEX and (where installed) PyTriton."""
    modes: dict[str, Launch] = {FLOOR: floor_cold_start}
    runs = iter(range(1_000_000))
    modes["parsl-htex defaults"] = lambda: htex_cold_start(tmp / f"runinfo-{next(runs)}")
    try:
        from benchmarks import pytriton_peer
    except ImportError as exc:  # nvidia-pytriton: the bench extra
        console.print(f"[yellow]skipping pytriton: {exc}")
    else:
        if pytriton_peer.available():
            modes["pytriton"] = pytriton_peer.add_cold_start
        else:
            console.print("[yellow]skipping pytriton: nvidia-pytriton is not installed")
    return modes


def commands(image: BuildResult, hub: Hub) -> dict[str, list[str]]:
    """One worker command per available mode (images verified here, timed separately)."""
    extra = ["--heartbeat-interval", "0.1", "--log-level", "WARNING"]
    modes: dict[str, tuple[str, ImageRecord | None]] = {
        "bare": ("none", None),
        "bwrap": ("bubblewrap", image.images.get("dir")),
        "ch-run dir": ("charliecloud", image.images.get("dir")),
        "ch-run sqfs": ("charliecloud", image.images.get("sqfs")),
    }
    found = {}
    for mode, (runtime, record) in modes.items():
        if not get_runtime(runtime).available():
            console.print(f"[yellow]skipping {mode}: {runtime} is not installed")
            continue
        container = (None if record is None else
                     Container(runtime, runnable_image(runtime, record, verify=False)))
        found[f"hub worker {mode}"] = worker_command(hub.worker_address, SERVABLE, extra=extra,
                                     container=container).argv
    return found


def verify_seconds(image: BuildResult) -> dict[str, float]:
    out: dict[str, float] = {}
    for fmt in ("dir", "sqfs", "sif"):
        if fmt in image.images:
            started = time.perf_counter()
            image.images[fmt].verify()
            out[fmt] = time.perf_counter() - started
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--no-peers", action="store_true", help="only the hub's workers")
    parser.add_argument("--json", type=Path, default=RESULTS / "cold_start.json",
                        help="also write the figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="dlhub-cold-") as tmp:
        config = HubConfig(home=Path(tmp) / "hub", client_address="tcp://127.0.0.1:0",
                           worker_address="tcp://127.0.0.1:0", heartbeat_interval=0.1,
                           heartbeat_timeout=0.6)
        # One hub: ``with Hub(...)`` starts it (``Hub(...).start()`` inside ``with`` would
        # start it a second time on the same home).
        with Hub(config) as hub, Client(hub.client_address, timeout=30) as client:
            client.publish(ADD)
            builder = ImageBuilder(config.home, args.cache_dir or default_cache_dir(),
                                   backend="local", console=console, progress=True)
            image = builder.build(SERVABLE)
            console.print(f"image: {'cached' if image.cached else 'built'} in "
                          f"{image.seconds:.1f} s")
            checks = verify_seconds(image)
            modes: dict[str, Launch] = {} if args.no_peers else peer_modes(Path(tmp))
            for mode, cmd in commands(image, hub).items():
                modes[mode] = lambda cmd=cmd: one_cold_start(client, cmd)  # type: ignore[misc]
            times: dict[str, list[float]] = {mode: [] for mode in modes}
            for _ in range(args.rounds):
                for mode, launch in modes.items():
                    times[mode].append(launch())
    report(times, checks, args.json)
    return 0


def report(times: dict[str, list[float]], checks: dict[str, float], out: Path | None) -> None:
    floor = statistics.median(times[FLOOR]) if times.get(FLOOR) else float("nan")
    table = Table("mode", "n", "median ms", "mean ms", "x floor",
                  title="cold start: process launch to first answer")
    rows = {}
    for mode, values in times.items():
        median = statistics.median(values)
        rows[mode] = {"n": len(values), "median_s": median, "mean_s": statistics.fmean(values),
                      "ratio": median / floor}
        table.add_row(mode, str(len(values)), f"{median * 1000:.0f}",
                      f"{statistics.fmean(values) * 1000:.0f}", f"{median / floor:.2f}")
    console.print(table)
    console.print("sha256 check before starting workers: " + ", ".join(
        f"{fmt} {s * 1000:.0f} ms" for fmt, s in checks.items()))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"cold_start": rows, "verify_s": checks}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
