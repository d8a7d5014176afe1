"""``dlhub-hpc top``: a live view of the hub, refreshed each second (q or Ctrl-C quits).

Queues and workers come from the hub's status; request rates, latency percentiles and
batch sizes from its /metrics (``hub start --metrics-port``), over the last refresh when
there was one before, else since the hub started. ``--once`` prints one frame.
"""

from __future__ import annotations

import contextlib
import logging
import select
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import click
from rich.console import Group
from rich.table import Table
from rich.text import Text

from dlhub_hpc.cli.common import client_from, console
from dlhub_hpc.errors import PermissionDenied
from dlhub_hpc.hubfile import default_home, read_hub_file
from dlhub_hpc.metrics.reading import ServableMetrics, quantile, read_token, scrape, since

logger = logging.getLogger(__name__)


@dataclass
class Frame:
    """What one refresh shows: the hub's status, and its metrics if it serves them."""

    status: dict[str, Any]
    metrics: dict[str, ServableMetrics] | None
    taken: float


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def visible_metrics(status: dict[str, Any], metrics: dict[str, ServableMetrics] | None
                    ) -> dict[str, ServableMetrics]:
    """The rows of /metrics for servables the caller's status shows: the page names every
    servable the hub serves, and others' private ones are not the caller's to see."""
    shown = {f"{r['name']}@{r['version']}" for r in status.get("published", [])}
    shown |= set(status.get("servables", {}))
    return {ref: m for ref, m in (metrics or {}).items() if ref in shown}


def servables_table(frame: Frame, before: Frame | None) -> Table:
    table = Table(title="Servables", title_justify="left")
    for col in ("servable", "queued", "in flight", "workers", "req/s", "errors",
                "p50 ms", "p95 ms", "p99 ms", "batch"):
        table.add_column(col, justify="left" if col == "servable" else "right")
    queues = frame.status.get("servables", {})
    workers: dict[str, list[str]] = {}
    for w in frame.status.get("workers", []):
        workers.setdefault(w["servable"], []).append(w["state"])
    metrics = visible_metrics(frame.status, frame.metrics)
    for ref in sorted(set(queues) | set(workers) | set(metrics)):
        q = queues.get(ref, {})
        states = workers.get(ref, [])
        m = metrics.get(ref)
        old = (before.metrics or {}).get(ref) if before is not None else None
        rate, window = "-", m.latency_buckets() if m else []
        if m is not None and old is not None and before is not None:
            elapsed = max(frame.taken - before.taken, 1e-9)
            rate = f"{(m.ok + m.errors - old.ok - old.errors) / elapsed:.1f}"
            window = since(window, old.latency_buckets())
        busy = sum(s == "busy" for s in states)
        table.add_row(
            ref, str(q.get("queued", 0)), str(q.get("in_flight", 0)),
            f"{len(states)} ({busy} busy)" if states else "0", rate,
            "-" if m is None else f"{m.errors:.0f}",
            _ms(quantile(0.5, window)), _ms(quantile(0.95, window)),
            _ms(quantile(0.99, window)),
            "-" if m is None or m.mean_batch is None else f"{m.mean_batch:.1f}",
        )
    return table


def workers_table(frame: Frame) -> Table:
    table = Table(title="Workers", title_justify="left")
    for col in ("worker", "servable", "state", "host", "batches", "items"):
        table.add_column(col)
    for w in frame.status.get("workers", []):
        table.add_row(str(w["worker_id"]), w["servable"], w["state"], str(w["host"]),
                      str(w["batches"]), str(w["items"]))
    return table


def render(frame: Frame, before: Frame | None = None) -> Group:
    hub = frame.status.get("hub", {})
    head = Text(f"hub pid {hub.get('pid')} up {hub.get('uptime', 0):.0f}s  "
                f"{time.strftime('%H:%M:%S')}", style="bold")
    note = Text("" if frame.metrics is not None else
                "no metrics: start the hub with --metrics-port for rates and latencies",
                style="dim")
    return Group(head, servables_table(frame, before), workers_table(frame), note,
                 Text("q or Ctrl-C quits", style="dim"))


def take(client: Any, url: str | None, token: str | None = None) -> Frame:
    status = client.status(timeout=10.0)
    return Frame(status, scrape(url, token=token) if url else None, time.monotonic())


@contextlib.contextmanager
def _keys() -> Iterator[bool]:
    """Single key presses from a terminal (False when stdin is not one)."""
    if not sys.stdin.isatty():
        yield False
        return
    import termios
    import tty

    saved = termios.tcgetattr(sys.stdin)
    try:
        tty.setcbreak(sys.stdin.fileno())
        yield True
    finally:
        termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)


def _quit_pressed(wait: float, keys: bool) -> bool:
    if not keys:
        time.sleep(wait)
        return False
    ready, _, _ = select.select([sys.stdin], [], [], wait)
    return bool(ready) and sys.stdin.read(1).lower() == "q"


@click.command()
@click.option("--once", is_flag=True, help="Print one frame and exit.")
@click.option("--interval", type=float, default=1.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--metrics", "metrics_url", default=None, metavar="URL",
              help="The hub's /metrics (default: metrics_url in the running hub's hub.json).")
@click.option("--metrics-token-file", default=None, metavar="FILE",
              help="The hub's metrics token (default: metrics_token_file in hub.json).")
@click.pass_context
def top(ctx: click.Context, once: bool, interval: float, metrics_url: str | None,
        metrics_token_file: str | None) -> None:
    """A live view of servables, queues, batch sizes, latencies and workers."""
    from rich.live import Live

    hub_file = read_hub_file(default_home()) or {}
    url = metrics_url or hub_file.get("metrics_url")
    token = read_token(metrics_token_file or hub_file.get("metrics_token_file"))
    with client_from(ctx, timeout=10.0) as client:
        try:
            frame = take(client, url, token)
        except PermissionDenied as exc:  # not the admin: queues and workers, no rates
            console.print(f"[yellow]{exc.message}[/]")
            url = None
            frame = take(client, url)
        if once:
            console.print(render(frame))
            return
        with Live(render(frame), console=console, refresh_per_second=4) as live, \
                _keys() as keys:
            try:
                while not _quit_pressed(interval, keys):
                    before, frame = frame, take(client, url, token)
                    live.update(render(frame, before))
            except KeyboardInterrupt:
                pass
