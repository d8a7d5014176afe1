"""The scaling strategy: a pure function from blocks and load to what to submit or cancel.

No provider, socket or clock inside: the pilot feeds it what the provider and the hub report
(:class:`BlockView`, :class:`Load`) and the time, and applies the :class:`Decision`. Rules,
in order:

0. halt: after ``max_failures`` blocks in a row ended before any worker connected (a
   broken worker command, image or environment), nothing more is submitted: resubmitting
   would only fill the queue with jobs that fail the same way.
1. dead: a block the provider reports finished (killed job, node failure) while we did not
   stop it, or one running past ``start_grace`` whose workers never connected or all went
   silent (missed heartbeats: the hub dropped them), is forgotten (and cancelled) and
   replaced. The hub retries the requests those workers held.
2. walltime: ``replace_lead`` seconds before a block's walltime ends a replacement is
   submitted (even above ``max_blocks``), so the servable never drops to zero workers; the
   old block's workers drain ``drain_margin`` seconds before the end and leave. A block
   idle for ``idle_release`` with nothing queued and enough others for ``min_blocks`` is
   not replaced: rule 5 releases it. Where the queue runs no more of the user's jobs
   (``jobs_per_user``) the two cannot overlap: the block drains, and its replacement is
   submitted once it has ended (rule 3), with a warning that serving pauses meanwhile.
3. floor: fewer live blocks than ``min_blocks``: submit.
4. up: queued items per worker above ``queue_per_worker``, with every worker busy, and no
   block still pending: one more block, up to ``max_blocks`` (and ``jobs_per_user``).
5. down: nothing queued, and a block whose workers all sat idle for ``idle_release``
   seconds while more than ``min_blocks`` remain: release it (one per decision).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from dlhub_hpc.pilot.profiles import ScalingSpec

logger = logging.getLogger(__name__)

TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "MISSING"})


@dataclass(frozen=True)
class BlockView:
    """What the pilot knows of one block at decision time."""

    block_id: str
    state: str  # the provider's JobState name: PENDING, RUNNING, COMPLETED, ...
    submitted_at: float
    started_at: float | None = None  # when first seen RUNNING (walltime counts from here)
    connected: int = 0  # workers of this block registered with the hub now
    ever_connected: bool = False
    busy: int = 0
    idle_since: float | None = None  # all its workers idle since (None: some busy)
    replaced: bool = False  # a walltime replacement was already submitted for it
    stopping: bool = False  # we cancelled it or it is draining at walltime
    draining: bool = False  # at walltime with no job slot for a replacement: ends, then resubmit


@dataclass(frozen=True)
class Load:
    """The hub's view of one servable: queued items and its workers."""

    queued: int = 0
    in_flight: int = 0
    workers: int = 0
    busy: int = 0


@dataclass
class Decision:
    submit: int = 0
    replace: list[str] = field(default_factory=list)  # blocks whose walltime replacement starts
    cancel: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    drain: list[str] = field(default_factory=list)  # replaced only once they have ended
    failed: int = 0  # dead blocks that never connected a worker
    halted: bool = False
    reasons: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.submit or self.replace or self.cancel or self.dead or self.drain)


@dataclass(frozen=True)
class WalltimePlan:
    """Block walltime in seconds and the lead before its end at which it is replaced."""

    walltime: float
    replace_lead: float


def _is_dead(block: BlockView, now: float, grace: float) -> str | None:
    if block.stopping or block.replaced or block.draining:
        return None  # its workers leave on purpose; a replacement is already on its way
    if block.state in TERMINAL:
        when = "while serving" if block.ever_connected else "before any worker connected"
        return f"{block.block_id} ended ({block.state}) {when}"
    if block.state != "RUNNING" or block.started_at is None:
        return None
    if block.ever_connected and block.connected == 0:
        return f"{block.block_id} lost all its workers (missed heartbeats)"
    if not block.ever_connected and now - block.started_at > grace:
        return f"{block.block_id} ran {now - block.started_at:.0f}s with no worker connected"
    return None


