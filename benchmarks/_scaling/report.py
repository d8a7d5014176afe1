"""The scaling benchmark's table, JSON and figure."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import zmq

from benchmarks._scaling.measure import Row
from benchmarks.common import pyplot, save_json

BASELINE = 8  # workers: the size the largest one is compared with
TARGET = 1.25  # hub CPU per request at the largest size / at BASELINE, at most


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
        f"{rows[-1].workers} workers); heartbeats every {args.heartbeat_interval:g} s each way, "
        f"spaced out past {args.heartbeats_per_second:g} a second hub-wide (0: never). "
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
