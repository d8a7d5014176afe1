"""A hub's pilots: those of ``pilot start`` (scaled by a thread of their own) and the fixed
ones of ``workers start`` (one block of a set size each, on the hub's own provider).

``pilot status`` and ``pilot stop`` see the scaled pilots; ``workers stop`` and the blocks
table of ``status`` see the fixed ones, by block id (``block-N``).

The broker learns which pool pilots run from ``pool_pilots`` (their pools, owners and start
stages): a pool pilot at zero blocks has no worker to tell it, yet its pool's requests must
queue and count as the demand it scales on.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from parsl.providers.base import ExecutionProvider

from dlhub_hpc.errors import PilotError
from dlhub_hpc.pilot.pilots import Pilot, PilotBlock, fixed_profile
from dlhub_hpc.pilot.profiles import SiteProfile
from dlhub_hpc.pilot.recovery import skip_ids
from dlhub_hpc.pilot.scaling import TERMINAL, Load
from dlhub_hpc.security.isolation import WorkerLaunch
from dlhub_hpc.servable.pools import PoolSpec, pool_of

logger = logging.getLogger(__name__)

Snapshot = Callable[[], dict[str, Any]]


class PoolPilot(NamedTuple):
    """A running pool pilot as the broker sees it (``broker/pool_state.py``)."""

    spec: PoolSpec  # with the image its workers run in, as they will report it
    owner: str | None  # whose credential its workers have; None on a hub without identities
    stage: str  # how far its start got: requested, queued at scheduler, job running


def pool_pilot(pilot: Pilot) -> PoolPilot | None:
    """``pilot`` as a ``PoolPilot``; None when it serves one servable, or halted."""
    spec = pool_of(pilot.servable)
    if spec is None or pilot.halted:
        return None
    launch = pilot.launch
    owner = launch.owner if launch is not None and launch.credential is not None else None
    with pilot._lock:
        states = [b.state for b in pilot.blocks.values()
                  if not b.stopping and b.state not in TERMINAL]
    stage = ("job running" if "RUNNING" in states
             else "queued at scheduler" if states else "requested")
    return PoolPilot(spec.in_image(pilot.container_image()), owner, stage)


@dataclass(frozen=True)
class WorkersSetup:
    """Where ``workers start`` runs its blocks: the hub's provider and worker address."""

    provider: ExecutionProvider
    hub_address: str
    run_dir: Path
    heartbeat_interval: float = 1.0
    hub_timeout: float = 30.0
    # The pilots of this provider share it: one provider call at a time.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def pilot(self, servable: str, profile: SiteProfile, block_id: str,
              launch: WorkerLaunch | None = None) -> Pilot:
        """A fixed pilot whose one block is ``block_id``."""
        return Pilot(profile, servable, self.hub_address, self.run_dir, provider=self.provider,
                     heartbeat_interval=self.heartbeat_interval, hub_timeout=self.hub_timeout,
                     launch=launch, pilot_id=block_id, fixed=True, provider_lock=self.lock)


