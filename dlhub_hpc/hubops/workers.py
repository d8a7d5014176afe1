"""Workers started on the hub's own provider: ``start_workers`` and ``stop_workers``."""

from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import Any

from dlhub_hpc.broker.pipeline import refuse_workers
from dlhub_hpc.hubops.limits import check_worker_limit, pool_owner
from dlhub_hpc.hubops.parts import HubParts
from dlhub_hpc.hubops.pools import start_pool_workers, stop_pool_workers
from dlhub_hpc.security.hub import HubSecurity
from dlhub_hpc.servable.pools import pool_of
from dlhub_hpc.servable.spec import parse_ref

logger = logging.getLogger(__name__)


class WorkerOps:
    """``start_workers`` and ``stop_workers``: fixed pilots of the hub's ``PilotService``."""

    def __init__(self, parts: HubParts) -> None:
        self.registry = parts.registry
        self.security = parts.security
        self._executor = parts.executor
        self.pilots = parts.pilots
        self.parts = parts

    def __repr__(self) -> str:
        return f"WorkerOps({self.registry!r})"

    def start_workers(self, args: dict[str, Any]) -> Future[dict[str, Any]]:
        ref = str(args.get("servable", ""))
        if pool_of(ref) is not None:  # a pool's workers (hubops/pools.py)
            return start_pool_workers(self.parts, args, ref)
        name, version = parse_ref(ref)
        self.security.access.check_see(str(args.get("caller", "")), name)  # before versions
        record = self.registry.get(name, version)  # fail now, with the versions, if unknown
        refuse_workers(record.spec)  # a pipeline has none: its steps do
        # Workers run on the hub's allocation: the owner or the admin decides.
        self.security.access.check_manage(str(args.get("caller", "")), name)
        count = int(args.get("workers", 1))
        launch = self.security.worker_launch(name)  # confined unless the admin's own
        ranks = int(getattr(record.spec.servable, "ranks", 1) or 1)  # refused if above 1
        caller = str(args.get("caller", ""))

        def start() -> dict[str, Any]:
            # On the one executor thread: two starts cannot both pass the same count.
            check_worker_limit(self.parts, caller, name, count)
            return self.pilots.start_workers(ref, count, launch, ranks).to_dict()

        return self._executor.submit(start)

    def stop_workers(self, args: dict[str, Any]) -> Future[list[dict[str, Any]]]:
        blocks = args.get("blocks")
        servable = args.get("servable")
        check_stop(self.security, args, [servable] if servable else None)
        if servable and pool_of(str(servable)) is not None:  # whatever budget it was given
            return self._executor.submit(lambda: stop_pool_workers(self.pilots, str(servable)))
        return self._executor.submit(
            lambda: [b.to_dict() for b in self.pilots.stop_workers(blocks, servable)]
        )


def check_stop(security: HubSecurity, args: dict[str, Any], servables: list[str] | None) -> None:
    """Stopping needs the admin, or (for named servables) their owner."""
    if servables is None:
        security.require_admin(args, "stop every servable's workers")
        return
    for ref in servables:
        pool = pool_of(str(ref))
        if pool is not None:  # a pool's: its owner's, or (named by none) the admin's
            owner = pool_owner(security, pool)
            if str(args.get("caller", "")) != owner:
                security.require_admin(args, f"stop the workers of pool {pool.text()}")
            continue
        security.access.check_manage(str(args.get("caller", "")), parse_ref(str(ref))[0])
