"""``dlhub-hpc pilot start|status|stop``: pilot jobs from site profiles, run by the hub."""

from __future__ import annotations

import logging
import time
from typing import Any

import click
from rich.table import Table

from dlhub_hpc.cli.common import client_from, console, to_json

logger = logging.getLogger(__name__)


@click.group()
def pilot() -> None:
    """Start, watch and stop pilot jobs (blocks of warm workers on a batch scheduler)."""


@pilot.command("start")
@click.option("-p", "--profile", default="local", show_default=True,
              help="Site profile: a name from 'dlhub-hpc profiles list', or a .yaml path.")
@click.option("-s", "--servable", default=None, help="owner/name[@version] to serve.")
@click.option("--pool", "pools", multiple=True, metavar="SPEC",
              help="Serve a pool instead (as 'workers start --pool'): owner:NAME, tag:TAG, "
                   "public, or servable names of one owner.")
@click.option("--memory-budget", type=click.IntRange(min=1), default=None, metavar="BYTES",
              help="A pooled worker's bytes of loaded models.")
@click.option("-n", "--nodes", type=click.IntRange(min=1), default=None,
              help="Nodes per block (default: the profile's).")
@click.option("--wait/--no-wait", default=False, show_default=True,
              help="Wait until a worker of the pilot has loaded the servable.")
@click.option("--timeout", type=float, default=600.0, show_default=True,
              help="Seconds to wait with --wait (queue time included).")
@click.pass_context
def start(ctx: click.Context, profile: str, servable: str | None, pools: tuple[str, ...],
          memory_budget: int | None, nodes: int | None, wait: bool, timeout: float) -> None:
    """Start a pilot for a servable (or a pool): its first blocks now, more as the load asks
    (a pool's pilot keeps the profile's min_blocks)."""
    from dlhub_hpc.cli.pools import servable_or_pool, wait_for_pool

    t0 = time.monotonic()
    ref = servable_or_pool(servable, pools, memory_budget)
    with client_from(ctx) as client:
        info = client.start_pilot(ref, profile, nodes=nodes)
        jobs = ", ".join(f"{b['block_id']} (job {b['job_id']})" for b in info["blocks"])
        console.print(f"started {info['pilot_id']} for {info['servable']} on "
                      f"{info['profile']} ({info['provider']}): {jobs}")
        if wait:
            with console.status(f"waiting for a worker of {info['pilot_id']}"):
                if servable is None:
                    wait_for_pool(client, ref, 1, timeout)
                else:
                    wait_for_pilot(client, info["pilot_id"], info["servable"], timeout)
            console.print(f"first worker ready after {time.monotonic() - t0:.1f}s")


def wait_for_pilot(client: Any, pilot_id: str, servable: str, timeout: float) -> None:
    """Until a worker of ``servable`` serves; ``PilotError`` at once, with the pilot's last
    events, when the pilot gave up (halted) or is gone, and the load error when it failed."""
    from dlhub_hpc.client import raise_load_failure, workers_missing, workers_ready
    from dlhub_hpc.errors import PilotError

    deadline = time.monotonic() + timeout
    while True:
        status = client.status()
        ready = workers_ready(status, servable)
        if ready >= 1:
            return
        raise_load_failure(status, servable)
        mine = [p for p in client.pilot_status() if p["pilot_id"] == pilot_id]
        if not mine or mine[0]["halted"]:
            events = "; ".join(mine[0]["events"][-5:]) if mine else "none"
            why = "gave up (halted)" if mine else "is no longer running"
            raise PilotError(f"{pilot_id} {why} before a worker of {servable} connected; "
                             f"its last events: {events}", pilot=pilot_id)
        if time.monotonic() > deadline:
            raise workers_missing(servable, ready, 1, timeout)
        time.sleep(0.2)


def _blocks_table(pilots: list[dict[str, Any]]) -> Table:
    table = Table(title="Pilot blocks")
    for col in ("pilot", "profile", "servable", "block", "job", "state", "workers",
                "connected", "busy", "walltime left", "note"):
        table.add_column(col)
    now = time.time()
    for p in pilots:
        for b in p["blocks"]:
            left = "-"
            if p["walltime"] and b["started_at"]:
                left = f"{max(p['walltime'] - (now - b['started_at']), 0):.0f}s"
            note = "replaced" if b["replaced"] else "stopping" if b["stopping"] else b["reason"]
            table.add_row(p["pilot_id"], p["profile"], p["servable"], b["block_id"],
                          b["job_id"], b["state"], str(b["workers"]), str(b["connected"]),
                          str(b["busy"]), left, note)
    return table


@pilot.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
@click.option("--events", is_flag=True, help="Also print each pilot's recent scaling events.")
@click.pass_context
def status(ctx: click.Context, as_json: bool, events: bool) -> None:
    """Show every pilot and its blocks (provider state, connected and busy workers)."""
    with client_from(ctx) as client:
        pilots = client.pilot_status()
    if as_json:
        click.echo(to_json(pilots))
        return
    if not pilots:
        console.print("no pilots; start one with 'dlhub-hpc pilot start --profile P -s S'")
        return
    console.print(_blocks_table(pilots))
    for p in pilots:
        gpus = p["gpus"]
        binding = "" if not gpus else f"; GPUs {','.join(gpus['devices'])} via {gpus['env']}"
        halted = ("; [red]halted[/]: blocks kept failing before a worker connected "
                  "(see --events)") if p["halted"] else ""
        console.print(f"{p['pilot_id']}: blocks {p['min_blocks']}-{p['max_blocks']}, "
                      f"ranks {p['ranks']}{binding}{halted}")
        if events:
            for line in p["events"]:
                console.print(f"  {line}")


@pilot.command("stop")
@click.argument("pilot_ids", nargs=-1, metavar="[PILOT]...")
@click.option("-s", "--servable", default=None, help="Stop the pilots serving this servable.")
@click.pass_context
def stop(ctx: click.Context, pilot_ids: tuple[str, ...], servable: str | None) -> None:
    """Stop pilots (cancel their blocks): those named, those of a servable, or all."""
    with client_from(ctx) as client:
        stopped = client.stop_pilot(list(pilot_ids) or None, servable)
    for p in stopped:
        console.print(f"stopped {p['pilot_id']} ({p['servable']} on {p['profile']})")
    if not stopped:
        console.print("no pilots to stop")