class PilotService:
    """A hub's pilots, and the thread that runs their scaling ticks.

    The loop runs every ``period`` seconds, or (None) at the shortest ``scaling.period`` of
    the pilots it holds.
    """

    def __init__(self, snapshot: Snapshot, period: float | None = None,
                 workers: WorkersSetup | None = None) -> None:
        self._snapshot = snapshot
        self.period = period
        self.workers = workers  # set by the hub once it listens
        self.pilots: dict[str, Pilot] = {}
        self._block_ids = itertools.count(1)  # block-N of 'workers start'
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False  # shut down: a pilot added now would outlive its hub
        self.journal: Any = None  # recovery.Journal, given to each pilot added
        # Called with each scaled pilot after its tick (on the scaling thread): the
        # on-demand starter follows its blocks from queued to running this way.
        self.observers: list[Callable[[Pilot], None]] = []
        self._pool_pilots: tuple[PoolPilot, ...] = ()  # replaced whole, read by the broker

    def __repr__(self) -> str:
        return f"PilotService(period={self.period!r}, pilots={sorted(self.pilots)!r})"

    def pool_pilots(self) -> tuple[PoolPilot, ...]:
        """The running pool pilots, with or without blocks: the same tuple until one
        starts, stops or changes stage (the broker's loop reads it without a lock)."""
        return self._pool_pilots

    def _note_pools(self) -> None:
        """Take the pool pilots' list again (after a start, a stop or a scaling tick)."""
        found = tuple(p for p in map(pool_pilot, self.all()) if p is not None)
        if found != self._pool_pilots:
            self._pool_pilots = found

    def add(self, pilot: Pilot, blocks: int | None = None) -> Pilot:
        """Start ``pilot``: ``blocks`` blocks now (default: its ``min_blocks``, at least one,
        so that ``pilot start`` brings up workers), the rest by the scaling loop."""
        if self.journal is not None:
            pilot.journal = self.journal
            if not pilot.fixed:  # a fixed pilot's block is recorded alone
                self.journal.pilot_started(pilot.pilot_id, pilot.servable,
                                           pilot.profile.model_dump(mode="json"), pilot.nodes)
        try:
            first = max(pilot.profile.scaling.min_blocks, 1) if blocks is None else blocks
            for _ in range(first):
                pilot.submit_block("workers start" if pilot.fixed else "pilot start")
        except BaseException:
            pilot.stop()  # cancel the blocks that did start
            raise
        with self._lock:
            closed = self._closed
            if not closed:
                self.pilots[pilot.pilot_id] = pilot
        if closed:  # the hub stopped while the blocks were submitted: never leave them queued
            pilot.stop()
            raise PilotError(f"the hub was stopped while {pilot.pilot_id} started; its blocks "
                             "were cancelled")
        if not pilot.fixed:
            self._note_pools()
            self._ensure_thread()
        return pilot

    def adopt(self, pilot: Pilot, blocks: list[PilotBlock]) -> None:
        """Take over a pilot a previous hub started, with its blocks still running."""
        pilot.journal = self.journal
        with pilot._lock:
            for block in blocks:
                pilot.blocks[block.block_id] = block
        with self._lock:
            self.pilots[pilot.pilot_id] = pilot
        pilot._event(f"adopted after a hub restart, with {len(blocks)} running blocks")
        if not pilot.fixed:
            self._note_pools()
            self._ensure_thread()

    # -- 'workers start': fixed pilots of one block --

    def start_workers(self, servable: str, workers: int,
                      launch: WorkerLaunch | None = None, ranks: int = 1) -> PilotBlock:
        """Submit one block running ``workers`` workers for ``servable``; never scaled.

        ``ranks``: the MPI ranks the servable declares. The hub's provider runs single
        processes, so a servable of more ranks is refused: one rank alone would give another
        answer (an ensemble of one member), and the hub would memoize it.
        """
        if ranks > 1:
            raise PilotError(
                f"{servable} declares ranks: {ranks}; 'workers start' runs single-process "
                f"workers and cannot start it under an MPI launcher: use 'dlhub-hpc pilot "
                f"start {servable} --profile PROFILE' with a profile that has an mpi_launcher "
                "(e.g. slurm-local, polaris, frontier)", servable=servable, ranks=ranks)
        profile = fixed_profile(workers)
        pilot = self.setup().pilot(servable, profile, f"block-{next(self._block_ids)}", launch)
        self.add(pilot)
        with pilot._lock:
            return next(iter(pilot.blocks.values()))

    def adopt_workers(self, block: PilotBlock) -> None:
        """Take over a ``workers start`` block a previous hub started."""
        pilot = self.setup().pilot(block.servable, fixed_profile(block.workers),
                                    block.block_id)
        block.pilot, block.profile = pilot.record_id, pilot.profile.name
        with self._lock:
            skip_ids(self._block_ids, [block.block_id])
        self.adopt(pilot, [block])

    def worker_blocks(self, now: float | None = None) -> list[PilotBlock]:
        """The blocks of ``workers start``, with their state as the provider reports it now."""
        now = time.time() if now is None else now
        return [b for p in self._select(fixed=True) for b in p.refresh_states(now)]

    def stop_workers(self, block_ids: list[str] | None = None,
                     servable: str | None = None) -> list[PilotBlock]:
        """Cancel the named blocks, or those serving ``servable``, or (with neither) all."""
        with self._lock:
            chosen = [p for p in self.pilots.values() if p.fixed
                      and (block_ids is None or p.pilot_id in block_ids)
                      and (servable is None or p.servable == servable)]
            unknown = set(block_ids or []) - {p.pilot_id for p in chosen}
            if unknown:
                raise PilotError(f"no such blocks: {sorted(unknown)}; see 'dlhub-hpc status'")
            for p in chosen:
                del self.pilots[p.pilot_id]
        return [b for p in self._stop_each(chosen) for b in p]

    def setup(self) -> WorkersSetup:
        """How 'workers start' runs its blocks (PilotError before the hub listens)."""
        if self.workers is None:
            raise PilotError("the hub has not started yet; start workers once it listens")
        return self.workers

    # -- 'pilot start': scaled pilots --

    def get(self, pilot_id: str) -> Pilot:
        with self._lock:
            pilots = {p.pilot_id: p for p in self.pilots.values() if not p.fixed}
        if pilot_id not in pilots:
            raise PilotError(f"no pilot {pilot_id!r}; running: {sorted(pilots) or 'none'}")
        return pilots[pilot_id]

    def all(self) -> list[Pilot]:
        """The scaled pilots (those of ``pilot start``)."""
        return self._select(fixed=False)

    def _select(self, *, fixed: bool) -> list[Pilot]:
        with self._lock:
            return [p for p in self.pilots.values() if p.fixed == fixed]

    def replaces(self, servable: tuple[str, int]) -> bool:
        """Will a pilot bring up new workers for ``(name, version)`` if its last one dies?"""
        ref = f"{servable[0]}@{servable[1]}"
        return any(p.servable == ref and not p.halted for p in self.all())

    def stop(self, pilot_ids: list[str] | None = None, servable: str | None = None) -> list[Pilot]:
        """Stop the named pilots, or those of ``servable``, or (with neither) all."""
        with self._lock:
            scaled = {i: p for i, p in self.pilots.items() if not p.fixed}
            if pilot_ids:
                unknown = sorted(set(pilot_ids) - set(scaled))
                if unknown:
                    raise PilotError(f"no such pilots: {unknown}; see 'dlhub-hpc pilot status'")
            chosen = [p for p in scaled.values()
                      if (not pilot_ids or p.pilot_id in pilot_ids)
                      and (servable is None or p.servable == servable)]
            for p in chosen:
                del self.pilots[p.pilot_id]
        self._note_pools()
        self._stop_each(chosen)
        return chosen

    def _stop_each(self, chosen: list[Pilot]) -> list[list[PilotBlock]]:
        """Stop every pilot of ``chosen``, then say which jobs are left, if any."""
        stopped, errors = [], []
        for p in chosen:
            try:
                stopped.append(p.stop())
            except PilotError as exc:  # stop the others first
                errors.append(exc.message)
        if errors:
            raise PilotError("; ".join(errors))
        return stopped

    def shutdown(self) -> None:
        """Stop the scaling loop, then every pilot, scaled or fixed."""
        with self._lock:
            self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            chosen = list(self.pilots.values())
            self.pilots.clear()
        self._pool_pilots = ()
        self._stop_each(chosen)

    # -- the scaling loop --

    def _period(self) -> float:
        if self.period is not None:
            return self.period
        return min((p.profile.scaling.period for p in self.all()), default=1.0)

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="hub-scaling", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._period()):
            try:
                self.tick_all()
            except Exception:
                logger.exception("the scaling loop failed; it retries next period")

    def tick_all(self, now: float | None = None) -> None:
        """One scaling decision for every scaled pilot, from one hub snapshot."""
        pilots = self.all()
        if not pilots:
            return
        snap = self._snapshot()
        now = time.time() if now is None else now
        for pilot in pilots:
            workers = pilot_workers(pilot, snap)
            busy = sum(1 for w in workers if w.get("state") == "busy")
            if pool_of(pilot.servable) is None:
                queue = snap.get("servables", {}).get(pilot.servable, {})
                queued, in_flight = int(queue.get("queued", 0)), int(queue.get("in_flight", 0))
            else:  # a pool's: what waits for any servable it serves, its busy workers'
                queued = int((snap.get("pools") or {}).get("queued", {}).get(pilot.servable, 0))
                in_flight = busy
            load = Load(queued=queued, in_flight=in_flight, workers=len(workers), busy=busy)
            try:
                pilot.tick(load, workers, now)
            except Exception:
                logger.exception("scaling %s failed", pilot.pilot_id)
            for observe in self.observers:
                try:
                    observe(pilot)
                except Exception:
                    logger.exception("an observer of %s failed", pilot.pilot_id)
        self._note_pools()


def pilot_workers(pilot: Pilot, snap: dict[str, Any]) -> list[dict[str, Any]]:
    """The hub's workers of ``pilot``'s blocks (a pool's name no servable of theirs)."""
    return [w for w in snap.get("workers", []) if w.get("servable") == pilot.servable
            or str(w.get("block", "")).startswith(pilot.pilot_id + ".")]


__all__ = ["PilotService", "PoolPilot", "WorkersSetup", "pilot_workers", "pool_pilot"]
