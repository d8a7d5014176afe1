"""How much of the hub's allocation one owner may take: workers and pilot nodes.

Workers run on the hub's allocation, so a publisher who could start them without bound
could take every core the hub has. The admin decides for the hub and is not limited.
"""

from __future__ import annotations

import logging

from dlhub_hpc.errors import PermissionDenied
from dlhub_hpc.hubops.parts import HubParts
from dlhub_hpc.pilot.scaling import TERMINAL
from dlhub_hpc.security.hub import HubSecurity
from dlhub_hpc.servable.pools import PoolSpec, pool_of
from dlhub_hpc.servable.spec import parse_ref

logger = logging.getLogger(__name__)


def is_admin(parts: HubParts, caller: str) -> bool:
    """As ``HubSecurity.require_admin`` decides: without CurveZMQ every caller is the admin."""
    return caller == parts.security.admin or not parts.security.server_auth_on


def check_worker_limit(parts: HubParts, caller: str, name: str, count: int) -> None:
    """Refuse ``count`` more workers for ``name`` when its owner's running ``workers
    start`` blocks and these would pass ``max_workers_per_owner``; run off the loop (it
    asks the provider for block states), one start at a time."""
    if is_admin(parts, caller):
        return
    owner = parts.security.access.owner(name) or caller
    running = sum(
        b.workers for b in parts.pilots.worker_blocks()
        if b.state not in TERMINAL and not b.stopping
        and block_owner(parts.security, b.servable) == owner)
    limit = parts.config.max_workers_per_owner
    if running + count > limit:
        raise PermissionDenied(
            f"{owner!r} runs {running} workers and asked for {count} more; the hub allows "
            f"{limit} per owner (setting max_workers_per_owner): stop some with 'dlhub-hpc "
            "workers stop' or ask the hub's admin", identity=caller, running=running,
            requested=count, limit=limit)


def pool_owner(security: HubSecurity, pool: PoolSpec) -> str:
    """Whose servables (and credential) a pool's workers have: the owner it names, its
    servables' owner (one for all of them), else the admin."""
    if pool.kind == "names":
        owners = {security.access.owner(n) or security.admin for n in pool.names}
        if len(owners) > 1:
            raise PermissionDenied(
                f"pool {pool.text()} names servables of {sorted(owners)}; a pool mixes one "
                "owner's servables only: start one pool per owner")
        return owners.pop()
    return pool.owner or security.admin


def block_owner(security: HubSecurity, ref: str) -> str:
    """Whose allocation a block of ``ref`` (a servable, or a pool) takes."""
    pool = pool_of(ref)
    if pool is not None:
        return pool_owner(security, pool)
    return security.access.owner(parse_ref(ref)[0])


def check_pilot_nodes(parts: HubParts, caller: str, nodes: int, max_blocks: int) -> None:
    """Refuse a pilot whose blocks could hold more than ``max_nodes_per_pilot`` nodes."""
    if is_admin(parts, caller):
        return
    limit = parts.config.max_nodes_per_pilot
    if nodes * max_blocks > limit:
        raise PermissionDenied(
            f"a pilot of up to {max_blocks} blocks of {nodes} nodes may hold "
            f"{nodes * max_blocks} nodes; the hub allows {limit} per pilot (setting "
            "max_nodes_per_pilot): ask for fewer --nodes or ask the hub's admin",
            identity=caller, nodes=nodes, max_blocks=max_blocks, limit=limit)
