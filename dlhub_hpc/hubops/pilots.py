"""Pilots from site profiles (``dlhub_hpc/pilot/pilots.py``): ``pilot start / status / stop``."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from typing import Any

from dlhub_hpc.broker.pipeline import refuse_workers
from dlhub_hpc.errors import PermissionDenied
from dlhub_hpc.hubops.limits import check_pilot_nodes
from dlhub_hpc.hubops.parts import HubParts
from dlhub_hpc.hubops.pools import start_pool_pilot
from dlhub_hpc.hubops.visibility import viewer_of
from dlhub_hpc.hubops.workers import check_stop
from dlhub_hpc.pilot.pilots import Pilot, hub_address_for_workers
from dlhub_hpc.pilot.profiles import SiteProfile, load_profile, parse_profile
from dlhub_hpc.pilot.service import pilot_workers
from dlhub_hpc.registry.store import ServableRecord
from dlhub_hpc.security.isolation import WorkerLaunch
from dlhub_hpc.servable.pools import pool_of
from dlhub_hpc.servable.spec import parse_ref

logger = logging.getLogger(__name__)


def build_pilot(parts: HubParts, record: ServableRecord, profile: SiteProfile,
                launch: WorkerLaunch | None, nodes: int | None = None) -> Pilot:
    """The pilot ``pilot start`` makes for ``record`` (and a start on demand too); run off
    the loop: it builds the profile's provider and finds the servable's image."""
    from dlhub_hpc.container.launch import check_recorded, image_for

    image = None
    if profile.container.runtime != "none" and not profile.container.image:
        # The image 'dlhub-hpc build' made, refused if its digest no longer matches.
        image = image_for(parts.registry.root, record.name, record.version,
                          profile.container.runtime)

    def check_image(path: str) -> None:
        check_recorded(parts.registry.root, record.name, record.version, path)

    return Pilot(
        profile, f"{record.name}@{record.version}",
        hub_address_for_workers(parts.worker_address(), profile),
        parts.config.home / "pilots", nodes=nodes,
        ranks=int(getattr(record.spec.servable, "ranks", 1) or 1),
        heartbeat_interval=parts.config.heartbeat_interval,
        hub_timeout=max(30.0, 3 * parts.config.heartbeat_timeout),
        image=image, check_image=check_image, launch=launch,
    )


class PilotOps:
    """``pilot_start``, ``pilot_status`` and ``pilot_stop``."""

    def __init__(self, parts: HubParts) -> None:
        self.parts = parts
        self.config = parts.config
        self.registry = parts.registry
        self.security = parts.security
        self.pilots = parts.pilots
        self._executor = parts.executor

    def __repr__(self) -> str:
        return f"PilotOps({self.pilots!r})"

    def pilot_start(self, args: dict[str, Any]) -> Future[dict[str, Any]]:
        if pool_of(str(args.get("servable", ""))) is not None:
            return self._pool_pilot_start(args)
        name, version = parse_ref(str(args.get("servable", "")))
        self.security.access.check_see(str(args.get("caller", "")), name)  # before versions
        record = self.registry.get(name, version)  # fail now, with the published versions
        refuse_workers(record.spec)  # a pipeline has none: its steps do
        self.security.access.check_manage(str(args.get("caller", "")), name)
        profile, nodes = self._profile_and_nodes(args)
        launch = self.security.worker_launch(name, profile.container.runtime != "none")

        def start() -> dict[str, Any]:
            # Off the broker thread: some Parsl providers run commands when constructed.
            pilot = build_pilot(self.parts, record, profile, launch, nodes)
            return self.pilots.add(pilot).to_dict()

        return self._executor.submit(start)

    def _pool_pilot_start(self, args: dict[str, Any]) -> Future[dict[str, Any]]:
        """A pilot of pooled workers (hubops/pools.py)."""
        profile, nodes = self._profile_and_nodes(args)
        return start_pool_pilot(self.parts, args, str(args["servable"]), profile, nodes)

    def _profile_and_nodes(self, args: dict[str, Any]) -> tuple[SiteProfile, int | None]:
        """The site profile ``args`` name or send (one the caller may use) and the nodes
        per block they ask for, refused if the pilot could hold too many."""
        caller = str(args.get("caller", ""))
        given = args.get("profile") or "local"
        self.security.check_profile_source(caller, given)
        profile = (parse_profile(given, "the profile sent") if isinstance(given, dict)
                   else load_profile(str(given)))
        nodes = args.get("nodes")
        if nodes is None:
            return profile, None
        check_pilot_nodes(self.parts, caller, int(nodes), profile.scaling.max_blocks)
        return profile, int(nodes)

    def pilot_status(self, args: dict[str, Any]) -> Future[list[dict[str, Any]]]:
        snap = self.parts.state.snapshot()  # here, on the loop thread that owns the state
        viewer = viewer_of(self.parts, str(args.get("caller", "")))

        def finish() -> list[dict[str, Any]]:
            # Only the pilots of servables the caller may see, and pools' (their lists
            # redacted): the rest are others' secrets.
            pilots = [p for p in self.pilots.all() if viewer.lists(p.servable)]
            for p in pilots:
                p.refresh(pilot_workers(p, snap), time.time())  # as the scaling loop sees them
            return [viewer.pilot(p.to_dict()) for p in pilots]

        return self._executor.submit(finish)

    def pilot_stop(self, args: dict[str, Any]) -> Future[list[dict[str, Any]]]:
        ids = args.get("pilots") or None
        servable = args.get("servable")
        chosen = [servable] if servable else (
            [self.pilots.get(i).servable for i in ids] if ids else None)
        try:
            check_stop(self.security, args, chosen)
        except PermissionDenied:
            if servable or not ids:
                raise  # it names only what the caller named
            # Pilot ids are easy to guess: the refusal must not name what they serve.
            caller = str(args.get("caller", ""))
            raise PermissionDenied(
                f"{caller!r} may not stop {', '.join(map(str, ids))}: the owner of what a "
                "pilot serves, or the hub's admin, stops it; 'dlhub-hpc pilot status' lists "
                "yours", identity=caller) from None
        return self._executor.submit(
            lambda: [p.to_dict() for p in self.pilots.stop(ids, servable)])
