"""Pilots: blocks of warm workers for one servable, started from a site profile and kept sized.

A :class:`Pilot` owns one Parsl provider built from its profile; each block is one
``provider.submit`` of the worker command (wrapped in the profile's container runtime, run
by its launcher), watched with ``provider.status`` and stopped with ``provider.cancel``.
:meth:`Pilot.tick` feeds what the provider and the hub report to the scaling strategy
(:func:`dlhub_hpc.pilot.scaling.decide`) and applies its decision. A *fixed* pilot (what
``workers start`` makes) is one block of a set size on the hub's own provider: it is never
scaled nor replaced. :class:`~dlhub_hpc.pilot.service.PilotService` holds a hub's pilots.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from parsl.providers.base import ExecutionProvider

from dlhub_hpc.errors import PilotError, ProfileError
from dlhub_hpc.pilot.command import Container, worker_command
from dlhub_hpc.pilot.profiles import (
    EMBEDDED_LOCAL,
    SiteProfile,
    build_provider,
    expand_vars,
    parse_profile,
    unset_variables,
)
from dlhub_hpc.pilot.scaling import TERMINAL, BlockView, Decision, Load, WalltimePlan, decide
from dlhub_hpc.security.isolation import WorkerLaunch

logger = logging.getLogger(__name__)

_pilot_ids = itertools.count(1)


MAX_WORKERS_PER_BLOCK = 4096


def fixed_profile(workers: int) -> SiteProfile:
    """The profile of a fixed pilot: ``workers`` workers in one block on this machine, no
    scheduler, no walltime, no scaling (the embedded default, whatever site_profiles say)."""
    if workers < 1:
        raise PilotError(f"a block needs at least one worker, not {workers}")
    if workers > MAX_WORKERS_PER_BLOCK:  # a typo, not a request: no machine runs that many
        raise PilotError(f"a block runs at most {MAX_WORKERS_PER_BLOCK} workers, not {workers}")
    return parse_profile({**EMBEDDED_LOCAL, "workers_per_node": workers,
                          "scaling": {"min_blocks": 1, "max_blocks": 1}}, "workers start")


def hub_address_for_workers(hub_worker_address: str, profile: SiteProfile) -> str:
    """The hub's worker address as compute nodes must dial it (profile address/interface)."""
    parts = urlsplit(hub_worker_address)
    host = parts.hostname or "127.0.0.1"
    if profile.hub.address:
        host = profile.hub.address
    elif profile.hub.interface:
        from parsl.addresses import address_by_interface

        try:
            host = address_by_interface(profile.hub.interface)
        except OSError as exc:
            raise ProfileError(f"profile {profile.name!r}: no address on interface "
                               f"{profile.hub.interface!r} ({exc}); set hub.interface to one "
                               "that the compute nodes reach, or hub.address") from None
    elif host in ("0.0.0.0", "*", ""):
        from parsl.addresses import address_by_hostname

        host = address_by_hostname()
    return f"tcp://{host}:{parts.port}"


