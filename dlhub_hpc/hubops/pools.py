"""``workers start --pool``: a block of pooled workers, run with one owner's credential.

A pool's workers serve one owner's servables (``dlhub_hpc.servable.pools``): the owner the
pool names (``owner:alice``, or a list of alice's servables), else the admin's own (a
``tag:`` or ``public`` pool). The owner or the admin starts them; they run confined as
that owner's workers do, with that owner's credential, and count against that owner's
``max_workers_per_owner``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from dlhub_hpc.errors import PermissionDenied
from dlhub_hpc.hubops.limits import check_worker_limit, is_admin, pool_owner
from dlhub_hpc.hubops.parts import HubParts
from dlhub_hpc.servable.pools import pool_of

logger = logging.getLogger(__name__)


def start_pool_workers(parts: HubParts, args: dict[str, Any],
                       ref: str) -> Future[dict[str, Any]]:
    """Submit a block of ``args['workers']`` pooled workers for the pool ``ref`` names."""
    pool = pool_of(ref)
    assert pool is not None, ref
    caller = str(args.get("caller", ""))
    owner = pool_owner(parts.security, pool)
    if not is_admin(parts, caller) and caller != owner:
        raise PermissionDenied(
            f"pool {pool.text()} serves {owner}'s servables: {owner} or the hub's admin "
            f"starts its workers, not {caller!r}; a pool of your own is 'owner:{caller}'",
            identity=caller)
    count = int(args.get("workers", 1))
    launch = parts.security.worker_launch("", owner=owner)  # confined unless the admin's
    ref = pool.ref()  # as written by pool_of, so stop and status name it alike

    def start() -> dict[str, Any]:
        check_worker_limit(parts, caller, ref, count)  # one start at a time
        logger.info("%s starts %s pooled workers of %s for %s", caller, count, pool.text(),
                    owner)
        return parts.pilots.start_workers(ref, count, launch).to_dict()

    return parts.executor.submit(start)


def visible_pools(pools: dict[str, Any], sees: Callable[[str], bool]) -> dict[str, Any]:
    """The pools part of ``status``, less the servables the caller may not see."""
    if not pools:
        return {}
    workers = {}
    for wid, w in pools.get("workers", {}).items():
        loading = w.get("loading")
        workers[wid] = {**w, "holds": {r: n for r, n in w.get("holds", {}).items() if sees(r)},
                        "loading": loading if loading and sees(loading) else None}
    return {
        "workers": workers,
        "servables": {r: c for r, c in pools.get("servables", {}).items() if sees(r)},
        "own_workers": {r: why for r, why in pools.get("own_workers", {}).items() if sees(r)},
    }
