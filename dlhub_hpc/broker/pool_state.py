"""The pooled workers' part of the broker's state machine (``BrokerState`` inherits it).

A pooled worker registers with ``Hello(pool=...)`` and no servable; the state gives it
batches of any servable its pool admits (``pools.py`` decides which worker and keeps the
books). A load is an ``Assign`` (``LoadServable``) to a free worker; its ``Ready`` says what
it now holds. Requests wait in the servable's queue meanwhile, so a servable evicted while
its requests are queued is loaded again where they go: none is lost.

A pool pilot at zero blocks has no member, yet it serves its pool: the hub tells the state
which pool pilots run (``pool_pilots``: each one's spec, owner and start stage), so that
their servables' requests queue, count as the pool's demand (the pilot scales on it) and
show the pilot's stage while its block starts.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from dlhub_hpc.broker.batching import oldest_queue
from dlhub_hpc.broker.events import (
    Action,
    LoadServable,
    RequestQueue,
    ServableInfo,
    ServableKey,
    ToWorker,
    WorkerInfo,
)
from dlhub_hpc.broker.fairshare import QueueShares
from dlhub_hpc.broker.load_failures import LoadFailures
from dlhub_hpc.broker.pools import NO_SERVABLE, PoolBook, ref_of
from dlhub_hpc.errors import ConfigError, DlhubHpcError
from dlhub_hpc.protocol import Hello, LoadFailed, Ready, Shutdown
from dlhub_hpc.servable.pools import PoolSpec

logger = logging.getLogger(__name__)

# A running pool pilot, as the hub reports it: its pool, the owner whose credential its
# workers have (None: a hub without identities), and how far its start got (a stage of
# broker/ondemand.py's STAGES: requested, queued at scheduler, job running).
PoolPilot = tuple[PoolSpec, str | None, str]
STAGE_ORDER = ("requested", "queued at scheduler", "job running")


def _stage_rank(stage: str) -> int:
    return STAGE_ORDER.index(stage) if stage in STAGE_ORDER else -1


class PoolDispatch:
    """Hooks the state calls for pooled workers; the state's own tables are shared."""

    pools: PoolBook
    stats: Counter[str]
    load_failures: LoadFailures
    _workers: dict[bytes, WorkerInfo]
    _queues: dict[ServableKey, dict[str, RequestQueue]]
    _worker_count: Counter[ServableKey]
    shares: QueueShares[ServableKey]
    # The running pool pilots (the hub's PilotService); read on the loop, so it hands back
    # a tuple it replaces on each change, never one it edits.
    pool_pilots: Callable[[], Sequence[PoolPilot]]
    _pilot_stages: tuple[object, dict[ServableKey, tuple[str, ...]]]

    # -- what the state provides --

    def _resolve(self, name: str, version: int | None) -> ServableInfo:
        raise NotImplementedError

    def _dispatch(self, info: ServableInfo, now: float, out: list[Action]) -> None:
        raise NotImplementedError

    def _lose_worker(self, identity: bytes, why: str, now: float, out: list[Action], *,
                     graceful: bool = False) -> None:
        raise NotImplementedError

    def _fail_queued(self, key: ServableKey, error: dict[str, Any], now: float,
                     out: list[Action]) -> None:
        raise NotImplementedError

    # -- hooks --

    def _pool_hello(self, identity: bytes, msg: Hello, now: float, out: list[Action],
                    user: str) -> None:
        try:
            spec = PoolSpec.from_wire(msg.pool)
        except ConfigError as exc:
            out.append(ToWorker(identity, Shutdown(f"cannot serve the pool: {exc.message}")))
            return
        if identity in self._workers:
            self._lose_worker(identity, "it registered again", now, out)
        self._workers[identity] = WorkerInfo(
            identity, msg.worker_id, NO_SERVABLE, msg.host, msg.pid, msg.block, now, now,
            state="idle", ranks=msg.ranks, binding=msg.binding, user=user, pooled=True,
        )
        member = self.pools.join(identity, msg.worker_id, spec, user)
        self.stats["workers_registered"] += 1
        logger.info("worker %s serves pool %s (%s bytes; owner %s)", msg.worker_id,
                    spec.text(), spec.budget, member.owner or "any")
        # requests that came while no pooled worker was there wait for this one too
        self.pools.backlog.update(k for k, methods in self._queues.items()
                                  if any(q.items for q in methods.values()))
        self._pool_freed(identity, now, out)

    def _pool_live(self, key: ServableKey) -> int:
        """Pooled workers that could serve ``key``."""
        if not self.pools.members:
            return 0
        try:
            return self.pools.serving(self._resolve(*key))
        except DlhubHpcError:  # withdrawn meanwhile: no pool serves it
            return 0

    def _pool_load(self, info: ServableInfo, now: float, out: list[Action]) -> None:
        """No free worker holds ``info``: have the cheapest free pooled worker load it."""
        if self._worker_count[info.key]:  # it has workers of its own: they take it
            return
        self.pools.backlog.add(info.key)  # requests wait for a pooled worker: _waiting
        identity = self.pools.loader(info)
        if identity is None:
            return
        worker = self._workers[identity]
        self.pools.start_load(identity, info)
        worker.state, worker.servable, worker.last_sent = "loading", info.key, now
        self.stats["pool_loads"] += 1
        logger.info("worker %s loads %s", worker.worker_id, ref_of(info.key))
        out.append(LoadServable(identity, info))

    def _pool_ready(self, identity: bytes, worker: WorkerInfo, msg: Ready, now: float,
                    out: list[Action]) -> None:
        info = self._resolve(*worker.servable)
        evicted = self.pools.loaded(identity, info, msg.pool)
        self.stats["pool_evictions"] += len(evicted)
        if evicted:
            logger.info("worker %s evicted %s to load %s", worker.worker_id,
                        ", ".join(map(ref_of, evicted)), ref_of(info.key))
        self.load_failures.clear(info.key)
        self._pool_freed(identity, now, out, first=info)

    def _pool_load_failed(self, identity: bytes, worker: WorkerInfo, msg: LoadFailed,
                          now: float, out: list[Action]) -> None:
        """One load failed; the worker keeps the rest. Callers get the load's error when
        nothing else could serve the servable."""
        key = worker.servable
        self.pools.load_failed(identity, key)
        self.stats["load_failures"] += 1
        logger.warning("worker %s could not load %s: %s", worker.worker_id, ref_of(key),
                       msg.error.get("message"))
        if not self._worker_count[key] and not self._pool_live(key):
            self._fail_queued(key, self.load_failures.record(key, msg.error), now, out)
        self._pool_freed(identity, now, out)

    def _pool_drained(self, identity: bytes, now: float, out: list[Action]) -> None:
        """A pooled worker takes no more work: a load it began goes to another worker."""
        self.pools.hold_back(identity)
        key = self.pools.abandon_load(identity)
        if key is not None:
            self._dispatch(self._resolve(*key), now, out)

    def _pool_freed(self, identity: bytes, now: float, out: list[Action],
                    first: ServableInfo | None = None) -> None:
        """A pooled worker is free: give it the oldest waiting work it may take, what it
        holds first (``first``: what it just loaded)."""
        self._workers[identity].state = "idle"
        self.pools.release(identity)
        if first is not None:
            self._dispatch(first, now, out)
        tried: set[ServableKey] = set()
        while identity in self.pools.free:
            info = self.pools.next_for(identity, (w for w in self._waiting()
                                                  if w[1].key not in tried))
            if info is None:
                return
            tried.add(info.key)
            self._dispatch(info, now, out)

    def _pooled(self) -> bool:
        """Does the hub serve pools: pooled workers connected, or pool pilots running?"""
        return bool(self.pools.members or self.pool_pilots())

    def _pools_view(self) -> dict[str, Any] | None:
        """The pools as the snapshot shows them (None on a hub that serves none)."""
        return {**self.pools.view(), "queued": self.pool_demand()} if self._pooled() else None

    def pool_demand(self) -> dict[str, int]:
        """Requests queued for each pool's servables, by the pool's ref (its pilot's
        ``servable``): what a pool pilot scales on, as a servable's pilot does on its queue.
        A pool whose pilot has no member connected (at zero blocks) counts what its spec
        and owner admit, so that the pilot starts a block for it."""
        members: dict[str, list[Any]] = {}
        for member in self.pools.members.values():
            members.setdefault(member.spec.ref(), []).append(member)
        pilots: dict[str, list[tuple[PoolSpec, str | None]]] = {}
        for spec, owner, _ in self.pool_pilots():  # a ref names no image: pilots may share it
            pilots.setdefault(spec.ref(), []).append((spec, owner))
        demand = dict.fromkeys([*members, *pilots], 0)
        for key in self.pools.backlog:
            queued = self.shares.queued(key)
            if not queued:
                continue
            try:
                info = self._resolve(*key)
            except DlhubHpcError:
                continue
            for ref in demand:
                joined = members.get(ref)
                if joined:
                    admitted = any(self.pools.admits(m, info) for m in joined)
                else:
                    admitted = any(self.pools.spec_refusal(*p[:2], info) is None
                                   for p in pilots[ref])
                if admitted:
                    demand[ref] += queued
        return demand

    def _pool_pilot_serves(self, key: ServableKey) -> bool:
        """Does a running pool pilot serve ``key`` (it brings pooled workers back)?"""
        return bool(self._admitting_stages(key))

    def _pool_pilot_stage(self, key: ServableKey) -> str | None:
        """How far the start of a pool pilot that would serve ``key`` got (the furthest,
        if several would); None when no running pool pilot serves it."""
        return max(self._admitting_stages(key), key=_stage_rank, default=None)

    def _admitting_stages(self, key: ServableKey) -> tuple[str, ...]:
        """The start stage of each running pool pilot that would serve ``key``; looked up
        once per servable while the hub's list of pool pilots stays the same (and the
        servable does: ``_pool_forget``)."""
        pilots = self.pool_pilots()
        if not pilots:
            return ()
        seen, stages = self._pilot_stages
        if seen is not pilots:
            stages = {}
            self._pilot_stages = (pilots, stages)
        found = stages.get(key)
        if found is None:
            try:
                info = self._resolve(*key)
            except DlhubHpcError:  # withdrawn meanwhile: no pool serves it
                found = ()
            else:
                found = tuple(stage for spec, owner, stage in pilots
                              if self.pools.spec_refusal(spec, owner, info) is None)
            stages[key] = found
        return found

    def _pool_forget(self, name: str) -> None:
        """``name`` changed (a new version, its pooling grants): ask the pilots anew."""
        stages = self._pilot_stages[1]
        for key in [k for k in stages if k[0] == name]:
            del stages[key]

    def _pool_loading(self, key: ServableKey) -> bool:
        """A pooled worker loads ``key`` and none holds it yet: its callers wait for it."""
        members = self.pools.members.values()
        return (any(m.loading == key for m in members)
                and not any(key in m.holds for m in members))

    def _waiting(self) -> list[tuple[int, ServableInfo]]:
        """Each pooled servable with requests queued: its oldest request's seq, and its info.
        Only those that found no free pooled worker (the backlog), not every queue the hub
        ever made: a hub of hundreds of servables pays per batch for what waits, not for
        all it holds."""
        found = []
        for key in list(self.pools.backlog):
            queue, _ = oldest_queue(self._queues.get(key, {}))
            if queue is None:
                self.pools.backlog.discard(key)
                continue
            try:
                found.append((queue.items[0].seq, self._resolve(*key)))
            except DlhubHpcError:
                self.pools.backlog.discard(key)
        return found