@dataclass
class PilotBlock:
    """One submitted block, as the pilot tracks it (and as ``status`` shows it)."""

    block_id: str
    job_id: str
    servable: str
    workers: int
    submitted_at: float
    pilot: str = ""
    profile: str = ""
    state: str = "PENDING"
    started_at: float | None = None
    connected: int = 0
    ever_connected: bool = False
    busy: int = 0
    batches: int = 0
    idle_since: float | None = None
    replaced: bool = False
    stopping: bool = False
    draining: bool = False  # at walltime, no job slot for a replacement: resubmit once ended
    reason: str = ""
    stderr: str | None = None

    def view(self) -> BlockView:
        return BlockView(self.block_id, self.state, self.submitted_at, self.started_at,
                         self.connected, self.ever_connected, self.busy, self.idle_since,
                         self.replaced, self.stopping, self.draining)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Pilot:
    """Blocks for one servable through one provider built from a site profile."""

    def __init__(
        self,
        profile: SiteProfile,
        servable: str,
        hub_address: str,
        run_dir: Path,
        *,
        nodes: int | None = None,
        ranks: int = 1,
        heartbeat_interval: float = 1.0,
        hub_timeout: float = 30.0,
        provider: ExecutionProvider | None = None,
        image: str | None = None,
        check_image: Callable[[str], None] | None = None,
        launch: WorkerLaunch | None = None,
        pilot_id: str | None = None,
        fixed: bool = False,
        provider_lock: threading.Lock | None = None,
    ) -> None:
        if nodes is not None and nodes < 1:
            raise PilotError(f"--nodes must be at least 1, not {nodes}")
        if ranks < 1:
            raise PilotError(f"a servable needs at least one rank, not {ranks}")
        self.pilot_id = pilot_id or f"pilot-{next(_pilot_ids)}"
        # One block named as the pilot, never scaled nor replaced; recorded as no pilot's.
        self.fixed = fixed
        self.profile = profile
        self.servable = servable
        self.hub_address = hub_address
        self.run_dir = Path(run_dir) / self.pilot_id
        self.ranks = ranks
        self.nodes = nodes  # per block, when the profile's is overridden
        self.image = image  # a verified built image, when the profile names none
        # Raises if the image changed since it was built; run before every block, since
        # replacements are submitted hours after the pilot started.
        self.check_image = check_image
        # The owner's confinement and credential (None: bare, the key folder's credential).
        self.launch = launch
        self.heartbeat_interval = heartbeat_interval
        self.hub_timeout = hub_timeout
        if provider is None:
            unset = unset_variables(profile)
            if unset:
                raise ProfileError(f"profile {profile.name!r} needs {', '.join(unset)} set in "
                                   "the hub's environment (see 'dlhub-hpc profiles check')")
        self.provider = provider or build_provider(profile, mpi=ranks > 1)
        if nodes is not None:
            self.provider.nodes_per_block = nodes
        wall = profile.provider.walltime_seconds()
        self.walltime = (None if wall is None
                         else WalltimePlan(wall, profile.walltime.replace_lead))
        self.blocks: dict[str, PilotBlock] = {}
        self.events: list[str] = []
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        # Parsl's providers are not thread-safe: a status() that overlaps a submit() marks
        # the new job "missing, so completed" while it runs. One call at a time, per
        # provider (pilots that share one share its lock).
        self._provider_lock = provider_lock or threading.Lock()
        self._stopped = False
        self.failures = 0  # blocks in a row that ended before a worker connected
        self.halted = False
        self.journal: Any = None  # recovery.Journal: records blocks for a restarted hub
        if self.walltime is not None and not fixed and not profile.queue.overlaps(
                profile.scaling.min_blocks):
            self._event(f"warning: queue.jobs_per_user is {profile.queue.jobs_per_user}: a block's "
                        "walltime replacement cannot run beside it, so each block drains and "
                        "is resubmitted after it ends (serving pauses while it queues)")

    def __repr__(self) -> str:
        return (f"Pilot(load_profile({self.profile.name!r}), {self.servable!r}, "
                f"{self.hub_address!r}, ranks={self.ranks})")

    # -- the command a block runs --

    def command(self, block_id: str) -> str:
        """The shell command the launcher runs ``tasks_per_node`` times per node."""
        profile = self.profile
        gpus = profile.gpus
        return worker_command(
            self.hub_address, self.servable, python=profile.worker_python(), block=block_id,
            heartbeat_interval=self.heartbeat_interval, hub_timeout=self.hub_timeout,
            drain_after=profile.drain_after(), mpi=self.ranks > 1,
            extra=[] if gpus is None else gpus.worker_flags(),
            container=self._container(), launch=self.launch,
        ).shell(getattr(self.provider, "launcher", None))

    def _container(self) -> Container | None:
        """The profile's container runtime and this servable's image (checked), or None."""
        spec = self.profile.container
        if spec.runtime == "none":
            return None
        image = self.container_image()
        if not image:
            raise PilotError(f"profile {self.profile.name!r} names no container.image and "
                             f"no built image was given for {self.servable}")
        if self.check_image is not None:
            self.check_image(image)
        gpus = self.profile.gpus
        return Container(spec.runtime, image, spec.binds, spec.env,
                         gpu=None if gpus is None else gpus.vendor,
                         local_rank=gpus is not None)

    def container_image(self) -> str:
        """The image its workers run in ('' when the profile runs no containers), not
        checked: what a pool's workers report as theirs."""
        if self.profile.container.runtime == "none":
            return ""
        # {name} picks the servable's image: owner/name -> owner_name; {version}: its version.
        name, _, version = self.servable.partition("@")
        return self.image or expand_vars(self.profile.container.image or "").replace(
            "{name}", name.replace("/", "_")).replace("{version}", version or "latest")

    @property
    def record_id(self) -> str:
        """The pilot its blocks belong to, in records and ``status``: none for a fixed one."""
        return "" if self.fixed else self.pilot_id

    @property
    def tasks_per_node(self) -> int:
        return self.ranks if self.ranks > 1 else self.profile.workers

    # -- blocks --

    def submit_block(self, reason: str = "start") -> PilotBlock:
        if self._stopped:
            raise PilotError(f"{self.pilot_id} was stopped; start a new pilot")
        block_id = self.pilot_id if self.fixed else f"{self.pilot_id}.b{next(self._ids)}"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        command = self.command(block_id)  # its own errors (a changed image) stay typed
        try:
            with self._provider_lock:
                self.provider.script_dir = str(self.run_dir)
                job_id = self.provider.submit(command, self.tasks_per_node,
                                              job_name=f"dlhub.{block_id}")
        except Exception as exc:
            raise PilotError(f"{self.provider.label} could not start a block for "
                             f"{self.servable}: {exc}", servable=self.servable) from exc
        if job_id is None:
            raise PilotError(f"{self.provider.label} is at capacity; no block was started")
        workers = self.tasks_per_node * int(getattr(self.provider, "nodes_per_block", 1))
        block = PilotBlock(block_id, str(job_id), self.servable, 1 if self.ranks > 1 else workers,
                           time.time(), self.record_id, self.profile.name, reason=reason)
        with self._lock:
            orphan = self._stopped  # stopped while sbatch ran: cancel, never leave it queued
            if not orphan:
                self.blocks[block_id] = block
        if orphan:
            self._cancel([block])
            raise PilotError(f"{self.pilot_id} was stopped while {block_id} was submitted")
        if self.journal is not None:
            self.journal.block_started(self.provider, self.record_id, block_id, self.servable,
                                       block.job_id, block.workers)
        self._event(f"submitted {block_id} (job {job_id}): {reason}")
        return block

    def _event(self, text: str) -> None:
        logger.info("%s: %s", self.pilot_id, text)
        self.events = [*self.events[-49:], f"{time.strftime('%H:%M:%S')} {text}"]

    def refresh_states(self, now: float) -> list[PilotBlock]:
        """Update blocks from the provider's status; returns them."""
        with self._lock:
            blocks = list(self.blocks.values())
        if not blocks:
            return blocks
        try:
            with self._provider_lock:
                states = self.provider.status([b.job_id for b in blocks])
        except Exception:
            logger.warning("could not read block states from %s", self.provider.label,
                           exc_info=True)
            states = []
        for block, status in zip(blocks, states, strict=False):
            block.state = status.state.name
            block.stderr = status.stderr_path or block.stderr
            if block.state == "RUNNING" and block.started_at is None:
                block.started_at = now
        return blocks

    def refresh(self, workers: list[dict[str, Any]], now: float) -> None:
        """Update blocks from the provider's status and the hub's worker table."""
        blocks = self.refresh_states(now)
        for block in blocks:
            mine = [w for w in workers if w.get("block") == block.block_id]
            block.connected = len(mine)
            block.busy = sum(1 for w in mine if w.get("state") == "busy")
            if mine:
                block.ever_connected = True
                if block.started_at is None:  # a worker talks: the job runs
                    block.started_at = now
            # Idle means no batch ran since the last look, not just "none running right now".
            batches = sum(int(w.get("batches", 0)) for w in mine)
            if mine and block.busy == 0 and batches == block.batches:
                block.idle_since = block.idle_since or now
            else:
                block.idle_since = None
            block.batches = batches

    def tick(self, load: Load, workers: list[dict[str, Any]], now: float) -> Decision:
        """Refresh, decide, and apply: submit, replace, cancel, forget."""
        self.refresh(workers, now)
        with self._lock:
            views = [b.view() for b in self.blocks.values()]
        decision = decide(self.profile.scaling, views, load, now, self.walltime, self.failures,
                          self.profile.queue.jobs_per_user)
        if decision.halted and self.halted and not decision.dead:
            return decision  # said so already; wait for 'pilot stop'
        for why in decision.reasons:
            self._event(why)
        if decision.halted and not self.halted:
            logs = sorted({b.stderr for b in self.blocks.values() if b.stderr})
            self._event(f"halted; last job logs: {', '.join(logs[-2:]) or 'none'}")
        failures = (0 if any(v.ever_connected for v in views) else self.failures) \
            + decision.failed
        try:
            self._apply(decision)
        finally:  # after the dead are gone: a status read sees the halt and its blocks as one
            with self._lock:
                self.halted, self.failures = decision.halted, failures
        return decision

    def _apply(self, d: Decision) -> None:
        # Forget the dead first: a submit that fails below must not leave them to be counted
        # as failures again (and cancelled again) at the next tick.
        doomed = [self.blocks[b] for b in d.cancel + d.dead if b in self.blocks]
        if doomed:
            self._cancel(doomed)
        with self._lock:
            before = set(self.blocks)
            for block_id in d.dead:
                self.blocks.pop(block_id, None)
            # Blocks that ended after we stopped or replaced them: nothing left to watch.
            for block_id, block in list(self.blocks.items()):
                if block.state in TERMINAL and (block.stopping or block.replaced
                                                or block.draining):
                    del self.blocks[block_id]
            gone = sorted(before - set(self.blocks))
        if self.journal is not None:
            self.journal.blocks_ended(gone)
        for block_id in d.drain:
            if block_id in self.blocks:
                self.blocks[block_id].draining = True
        for block_id in d.replace:
            if block_id in self.blocks:
                self.blocks[block_id].replaced = True
            self.submit_block(f"replaces {block_id} before its walltime")
        for _ in range(d.submit):
            self.submit_block("scaling")

    def _cancel(self, blocks: list[PilotBlock]) -> list[PilotBlock]:
        """Cancel ``blocks``' jobs; returns those whose cancel failed (still queued or running)."""
        live = [b for b in blocks if b.state not in TERMINAL]
        for b in blocks:
            b.stopping = True
        if not live:
            return []
        try:
            # Parsl's SlurmProvider/PBSProProvider report a failed scancel/qdel as False.
            with self._provider_lock:
                done = list(self.provider.cancel([b.job_id for b in live]) or [])
        except Exception:
            logger.warning("could not cancel %s", [b.block_id for b in live], exc_info=True)
            done = []
        failed = [b for b, ok in itertools.zip_longest(live, done[:len(live)]) if not ok]
        if failed:
            logger.warning("%s: could not cancel jobs %s", self.pilot_id,
                           [b.job_id for b in failed])
        return failed

    def stop(self) -> list[PilotBlock]:
        """Cancel every block of this pilot."""
        with self._lock:
            self._stopped = True
            blocks = list(self.blocks.values())
            self.blocks.clear()
        failed = self._cancel(blocks)
        for b in blocks:
            b.state = "CANCELLED"
        self._event(f"stopped {len(blocks)} blocks")
        if self.journal is not None and self.fixed:
            self.journal.blocks_ended([b.block_id for b in blocks])
        elif self.journal is not None:
            self.journal.pilot_ended(self.pilot_id)
        if failed:
            ids = " ".join(b.job_id for b in failed)
            raise PilotError(f"{self.pilot_id}: {self.provider.label} could not cancel jobs "
                             f"{ids}; they may still hold nodes: cancel them by hand "
                             f"(scancel {ids} / qdel {ids})", jobs=[b.job_id for b in failed])
        return blocks

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            blocks = [b.to_dict() for b in self.blocks.values()]
            halted, failures = self.halted, self.failures
        scaling = self.profile.scaling
        return {
            "pilot_id": self.pilot_id, "profile": self.profile.name, "servable": self.servable,
            "provider": type(self.provider).__name__, "ranks": self.ranks,
            "min_blocks": scaling.min_blocks, "max_blocks": scaling.max_blocks,
            "walltime": None if self.walltime is None else self.walltime.walltime,
            "halted": halted, "failures": failures,
            "gpus": None if self.profile.gpus is None else self.profile.gpus.model_dump(),
            "blocks": blocks, "events": list(self.events[-10:]),
        }
