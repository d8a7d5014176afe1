"""Pools on the command line: ``workers start --pool``, and the pools tables of ``status``."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from dlhub_hpc.errors import ConfigError, HubUnavailable
from dlhub_hpc.servable.pools import DEFAULT_BUDGET, PoolSpec

if TYPE_CHECKING:
    from dlhub_hpc.client import Client

logger = logging.getLogger(__name__)


def servable_or_pool(servable: str | None, pools: tuple[str, ...],
                     budget: int | None) -> str:
    """The ref ``workers start`` asks for: the servable, or ``pool:SPEC[,budget=N]``."""
    if (servable is None) == (not pools):
        raise click.UsageError("give --servable or --pool (one of them)")
    if servable is not None:
        if budget is not None:
            raise click.UsageError("--memory-budget is for pooled workers (--pool)")
        return servable
    try:
        return PoolSpec.parse(",".join(pools), budget or DEFAULT_BUDGET).ref()
    except ConfigError as exc:
        raise click.BadParameter(exc.message, param_hint="--pool") from None


def pool_workers(status: dict[str, Any], ref: str) -> int:
    """Pooled workers of the pool ``ref`` names that have joined the hub."""
    text = PoolSpec.parse(ref.removeprefix("pool:")).text()
    return sum(1 for w in status.get("pools", {}).get("workers", {}).values()
               if w.get("pool") == text)


def wait_for_pool(client: Client, ref: str, count: int, timeout: float) -> None:
    """Block until ``count`` workers of the pool have registered with the hub."""
    deadline = time.monotonic() + timeout
    while (joined := pool_workers(client.status(), ref)) < count:
        if time.monotonic() > deadline:
            raise HubUnavailable(f"{joined} of {count} workers of {ref} joined after {timeout}s; "
                                 "see 'dlhub-hpc status' and the pilot logs", pool=ref)
        time.sleep(0.1)


def _bytes(n: Any) -> str:
    if not isinstance(n, int):
        return "-"
    size, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            break
        size /= 1024
    return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"


def _rate(r: Any) -> str:
    return "-" if r is None else f"{r:.0%}"


def pools_tables(status: dict[str, Any]) -> list[Table]:
    """What each pooled worker holds and each pooled servable's counters, when the hub has
    pooled workers; and why some servables have workers of their own, whenever it says."""
    pools = status.get("pools") or {}
    tables = _pooled_tables(pools) if pools.get("workers") else []
    if pools.get("own_workers"):
        own = Table(title="Servables that get workers of their own")
        own.add_column("servable")
        own.add_column("why")
        for ref, why in sorted(pools["own_workers"].items()):
            own.add_row(ref, why)
        tables.append(own)
    return tables


def _pooled_tables(pools: dict[str, Any]) -> list[Table]:
    held = Table(title="Pooled workers")
    for col in ("worker", "pool", "holds (least recent first)", "held", "budget", "loads",
                "evictions", "hit rate"):
        held.add_column(col)
    for wid, w in pools["workers"].items():
        holds = ", ".join(w["holds"]) + (f" (loading {w['loading']})" if w["loading"] else "")
        held.add_row(wid, w["pool"], holds or "-", _bytes(w["held_bytes"]),
                     _bytes(w["budget"]), str(w["loads"]), str(w["evictions"]),
                     _rate(w["hit_rate"]))
    counters = Table(title="Pooled servables")
    for col in ("servable", "size", "loads", "evictions", "hits", "hit rate", "load failures"):
        counters.add_column(col)
    for ref, c in sorted(pools.get("servables", {}).items()):
        counters.add_row(ref, _bytes(c["bytes"]), str(c["loads"]), str(c["evictions"]),
                         str(c["hits"]), _rate(c["hit_rate"]), str(c["load_failures"]))
    return [held, counters]
