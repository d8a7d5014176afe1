"""``workers start --pool`` and ``pilot start --pool``: pooled workers, run with one
owner's credential.

A pool's workers serve one owner's servables (``dlhub_hpc.servable.pools``), and those
whose owners allowed that owner's pools (``dlhub-hpc pooling``): the owner the pool names
(``owner:alice``; a list: its starter, when each servable it names is the starter's or
allows it), else the admin's own (a ``tag:`` or ``public`` pool). The owner or the admin
starts them; they run confined as that owner's workers do, with that owner's credential,
and count against that owner's ``max_workers_per_owner``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from dlhub_hpc.errors import InvalidInput, PermissionDenied, PilotError
from dlhub_hpc.hubops.limits import check_worker_limit, is_admin, pool_owner
from dlhub_hpc.hubops.parts import HubParts
from dlhub_hpc.hubops.visibility import Viewer
from dlhub_hpc.pilot.pilots import Pilot, hub_address_for_workers
from dlhub_hpc.pilot.profiles import SiteProfile
from dlhub_hpc.pilot.service import PilotService
from dlhub_hpc.servable.pools import PoolSpec, pool_of

logger = logging.getLogger(__name__)


def _check_starter(parts: HubParts, args: dict[str, Any], ref: str, what: str,
                   hint: Callable[[str], str] = lambda caller: "",
                   ) -> tuple[PoolSpec, str, str]:
    """The pool ``ref`` names, the caller and the pool's owner; refused unless the caller
    is that owner or the admin, who alone start its ``what`` (workers, pilots)."""
    pool = pool_of(ref)
    assert pool is not None, ref
    caller = str(args.get("caller", ""))
    access = parts.security.access
    if pool.kind == "owner" and not access.known(pool.value):
        # Its workers would run with the credential of nobody, and serve nothing.
        raise InvalidInput(
            f"pool {pool.text()} names {pool.value!r}, who is no identity of this hub: an "
            "owner: pool serves the servables an identity published (dlhub-hpc keys list); "
            "name the servables instead, or a tag:", owner=pool.value)
    owner = pool_owner(parts.security, pool, None if is_admin(parts, caller) else caller)
    if not is_admin(parts, caller) and caller != owner:
        raise PermissionDenied(
            f"pool {pool.text()} serves {owner}'s servables: {owner} or the hub's admin "
            f"starts its {what}, not {caller!r}{hint(caller)}", identity=caller)
    return pool, caller, owner


def start_pool_workers(parts: HubParts, args: dict[str, Any],
                       ref: str) -> Future[dict[str, Any]]:
    """Submit a block of ``args['workers']`` pooled workers for the pool ``ref`` names."""
    pool, caller, owner = _check_starter(
        parts, args, ref, "workers", lambda caller: f"; a pool of your own is 'owner:{caller}'")
    count = int(args.get("workers", 1))
    launch = parts.security.worker_launch("", owner=owner)  # confined unless the admin's
    ref = pool.ref()  # as written by pool_of, so stop and status name it alike

    def start() -> dict[str, Any]:
        check_worker_limit(parts, caller, ref, count)  # one start at a time
        logger.info("%s starts %s pooled workers of %s for %s", caller, count, pool.text(),
                    owner)
        return parts.pilots.start_workers(ref, count, launch).to_dict()

    return parts.executor.submit(start)


def visible_pools(pools: dict[str, Any], viewer: Viewer) -> dict[str, Any]:
    """The pools part of ``status`` as ``viewer``'s caller may see it: every pooled worker
    (capacity all share), less the servables it may not see, each list pool's text
    redacted unless it may see all it names (``hubops/visibility.py``)."""
    if not pools:
        return {}
    workers = {}
    for wid, w in pools.get("workers", {}).items():
        loading = w.get("loading")
        workers[wid] = {
            **w, "pool": viewer.pool_spec_text(str(w.get("pool", ""))),
            "holds": {r: n for r, n in w.get("holds", {}).items() if viewer.sees(r)},
            "loading": loading if loading and viewer.sees(loading) else None}
    return {
        "workers": workers,
        "servables": {r: c for r, c in pools.get("servables", {}).items() if viewer.sees(r)},
        "own_workers": {r: viewer.reason(why) for r, why in pools.get("own_workers", {}).items()
                        if viewer.sees(r)},
    }


def stop_pool_workers(pilots: PilotService, ref: str) -> list[dict[str, Any]]:
    """Stop the ``workers start`` blocks of the pool ``ref`` names, whatever their budget."""
    pool = pool_of(ref)
    assert pool is not None, ref
    refs = {b.servable for b in pilots.worker_blocks()
            if (other := pool_of(b.servable)) is not None and other.text() == pool.text()}
    return [b.to_dict() for r in sorted(refs) for b in pilots.stop_workers(None, r)]


def start_pool_pilot(parts: HubParts, args: dict[str, Any], ref: str,
                     profile: SiteProfile, nodes: int | None) -> Future[dict[str, Any]]:
    """``pilot start --pool``: a scaled pilot whose workers serve the pool ``ref`` names.
    Its workers run in the profile's image, if it runs containers: a pool shares one."""
    pool, _, owner = _check_starter(parts, args, ref, "pilots")
    check_pool_profile(profile)

    def start() -> dict[str, Any]:
        return parts.pilots.add(build_pool_pilot(parts, pool, owner, profile, nodes)).to_dict()

    return parts.executor.submit(start)


def check_pool_profile(profile: SiteProfile) -> None:
    runtime = profile.container.runtime
    if runtime != "none" and not profile.container.image:
        raise PilotError(
            f"profile {profile.name} runs workers in containers ({runtime}) but names no "
            "image; a pool's workers share one: set container.image in the profile",
            profile=profile.name)


def build_pool_pilot(parts: HubParts, pool: PoolSpec, owner: str, profile: SiteProfile,
                     nodes: int | None, pilot_id: str | None = None) -> Pilot:
    """The pilot of a pool (``pilot start --pool``, or one the hub resumes after a restart);
    its workers run with ``owner``'s credential."""
    launch = parts.security.worker_launch("", profile.container.runtime != "none", owner=owner)
    return Pilot(
        profile, pool.ref(), hub_address_for_workers(parts.worker_address(), profile),
        parts.config.home / "pilots", nodes=nodes,
        heartbeat_interval=parts.config.heartbeat_interval,
        hub_timeout=max(30.0, 3 * parts.config.heartbeat_timeout), launch=launch,
        pilot_id=pilot_id)


def pool_counters(parts: HubParts, args: dict[str, Any]) -> dict[str, Any]:
    """The hub's pool counters, and one servable's (``args['servable']``, name@version) if
    the caller may see it: what ``status`` says of pools, without its registry listing,
    cheap enough to read around every request (benchmarks/pools.py does)."""
    caller = str(args.get("caller", ""))
    state = parts.state
    counters = {k: state.stats[k] for k in ("pool_loads", "pool_evictions", "load_failures")}
    ref = args.get("servable")
    servable = None
    if isinstance(ref, str) and parts.security.access.can_see(caller, ref.split("@")[0]):
        servable = state.pools.view_servable(ref)
    return {**counters, "servable": servable}
