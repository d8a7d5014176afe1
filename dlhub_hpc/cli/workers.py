"""``dlhub-hpc workers start|stop``: pilot blocks of warm workers, run by the hub."""

from __future__ import annotations

import logging

import click

from dlhub_hpc.cli.common import client_from, console
from dlhub_hpc.cli.pools import servable_or_pool, wait_for_pool
from dlhub_hpc.servable.pools import PoolSpec

logger = logging.getLogger(__name__)


@click.group()
def workers() -> None:
    """Start and stop warm workers (pilot blocks owned by the hub)."""


@workers.command("start")
@click.option("-s", "--servable", default=None, help="owner/name[@version] to serve.")
@click.option("--pool", "pools", multiple=True, metavar="SPEC",
              help="Serve a pool instead: owner:NAME, tag:TAG, public, or servable names "
                   "(repeatable, or comma-separated) of one owner.")
@click.option("--memory-budget", type=click.IntRange(min=1), default=None, metavar="BYTES",
              help="A pooled worker's bytes of loaded models; past it the least recently "
                   "used are evicted.")
@click.option("-n", "--count", default=1, show_default=True, type=click.IntRange(min=1),
              help="Workers in the block.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until the workers have loaded the servable (or joined the pool).")
@click.option("--timeout", type=float, default=120.0, show_default=True)
@click.pass_context
def start(ctx: click.Context, servable: str | None, pools: tuple[str, ...],
          memory_budget: int | None, count: int, wait: bool, timeout: float) -> None:
    """Start a block of COUNT workers for a servable, or for a pool of servables."""
    ref = servable_or_pool(servable, pools, memory_budget)
    with client_from(ctx) as client:
        block = client.start_workers(ref, count)
        workers = f"{count} worker{'' if count == 1 else 's'}"
        console.print(f"started {block['block_id']} (job {block['job_id']}): "
                      f"{workers} for {ref}")
        if wait:
            with console.status(f"waiting for {workers} to load {ref}"):
                if servable is not None:
                    client.wait_for_workers(servable, count, timeout=timeout)
                else:
                    wait_for_pool(client, ref, count, timeout)
            console.print("workers ready")


@workers.command("stop")
@click.option("-s", "--servable", default=None, help="Stop the blocks serving this servable.")
@click.option("--pool", default=None, metavar="SPEC", help="Stop the blocks of this pool.")
@click.option("-b", "--block", "blocks", multiple=True, help="Stop this block (repeatable).")
@click.pass_context
def stop(ctx: click.Context, servable: str | None, pool: str | None,
         blocks: tuple[str, ...]) -> None:
    """Stop blocks: those named, or those of a servable or pool, or all of them."""
    if pool is not None:
        servable = PoolSpec.parse(pool).ref()
    with client_from(ctx) as client:
        stopped = client.stop_workers(servable=servable, blocks=list(blocks) or None)
    names = ", ".join(b["block_id"] for b in stopped) or "no blocks"
    console.print(f"stopped {names}")
