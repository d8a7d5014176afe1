"""``dlhub-hpc top``: a live view of the hub, refreshed each second (q or Ctrl-C quits).

Queues and workers come from the hub's status; request rates, latency percentiles and
batch sizes from its /metrics (``hub start --metrics-port``), over the last refresh when
there was one before, else since the hub started. ``--once`` prints one frame. A hub that
stops answering is said so, and asked again each refresh until it is back. Names, hosts and
worker ids are shown as plain text (no markup, control characters escaped): workers and
publishers choose them. Each table shows at most ``--rows`` rows, the busiest first.
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
from dlhub_hpc.errors import DlhubHpcError, PermissionDenied
from dlhub_hpc.hubfile import default_home, read_hub_file
from dlhub_hpc.logging_setup import one_line
from dlhub_hpc.metrics.reading import ServableMetrics, quantile, read_token, scrape, since

logger = logging.getLogger(__name__)

ROWS = 50  # per table: rendering thousands of rows each second would stall the view


@dataclass
class Frame:
    """What one refresh shows: the hub's status, and its metrics if it serves them."""

    status: dict[str, Any]
    metrics: dict[str, ServableMetrics] | None
    taken: float


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def _cell(value: object) -> Text:
    """``value`` as plain text: rich would read "[/x]" in a worker's host as markup (and
    fail), and a terminal would obey escape sequences."""
    return Text(one_line(str(value)))


def _caption(shown: int, total: int, what: str) -> str | None:
    if total == 0:
        return f"no {what}"
    if shown < total:
        return f"the {shown} busiest of {total} {what} (--rows shows more)"
    return None


def visible_metrics(status: dict[str, Any], metrics: dict[str, ServableMetrics] | None
                    ) -> dict[str, ServableMetrics]:
    """The rows of /metrics for servables the caller's status shows: the page names every
    servable the hub serves, and others' private ones are not the caller's to see."""
    shown = {f"{r['name']}@{r['version']}" for r in status.get("published", [])}
    shown |= set(status.get("servables", {}))
    return {ref: m for ref, m in (metrics or {}).items() if ref in shown}


def servables_table(frame: Frame, before: Frame | None, rows: int = ROWS) -> Table:
    table = Table(title="Servables", title_justify="left")
    for col in ("servable", "queued", "in flight", "workers", "req/s", "errors",
                "p50 ms", "p95 ms", "p99 ms", "batch"):
        table.add_column(col, justify="left" if col == "servable" else "right")
    queues = frame.status.get("servables", {})
    workers: dict[str, list[str]] = {}
    for w in frame.status.get("workers", []):
        workers.setdefault(w["servable"], []).append(w["state"])
    metrics = visible_metrics(frame.status, frame.metrics)
    refs = set(queues) | set(workers) | set(metrics)

    def load(ref: str) -> tuple[int, int, str]:
        q = queues.get(ref, {})
        return (-int(q.get("queued", 0)) - int(q.get("in_flight", 0)),
                -len(workers.get(ref, [])), ref)

    shown = sorted(refs, key=load)[:max(rows, 0)]
    table.caption = _caption(len(shown), len(refs), "servables")
    for ref in sorted(shown):
        q = queues.get(ref, {})
        states = workers.get(ref, [])
        m = metrics.get(ref)
        old = (before.metrics or {}).get(ref) if before is not None else None
        rate, window = "-", m.latency_buckets() if m else []
        if (m is not None and old is not None and before is not None
                and m.ok + m.errors >= old.ok + old.errors):  # fewer: the hub restarted
            elapsed = max(frame.taken - before.taken, 1e-9)
            rate = f"{(m.ok + m.errors - old.ok - old.errors) / elapsed:.1f}"
            window = since(window, old.latency_buckets())
        busy = sum(s == "busy" for s in states)
        table.add_row(
            _cell(ref), str(q.get("queued", 0)), str(q.get("in_flight", 0)),
            f"{len(states)} ({busy} busy)" if states else "0", rate,
            "-" if m is None else f"{m.errors:.0f}",
            _ms(quantile(0.5, window)), _ms(quantile(0.95, window)),
            _ms(quantile(0.99, window)),
            "-" if m is None or m.mean_batch is None else f"{m.mean_batch:.1f}",
        )
    return table


def workers_table(frame: Frame, rows: int = ROWS) -> Table:
    table = Table(title="Workers", title_justify="left")
    for col in ("worker", "servable", "state", "host", "batches", "items"):
        table.add_column(col)
    every = frame.status.get("workers", [])
    shown = sorted(every, key=lambda w: w["state"] != "busy")[:max(rows, 0)]
    table.caption = _caption(len(shown), len(every), "workers")
    for w in shown:
        table.add_row(*(_cell(w[k]) for k in ("worker_id", "servable", "state", "host",
                                               "batches", "items")))
    return table


def render_gone(error: DlhubHpcError, since_: float | None) -> Group:
    """The frame of a hub that does not answer: why, and that it is asked again."""
    gone = "" if since_ is None else f" for {time.monotonic() - since_:.0f}s"
    return Group(Text(f"{time.strftime('%H:%M:%S')}  the hub does not answer{gone}: "
                      f"{one_line(error.message)}", style="bold yellow"),
                 Text("asking again each refresh; q or Ctrl-C quits", style="dim"))


def render(frame: Frame, before: Frame | None = None, rows: int = ROWS) -> Group:
    hub = frame.status.get("hub", {})
    head = Text(f"hub pid {hub.get('pid')} up {hub.get('uptime', 0):.0f}s  "
                f"{time.strftime('%H:%M:%S')}", style="bold")
    note = Text("" if frame.metrics is not None else
                "no metrics: start the hub with --metrics-port for rates and latencies",
                style="dim")
    return Group(head, servables_table(frame, before, rows), workers_table(frame, rows), note,
                 Text("q or Ctrl-C quits", style="dim"))


def take(client: Any, url: str | None, token: str | None = None,
         timeout: float = 10.0) -> Frame:
    status = client.status(timeout=timeout)
    return Frame(status, scrape(url, token=token) if url else None, time.monotonic())


def refresh(client: Any, url: str | None, token: str | None, before: Frame | None,
            gone_since: float | None, rows: int = ROWS, timeout: float = 10.0
            ) -> tuple[Group, Frame | None, float | None]:
    """The next view, the frame it shows (None: the hub did not answer) and since when the
    hub has not answered: a hub that went away is waited for, not the end of ``top``."""
    try:
        frame = take(client, url, token, timeout)
    except DlhubHpcError as exc:
        since_ = gone_since if gone_since is not None else time.monotonic()
        return render_gone(exc, since_), None, since_
    return render(frame, before, rows), frame, None


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
@click.option("--rows", type=click.IntRange(1), default=ROWS, show_default=True,
              help="Rows per table (the busiest first).")
@click.pass_context
def top(ctx: click.Context, once: bool, interval: float, metrics_url: str | None,
        metrics_token_file: str | None, rows: int) -> None:
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
            console.print(render(frame, rows=rows))
            return
        last: Frame | None = frame
        gone: float | None = None
        wait = max(interval, 2.0)  # a hub that is gone must not freeze the view for long
        with Live(render(frame, rows=rows), console=console, refresh_per_second=4) as live, \
                _keys() as keys:
            try:
                while not _quit_pressed(interval, keys):
                    if gone is not None and url is not None and metrics_url is None:
                        # a restarted hub may serve its metrics on another port
                        url = (read_hub_file(default_home()) or {}).get("metrics_url") or url
                    view, last, gone = refresh(client, url, token, last, gone, rows, wait)
                    live.update(view)
            except KeyboardInterrupt:
                pass
