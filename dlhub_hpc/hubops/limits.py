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


def pool_owner(security: HubSecurity, pool: PoolSpec, starter: str | None = None) -> str:
    """Whose servables (and credential) a pool's workers have: the owner it names, else
    the admin (``tag:``, ``public``). A list pool is its ``starter``'s (who is not the admin)
    when every servable it names is the starter's or allows the starter's pools, else
    ``PermissionDenied`` that says what the other owners must run; started by the admin (or
    looked up later: ``starter`` None), it is the one owner of its servables that all of them
    allow, else (grants taken back since it started) its first servable's owner."""
    if pool.kind != "names":
        return pool.owner or security.admin
    owners = {n: security.access.owner(n) or security.admin for n in pool.names}

    def refused(who: str) -> list[str]:
        return [n for n, o in owners.items() if o != who and not security.grants.allows(n, who)]

    if starter is not None:
        missing = refused(starter)
        if missing:
            raise PermissionDenied(_not_granted(security, pool, starter, missing),
                                   identity=starter)
        return starter
    return next((o for o in sorted(set(owners.values())) if not refused(o)),
                owners[pool.names[0]])


def _not_granted(security: HubSecurity, pool: PoolSpec, starter: str,
                 missing: list[str]) -> str:
    """What the owners of the servables a list pool names must run for ``starter``'s pool.
    A servable the starter may not see is told by its name's owner part, as one not yet
    published would be: the refusal does not say whether it exists."""
    runs = []
    for name in missing:
        owner = (security.access.owner(name) if security.access.can_see(starter, name)
                 else "") or name.partition("/")[0]
        runs.append(f"{owner} runs 'dlhub-hpc pooling {name} --allow {starter}'")
    return (f"pool {pool.text()} names servables whose owners have not allowed {starter}'s "
            f"pools to serve them: {'; '.join(runs)} (or start one pool per owner)")


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
