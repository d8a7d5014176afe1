"""After a crash: the blocks and pilots a previous hub on this home left, re-adopted (their
workers register again) or cancelled."""

from __future__ import annotations

import contextlib
import logging

from parsl.providers.base import ExecutionProvider

from dlhub_hpc.hubops.limits import pool_owner
from dlhub_hpc.hubops.parts import HubParts
from dlhub_hpc.hubops.pools import build_pool_pilot
from dlhub_hpc.pilot.local import local_provider
from dlhub_hpc.pilot.pilots import Pilot, PilotBlock, hub_address_for_workers
from dlhub_hpc.pilot.profiles import build_provider, parse_profile
from dlhub_hpc.pilot.recovery import LIVE, Journal, adopt_job, cancel_job, skip_ids, skip_pilot_ids
from dlhub_hpc.registry.pilots import BlockRecord, PilotRecord, PilotRecords
from dlhub_hpc.servable.pools import pool_of
from dlhub_hpc.servable.spec import parse_ref

logger = logging.getLogger(__name__)


class Recovery:
    """Takes back what the registry records as running, once the hub listens again."""

    def __init__(self, parts: HubParts) -> None:
        self.parts = parts
        self.config = parts.config
        self.registry = parts.registry
        self.security = parts.security
        self.pilots = parts.pilots

    def __repr__(self) -> str:
        return f"Recovery({self.registry!r})"

    def run(self) -> None:
        """Re-adopt the recorded jobs still queued or running, cancel those that cannot be."""
        provider = self.pilots.setup().provider  # that of 'workers start' blocks
        records = PilotRecords(self.registry)
        journal = self.pilots.journal = Journal(records)
        for rec in records.blocks(""):
            if rec.provider != type(provider).__name__:
                self._cancel_recorded(rec, None)
            elif (state := adopt_job(provider, rec)) in LIVE:
                self.pilots.adopt_workers(PilotBlock(
                    rec.block_id, rec.job_id, rec.servable, rec.workers, rec.submitted_at,
                    state=state, reason="adopted after a hub restart"))
                logger.info("adopted %s (job %s) of %s", rec.block_id, rec.job_id, rec.servable)
                continue
            journal.blocks_ended([rec.block_id])
        pilots = records.pilots()
        skip_pilot_ids([p.pilot_id for p in pilots])
        for prec in pilots:
            self._recover_pilot(prec, records.blocks(prec.pilot_id), journal)

    def _recover_pilot(self, prec: PilotRecord, blocks: list[BlockRecord],
                       journal: Journal) -> None:
        try:
            pilot = self._rebuild_pilot(prec)
        except Exception as exc:  # the servable or the profile is gone: nothing to resume
            logger.warning("cannot resume %s of %s (%s); cancelling its %d jobs",
                           prec.pilot_id, prec.servable, exc, len(blocks))
            provider = None
            with contextlib.suppress(Exception):  # a profile that still parses cancels best
                provider = build_provider(parse_profile(prec.profile, prec.pilot_id))
            for rec in blocks:
                self._cancel_recorded(rec, provider)
            journal.pilot_ended(prec.pilot_id)
            return
        live = []
        for rec in blocks:
            state = adopt_job(pilot.provider, rec)
            if state in LIVE:
                live.append(PilotBlock(rec.block_id, rec.job_id, rec.servable, rec.workers,
                                       rec.submitted_at, prec.pilot_id, pilot.profile.name,
                                       state=state, reason="adopted after a hub restart"))
            else:
                journal.blocks_ended([rec.block_id])
        skip_ids(pilot._ids, [rec.block_id for rec in blocks])
        self.pilots.adopt(pilot, live)

    def _rebuild_pilot(self, prec: PilotRecord) -> Pilot:
        """The recorded pilot, as ``pilot start`` would make it now, under its old id."""
        from dlhub_hpc.container.launch import check_recorded, image_for

        profile = parse_profile(prec.profile, f"the recorded profile of {prec.pilot_id}")
        pool = pool_of(prec.servable)
        if pool is not None:  # a pool's pilot (hubops/pools.py)
            return build_pool_pilot(self.parts, pool, pool_owner(self.security, pool),
                                    profile, prec.nodes, prec.pilot_id)
        name, version = parse_ref(prec.servable)
        record = self.registry.get(name, version)
        runtime = profile.container.runtime
        launch = self.security.worker_launch(name, runtime != "none")
        image = (image_for(self.registry.root, name, record.version, runtime)
                 if runtime != "none" and not profile.container.image else None)

        def check_image(path: str) -> None:
            check_recorded(self.registry.root, record.name, record.version, path)

        return Pilot(
            profile, prec.servable,
            hub_address_for_workers(self.parts.worker_address(), profile),
            self.config.home / "pilots", nodes=prec.nodes,
            ranks=int(getattr(record.spec.servable, "ranks", 1) or 1),
            heartbeat_interval=self.config.heartbeat_interval,
            hub_timeout=max(30.0, 3 * self.config.heartbeat_timeout),
            image=image, check_image=check_image, launch=launch, pilot_id=prec.pilot_id,
        )

    def _cancel_recorded(self, rec: BlockRecord, provider: ExecutionProvider | None) -> None:
        """Cancel a recorded job no pilot takes back (a LocalProvider's by its pid)."""
        if provider is None and rec.provider == "LocalProvider":
            provider = local_provider()
        if provider is None:
            logger.error("job %s (%s of %s) may still run on %s: cancel it by hand",
                         rec.job_id, rec.block_id, rec.servable, rec.provider)
            return
        cancel_job(provider, rec)
