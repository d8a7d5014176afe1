"""``dlhub-hpc workers start|stop``: pilot blocks of warm workers, run by the hub."""

from __future__ import annotations

import logging

import click

from dlhub_hpc.cli.common import client_from, console

logger = logging.getLogger(__name__)


@click.group()
def workers() -> None:
    """Start and stop warm workers (pilot blocks owned by the hub)."""


@workers.command("start")
@click.option("-s", "--servable", required=True, help="owner/name[@version] to serve.")
@click.option("-n", "--count", default=1, show_default=True, type=click.IntRange(min=1),
              help="Workers in the block.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until the workers have loaded the servable.")
@click.option("--timeout", type=float, default=120.0, show_default=True)
@click.pass_context
def start(ctx: click.Context, servable: str, count: int, wait: bool, timeout: float) -> None:
    """Start a block of COUNT workers for a servable."""
    with client_from(ctx) as client:
        block = client.start_workers(servable, count)
        workers = f"{count} worker{'' if count == 1 else 's'}"
        console.print(f"started {block['block_id']} (job {block['job_id']}): "
                      f"{workers} for {servable}")
        if wait:
            with console.status(f"waiting for {workers} to load {servable}"):
                client.wait_for_workers(servable, count, timeout=timeout)
            console.print("workers ready")


@workers.command("stop")
@click.option("-s", "--servable", default=None, help="Stop the blocks serving this servable.")
@click.option("-b", "--block", "blocks", multiple=True, help="Stop this block (repeatable).")
@click.pass_context
def stop(ctx: click.Context, servable: str | None, blocks: tuple[str, ...]) -> None:
    """Stop blocks: those named, or those of a servable, or all of them."""
    with client_from(ctx) as client:
        stopped = client.stop_workers(servable=servable, blocks=list(blocks) or None)
    names = ", ".join(b["block_id"] for b in stopped) or "no blocks"
    console.print(f"stopped {names}")
