"""The main job on the embedded default: ``python -m dlhub_hpc.demo`` (``make demo``).

Starts a hub on this machine, publishes two example servables (a Python function and a
scikit-learn model saved to a file), starts warm workers for them through a Parsl
``LocalProvider`` pilot, sends requests through the client, prints the answers and a
latency table, and shuts everything down.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.client import Client
from dlhub_hpc.errors import DlhubHpcError
from dlhub_hpc.examples import example_dir, prepare_iris
from dlhub_hpc.hub import Hub

logger = logging.getLogger(__name__)
console = Console()

FLOWERS = np.array([[5.1, 3.5, 1.4, 0.2], [6.0, 2.7, 5.1, 1.6], [6.7, 3.0, 5.2, 2.3]])
SPECIES = ["setosa", "versicolor", "virginica"]


def _latencies(
    client: Client, servable: str, inputs: object, n: int, cache: bool = False
) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.run(servable, inputs, cache=cache)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def _latency_table(rows: dict[str, list[float]]) -> Table:
    table = Table(title="Round-trip latency through the hub (ms)")
    for col in ("servable", "requests", "p50", "p99", "mean"):
        table.add_column(col, justify="left" if col == "servable" else "right")
    table.caption = "worker: every request runs on a warm worker; memo hit: the hub answers"
    for name, times in rows.items():
        ordered = sorted(times)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        table.add_row(name, str(len(times)), f"{statistics.median(times):.3f}", f"{p99:.3f}",
                      f"{statistics.fmean(times):.3f}")
    return table


def run_demo(home: Path, requests: int) -> None:
    config = HubConfig(home=home, client_address="tcp://127.0.0.1:0",
                       worker_address="tcp://127.0.0.1:0")
    with Hub(config) as hub, Client(hub.client_address) as client:
        console.print(f"hub listening at {hub.client_address} (workers: {hub.worker_address})")
        for directory in (example_dir("add"), prepare_iris(home / "src" / "iris")):
            record = client.publish(directory)
            console.print(f"published [bold]{record['name']}@{record['version']}[/]")
        plan = {"demo/add": 2, "demo/iris": 1}
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("starting warm workers (LocalProvider pilot)",
                                     total=sum(plan.values()))
            for servable, n in plan.items():
                client.start_workers(servable, n)
            for servable, n in plan.items():
                client.wait_for_workers(servable, n, timeout=90)
                progress.advance(task, n)
        console.print(f"{sum(plan.values())} workers ready")

        total = client.run("demo/add", [1.5, 2.5, 3.0])
        console.print(f"demo/add [1.5, 2.5, 3.0] -> {total}")
        species = client.run("demo/iris", FLOWERS)
        console.print(f"demo/iris predict -> {[SPECIES[int(s)] for s in species]}")
        proba = client.run("demo/iris", FLOWERS[:1], method="predict_proba")
        console.print(f"demo/iris predict_proba (first flower) -> {np.round(proba[0], 3).tolist()}")
        try:
            client.run("demo/iris", [[1.0, 2.0]])
        except DlhubHpcError as exc:
            console.print(f"a bad input gets a typed error: {type(exc).__name__}: {exc.message}")

        futures = [client.submit("demo/add", [float(i), 1.0]) for i in range(100)]
        answers = sum(f.result() for f in futures)
        console.print(f"100 concurrent requests -> sum of answers {answers}")

        rows = {
            "demo/add (worker)": _latencies(client, "demo/add", [1.0, 2.0], requests),
            "demo/add (memo hit)": _latencies(client, "demo/add", [1.0, 2.0], requests, True),
            "demo/iris (worker)": _latencies(client, "demo/iris", FLOWERS, requests // 4),
        }
        console.print(_latency_table(rows))
        client.stop_workers()
    console.print("hub and workers stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dlhub_hpc.demo", description=__doc__)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--home", type=Path, default=None,
                        help="hub home (default: a temporary directory, removed afterwards)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.home is not None:
        run_demo(args.home, args.requests)
        return
    with tempfile.TemporaryDirectory(prefix="dlhub-demo-") as tmp:
        run_demo(Path(tmp), args.requests)


if __name__ == "__main__":
    main()