def _walltime(spec: ScalingSpec, live: list[BlockView], load: Load, now: float,
              walltime: WalltimePlan, free: int | None, d: Decision) -> None:
    """Rule 2: replace blocks near their walltime, or drain them where no job slot is free."""
    for b in live:
        due = b.started_at is not None and (
            now >= b.started_at + walltime.walltime - walltime.replace_lead)
        # An idle block above the floor is not worth a new job: rule 5 releases it.
        others = sum(1 for o in live if o is not b and not o.replaced)
        spare = (load.queued == 0 and b.idle_since is not None
                 and now - b.idle_since >= spec.idle_release)
        if not due or b.replaced or b.draining or (spare and others >= spec.min_blocks):
            continue
        if free is not None and free <= len(d.replace):
            d.drain.append(b.block_id)
            d.reasons.append(f"{b.block_id} nears its walltime, and the queue runs no more of "
                             "this user's jobs (queue.jobs_per_user): it drains, and its "
                             "replacement is submitted once it has ended; serving pauses "
                             "until the replacement starts")
            continue
        d.replace.append(b.block_id)
        d.reasons.append(f"{b.block_id} nears its walltime: replacement submitted")


def decide(
    spec: ScalingSpec,
    blocks: list[BlockView],
    load: Load,
    now: float,
    walltime: WalltimePlan | None = None,
    failures: int = 0,
    jobs_per_user: int | None = None,
) -> Decision:
    """What to do now; ``failures``: blocks in a row that ended before a worker connected;
    ``jobs_per_user``: how many of the user's jobs the queue runs at once (None: no limit)."""
    d = Decision()
    live: list[BlockView] = []
    for b in blocks:
        why = _is_dead(b, now, spec.start_grace)
        if why:
            d.dead.append(b.block_id)
            d.failed += 0 if b.ever_connected else 1
            d.reasons.append(why)
        elif not b.stopping and b.state not in TERMINAL:
            live.append(b)
    if any(b.ever_connected for b in live):
        failures = 0
    if failures + d.failed >= spec.max_failures:
        d.halted = True
        d.reasons.append(f"{failures + d.failed} blocks in a row ended before a worker "
                         "connected: no more are submitted; see the jobs' stderr")
        return d
    # Jobs still in the queue hold a slot until they end, those we stop included.
    held = sum(1 for b in blocks if b.state not in TERMINAL and b.block_id not in d.dead)
    free = None if jobs_per_user is None else max(jobs_per_user - held, 0)

    if walltime is not None:
        _walltime(spec, live, load, now, walltime, free, d)
    free = None if free is None else free - len(d.replace)
    # Blocks being replaced no longer count: their replacements stand in for them.
    counted = [b for b in live if not b.replaced and b.block_id not in d.replace]
    count = len(counted) + len(d.replace)

    if count < spec.min_blocks:
        d.submit = spec.min_blocks - count if free is None else min(
            spec.min_blocks - count, free)
        if d.submit:  # else a job slot frees when a stopped block ends: no event each tick
            d.reasons.append(f"{count} live blocks, fewer than min_blocks {spec.min_blocks}")
        return d

    # A running block whose workers have not connected yet is still starting (image pull,
    # module loads): like a queued one, it will add workers, so it holds off another block.
    pending = any(b.state != "RUNNING" or not b.ever_connected for b in counted) or bool(
        d.replace)
    capacity = max(load.workers, 1)
    saturated = load.workers == 0 or load.busy >= load.workers
    # With no worker at all (min_blocks 0, all released) any queued item needs a block.
    wanted = load.queued > 0 if load.workers == 0 else (
        load.queued > spec.queue_per_worker * capacity)
    room = count < spec.max_blocks and (free is None or free > 0)
    if wanted and saturated and not pending and room:
        d.submit = 1
        d.reasons.append(f"{load.queued} queued for {load.workers} busy workers: one more block")
        return d

    if load.queued == 0 and count > spec.min_blocks and not d.replace:
        idle = [b for b in counted if b.idle_since is not None
                and now - b.idle_since >= spec.idle_release]
        if idle:
            victim = min(idle, key=lambda b: b.started_at or b.submitted_at)
            d.cancel.append(victim.block_id)
            d.reasons.append(f"{victim.block_id} idle {now - (victim.idle_since or now):.0f}s: "
                             "released")
    return d
