"""The hub's default pools (HubConfig ``default_pools``): a pool pilot of each, started
when the hub starts, after its recovery took back a previous run's pilots, as the admin's
``pilot start --pool POOL --profile P`` would start it (the pool's owner per the pool rules:
a ``public`` or ``tag:`` pool the admin's). A pool that a taken-back pilot already serves is
not started again. A profile at ``min_blocks: 0`` submits no block until a request for a
servable of the pool arrives (the pilot's scaling on the pool's queued requests)."""

from __future__ import annotations

import logging
from concurrent.futures import Future
from functools import partial
from typing import NamedTuple

from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.errors import ConfigError, DlhubHpcError
from dlhub_hpc.hubops.limits import pool_owner
from dlhub_hpc.hubops.parts import HubParts
from dlhub_hpc.hubops.pools import build_pool_pilot, check_pool_profile
from dlhub_hpc.pilot.pilots import Pilot
from dlhub_hpc.pilot.profiles import SiteProfile, load_profile
from dlhub_hpc.servable.pools import PoolSpec

logger = logging.getLogger(__name__)

__all__ = ["DefaultPoolStart", "check_default_pools", "start_default_pools"]


class DefaultPoolStart(NamedTuple):
    """One default pool, its profile read and checked."""

    pool: PoolSpec
    profile: SiteProfile
    nodes: int | None


def check_default_pools(config: HubConfig) -> list[DefaultPoolStart]:
    """Each of ``config.default_pools`` with its profile; ``ConfigError`` naming the setting
    for a profile the hub does not have, or one a pool cannot run on."""
    checked = []
    for i, entry in enumerate(config.default_pools):
        where = f"default_pools[{i}].profile"
        try:
            profile = load_profile(entry.profile)
            check_pool_profile(profile)
        except DlhubHpcError as exc:  # ProfileError, or a container profile with no image
            raise ConfigError(f"{where} ({entry.profile!r}, pool {entry.pool!r}): "
                              f"{exc.message}", setting=where) from None
        checked.append(DefaultPoolStart(entry.spec(), profile, entry.nodes))
    return checked


def start_default_pools(parts: HubParts,
                        pools: list[DefaultPoolStart]) -> list[Future[Pilot | None]]:
    """Start each pool's pilot on the hub's pilot executor (one start at a time, after any
    started before): a failure is logged, the hub runs on without that pool."""
    futures = []
    for start in pools:
        future = parts.executor.submit(_start_one, parts, start)
        future.add_done_callback(partial(_log_failure, ref=start.pool.ref()))
        futures.append(future)
    return futures


def _start_one(parts: HubParts, start: DefaultPoolStart) -> Pilot | None:
    ref = start.pool.ref()
    running = [p for p in parts.pilots.all() if p.servable == ref and not p.halted]
    if running:  # taken back from a previous run: never two of one pool
        logger.info("default pool %s: %s of a previous run serves it", ref,
                    running[0].pilot_id)
        return None
    owner = pool_owner(parts.security, start.pool)
    pilot = build_pool_pilot(parts, start.pool, owner, start.profile, start.nodes)
    # Its min_blocks now (none at 0): a pool at zero waits for its first request.
    added = parts.pilots.add(pilot, blocks=start.profile.scaling.min_blocks)
    logger.info("default pool %s: started %s (profile %s, %d blocks now)", ref,
                added.pilot_id, start.profile.name, start.profile.scaling.min_blocks)
    return added


def _log_failure(future: Future[Pilot | None], ref: str) -> None:
    exc = future.exception()
    if exc is not None:
        message = exc.message if isinstance(exc, DlhubHpcError) else repr(exc)
        logger.error("default pool %s could not start: %s; start it with 'dlhub-hpc pilot "
                     "start --pool'", ref, message)
