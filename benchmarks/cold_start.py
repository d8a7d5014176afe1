"""Cold start of a worker in a container: process start to worker ready, per runtime.

    python benchmarks/cold_start.py [--rounds 5] [--cache-dir DIR] [--json OUT.json]

Builds (or finds in the cache) the image of ``demo/add``, starts a hub in this process,
then starts one worker at a time and times from ``Popen`` to the moment the hub lists the
worker as loaded and serving (polled every 5 ms). Modes, timed in alternating rounds so
that all see the same background load:

* ``bare``: ``python -m dlhub_hpc.worker`` on the host (runtime ``none``): the floor,
* ``bwrap``: bubblewrap over the image's root filesystem directory,
* ``ch-run dir`` and ``ch-run sqfs``: Charliecloud over the directory and the SquashFS file.

The image's sha256 check (done once before a batch of workers starts) is timed apart.
Prints a rich table with the median and mean, and each median as a multiple of bare's.
"""

from __future__ import annotations

import argparse
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
console = Console()


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


def one_cold_start(client: Client, cmd: list[str]) -> float:
    """Seconds from starting ``cmd`` to its worker being ready; the worker is then stopped."""
    if not wait_until(lambda: ready_count(client) == 0, 30):
        raise RuntimeError("a previous worker is still registered")
    env = {**os.environ, "USER": os.environ.get("USER", "root")}
    started = time.perf_counter()
    # Its own process group: ch-run over a .sqfs runs the worker as a child that a signal to
    # ch-run alone would not reach.
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_until(lambda: ready_count(client) >= 1, 120):
            raise RuntimeError(f"no worker became ready: {' '.join(cmd)}")
        return time.perf_counter() - started
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


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
        found[mode] = worker_command(hub.worker_address, SERVABLE, extra=extra,
                                     container=container).argv
    return found


def verify_seconds(image: BuildResult) -> dict[str, float]:
    out = {}
    for fmt in ("dir", "sqfs", "sif"):
        if fmt in image.images:
            started = time.perf_counter()
            image.images[fmt].verify()
            out[fmt] = time.perf_counter() - started
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=RESULTS / "cold_start.json",
                        help="also write the figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="dlhub-cold-") as tmp:
        config = HubConfig(home=Path(tmp) / "hub", client_address="tcp://127.0.0.1:0",
                           worker_address="tcp://127.0.0.1:0", heartbeat_interval=0.1,
                           heartbeat_timeout=0.6)
        with Hub(config).start() as hub, Client(hub.client_address, timeout=30) as client:
            client.publish(ADD)
            builder = ImageBuilder(config.home, args.cache_dir or default_cache_dir(),
                                   backend="local", console=console, progress=True)
            image = builder.build(SERVABLE)
            console.print(f"image: {'cached' if image.cached else 'built'} in "
                          f"{image.seconds:.1f} s")
            checks = verify_seconds(image)
            cmds = commands(image, hub)
            times: dict[str, list[float]] = {mode: [] for mode in cmds}
            for _ in range(args.rounds):
                for mode, cmd in cmds.items():
                    times[mode].append(one_cold_start(client, cmd))
    report(times, checks, args.json)
    return 0


def report(times: dict[str, list[float]], checks: dict[str, float], out: Path | None) -> None:
    floor = statistics.median(times["bare"]) if times.get("bare") else float("nan")
    table = Table("mode", "n", "median ms", "mean ms", "x bare", title="worker cold start")
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
