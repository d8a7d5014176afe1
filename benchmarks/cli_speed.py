"""How long a ``dlhub-hpc`` command takes, beside the imports every client pays for.

    python benchmarks/cli_speed.py [--rounds 7] [--json OUT.json]

Starts a hub in this process (its own home, free ports) serving ``demo/add`` on one warm
worker, then times, in alternating rounds so that all see the same background load, each
as a fresh process from start to exit:

* ``python -c pass``: the interpreter alone (the floor, for reference),
* ``import zmq, msgpack, numpy``: the libraries any client needs,
* ``from dlhub_hpc import Client``: the Python client,
* ``dlhub-hpc --help``,
* ``dlhub-hpc run demo/add [1, i]``: a whole round trip through the hub and a worker.

Prints the best and the median of each and their ratios. Targets (best of the rounds, the
figure least moved by other load): both CLI commands within 1.5x of the client import,
and the client import within 3x of ``import zmq, msgpack, numpy``. Exit status 1 when
one is missed.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``dlhub_hpc`` importable from the repo
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console
from rich.table import Table

from benchmarks.targets import Targets
from dlhub_hpc.examples import example_dir

logger = logging.getLogger(__name__)
console = Console()

CLI_TARGET = 1.5  # CLI command / client import
IMPORT_TARGET = 3.0  # client import / import zmq, msgpack, numpy


def dlhub_command() -> list[str]:
    """The installed ``dlhub-hpc`` script beside this Python, else ``python -m``."""
    script = Path(sys.executable).parent / "dlhub-hpc"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "dlhub_hpc.cli"]


def commands(hub_address: str) -> dict[str, list[str]]:
    py = sys.executable
    cli = dlhub_command()
    return {
        "python -c pass": [py, "-c", "pass"],
        "import zmq, msgpack, numpy": [py, "-c", "import zmq, msgpack, numpy"],
        "from dlhub_hpc import Client": [py, "-c", "from dlhub_hpc import Client"],
        "dlhub-hpc --help": [*cli, "--help"],
        "dlhub-hpc run": [*cli, "--hub", hub_address, "run", "demo/add", "[1, {i}]"],
    }


def time_once(argv: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr}")
    return seconds


def measure(hub_address: str, rounds: int) -> dict[str, list[float]]:
    """Each command once per round, in turn; the run's input changes every round."""
    plan = commands(hub_address)
    times: dict[str, list[float]] = {name: [] for name in plan}
    for i in range(rounds):
        for name, argv in plan.items():
            times[name].append(time_once([a.replace("{i}", str(i)) for a in argv]))
    return times


def report(times: dict[str, list[float]]) -> Table:
    base = min(times["from dlhub_hpc import Client"])
    table = Table(title="Fresh process, start to exit (s)")
    for col in ("command", "best", "median", "best / client import"):
        table.add_column(col, justify="left" if col == "command" else "right")
    for name, ts in times.items():
        table.add_row(name, f"{min(ts):.3f}", f"{statistics.median(ts):.3f}",
                      f"{min(ts) / base:.2f}x")
    return table


def check(times: dict[str, list[float]]) -> Targets:
    best = {name: min(ts) for name, ts in times.items()}
    client = best["from dlhub_hpc import Client"]
    targets = Targets()
    for name in ("dlhub-hpc --help", "dlhub-hpc run"):
        targets.check(f"{name} / client import", best[name] / client, CLI_TARGET, unit="x")
    targets.check("client import / import zmq, msgpack, numpy",
                  client / best["import zmq, msgpack, numpy"], IMPORT_TARGET, unit="x")
    return targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="times each command runs")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    from dlhub_hpc import Client, Hub, HubConfig

    with tempfile.TemporaryDirectory(prefix="dlhub-cli-speed-") as tmp:
        config = HubConfig(home=Path(tmp), client_address="tcp://127.0.0.1:0",
                           worker_address="tcp://127.0.0.1:0")
        with Hub(config) as hub, Client(hub.client_address, timeout=60) as client:
            client.publish(example_dir("add"))
            client.start_workers("demo/add", 1)
            client.wait_for_workers("demo/add", 1, timeout=120)
            measure(hub.client_address, 1)  # warm the file cache; not counted
            times = measure(hub.client_address, args.rounds)
    console.print(report(times))
    targets = check(times)
    targets.report(console.print)
    if args.json:
        args.json.write_text(json.dumps({"seconds": times, "targets": targets.as_json()},
                                        indent=2))
    sys.exit(targets.exit_code())


if __name__ == "__main__":
    main()
