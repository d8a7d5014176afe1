"""The broker's decisions, as a pure state machine: ``handle(event, now) -> actions``.

No sockets, no clocks, no files: the ZMQ shell (``server.py``) feeds events in and carries
actions out, and tests drive this class directly. It owns the queues per (servable,
version, method), the worker table, batching, memoization, heartbeats, retries and
deadlines.

How a batch is formed (which queue, how many, how long a part-full one waits) is in
``batching.py``; who may call or serve what, in the ``Gate`` it is made with (``gate.py``).
Workers' messages and their loss are handled in ``worker_state.py`` (pooled workers' in
``pool_state.py``), starts on demand in ``ondemand_state.py``, which ``BrokerState``
inherits; whether a request may queue in ``admission.py``.

One thread owns a state: the hub's loop. Others read the ``Snapshot`` it publishes
(``view()``), never the state itself. ``validate()`` checks its books (``invariants.py``).
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from dlhub_hpc.broker.admission import admission_refusal, share_problems
from dlhub_hpc.broker.batching import ahead_to, oldest_queue, release_time, streams_in, take
from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.broker.events import (
    Action,
    Checked,
    Event,
    FromClient,
    FromWorker,
    InFlight,
    InputPlan,
    LoadServable,
    Pending,
    RequestQueue,
    Resolver,
    ServableInfo,
    ServableKey,
    Tick,
    ToClient,
    ToWorker,
    ToWorkers,
    WorkerInfo,
)
from dlhub_hpc.broker.fairshare import QueueShares
from dlhub_hpc.broker.gate import Gate, OpenGate
from dlhub_hpc.broker.heartbeats import Pace
from dlhub_hpc.broker.invariants import problems
from dlhub_hpc.broker.load_failures import LoadFailures
from dlhub_hpc.broker.memo import MemoCache, memo_key
from dlhub_hpc.broker.ondemand import NOT_STARTED, OnDemand, timeout_error
from dlhub_hpc.broker.ondemand_state import OnDemandStages
from dlhub_hpc.broker.parameters import check_parameters, memo_method
from dlhub_hpc.broker.pipeline import PipelineRunner
from dlhub_hpc.broker.pool_state import PoolPilot
from dlhub_hpc.broker.pools import PoolBook, ref_of
from dlhub_hpc.broker.snapshot import Snapshot, take_snapshot
from dlhub_hpc.broker.worker_state import WorkerLifecycle
from dlhub_hpc.errors import (
    BrokerInvariantError,
    DlhubHpcError,
    MethodNotFound,
    ServableNotFound,
    ServableWithdrawn,
    WorkerLost,
)
from dlhub_hpc.metrics.recorder import BrokerMetrics
from dlhub_hpc.protocol import (
    Batch,
    BatchResult,
    Bye,
    Drain,
    Heartbeat,
    Hello,
    LoadFailed,
    Message,
    Ready,
    Reply,
    Request,
    Shutdown,
    StreamRef,
)
from dlhub_hpc.servable.types import check_value

logger = logging.getLogger(__name__)

__all__ = [
    "Action", "BrokerState", "Event", "FromClient", "FromWorker", "LoadServable",
    "ServableInfo", "Tick", "ToClient", "ToWorker", "ToWorkers",
]


class BrokerState(WorkerLifecycle, OnDemandStages):
    """Queues, workers, in-flight batches and the memo cache of one hub."""

    def __init__(self, resolver: Resolver, config: HubConfig | None = None,
                 gate: Gate | None = None, *,
                 replacement_expected: Callable[[ServableKey], bool] | None = None,
                 ondemand: OnDemand | None = None,
                 pool_pilots: Callable[[], Sequence[PoolPilot]] | None = None) -> None:
        self.config = config or HubConfig()
        # Servables that start when a request finds no worker (the hub's starter acts)
        self.ondemand = ondemand if ondemand is not None else OnDemand.from_config(self.config)
        # Who may call, see or serve what; None: an OpenGate, which lets everyone in.
        self.gate: Gate = gate if gate is not None else OpenGate()
        self.pools = PoolBook(self.gate.may_serve)  # pooled workers (pool_state.py)
        # The running pool pilots, members or none (the hub's PilotService.pool_pilots)
        self.pool_pilots = pool_pilots or (lambda: ())
        self._pilot_stages: tuple[object, dict[ServableKey, tuple[str, ...]]] = ((), {})
        # servable -> True when a pilot will start workers again if its last one dies, so
        # that worker's requests wait for the replacement instead of failing
        self.replacement_expected = replacement_expected
        self._resolver = resolver
        self._servables: dict[tuple[str, int | None], ServableInfo] = {}
        self._queues: dict[ServableKey, dict[str, RequestQueue]] = {}
        self.shares: QueueShares[ServableKey] = QueueShares()  # queued per servable, user
        self._workers: dict[bytes, WorkerInfo] = {}
        self._idle: dict[ServableKey, dict[bytes, None]] = {}  # ordered sets, oldest first
        # Busy workers that may be sent their next batch now (HubConfig.prefetch)
        self._room: dict[ServableKey, dict[bytes, None]] = {}
        self._worker_count: Counter[ServableKey] = Counter()
        self._batches: dict[int, InFlight] = {}
        self._deadlines: list[tuple[float, int, Pending]] = []
        self._held: dict[ServableKey, float] = {}  # part-full batches: when they must go
        self.load_failures = LoadFailures()  # servables whose every worker failed to load
        self._arriving: dict[ServableKey, bool] = {}  # concurrent load: worth waiting to batch
        # Each servable's recent batch run time (a moving average): how long batches may wait
        self._batch_seconds: dict[ServableKey, float] = {}
        self._in_flight: Counter[ServableKey] = Counter()  # items at workers, per servable
        self._flights: dict[bytes, list[Pending]] = {}  # memo key -> requests joined to it
        # Servables whose requests came in the socket read now under way (begin_round):
        # their batches form when it ends, so a burst read at once goes as one batch.
        self._round: dict[ServableKey, ServableInfo] | None = None
        self.memo = MemoCache(self.config.memo_max_bytes)
        self._next_batch_id = 0
        self._seq = 0
        self._next_heartbeat = 0.0
        self.pace = Pace(self.config.heartbeat_interval, self.config.heartbeat_timeout,
                         self.config.heartbeats_per_second)
        self.stats: Counter[str] = Counter()  # written through count() and handle()
        self.metrics: BrokerMetrics | None = None  # set when the hub serves metrics
        self.changes = 0  # events handled and counts taken: a snapshot is stale if it moved
        self.pipelines = PipelineRunner(self._on_request, self.stats)  # steps: requests
        self._worker_handlers: dict[type[Message], Callable[..., None]] = {
            Hello: self._on_hello,
            Ready: self._on_ready,
            LoadFailed: self._on_load_failed,
            BatchResult: self._on_batch_result,
            Heartbeat: self._on_heartbeat,
            Bye: self._on_bye,
            Drain: self._on_drain,
        }

    # -- entry points --

    def handle(self, event: Event, now: float) -> list[Action]:
        self.changes += 1
        out: list[Action] = []
        if isinstance(event, FromClient):
            if isinstance(event.message, Request):
                self._on_request(event.identity, event.message, now, out, event.user,
                                 event.checked)
            else:
                self.stats["unexpected_messages"] += 1
        elif isinstance(event, FromWorker):
            handler = self._worker_handlers.get(type(event.message))
            if handler is None:
                self.stats["unexpected_messages"] += 1
            elif isinstance(event.message, Hello):
                self._on_hello(event.identity, event.message, now, out, event.user)
            elif self._admit(event, out):
                handler(event.identity, event.message, now, out)
        else:
            self._on_tick(now, out)
        return self.pipelines.route(out, now)  # step replies feed the next step

    def begin_round(self) -> None:
        """Requests handled from now until ``end_round`` form batches only then (a full
        batch still goes at once): the shell brackets each read of a caller socket."""
        self._round = {}

    def end_round(self, now: float) -> list[Action]:
        """Dispatch what the requests since ``begin_round`` queued."""
        waiting, self._round = self._round, None
        if not waiting:
            return []
        self.changes += 1
        out: list[Action] = []
        for info in waiting.values():
            self._dispatch(info, now, out)
        return self.pipelines.route(out, now)

    def next_wakeup(self, now: float) -> float:
        """Seconds until a Tick is next needed."""
        due = self._next_heartbeat
        if self._deadlines:
            due = min(due, self._deadlines[0][0])
        if self._held:
            due = min(due, min(self._held.values()))
        if self.ondemand.active:
            due = min(due, now + self.ondemand.next_check(now))
        return max(0.0, due - now)

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name`` (what the shell saw: malformed frames...)."""
        self.changes += 1
        self.stats[name] += n

    def invalidate(self, name: str) -> None:
        """Forget cached lookups of ``name`` (a new version was published)."""
        self.changes += 1
        for key in [k for k in self._servables if k[0] == name]:
            del self._servables[key]
        self.load_failures.forget(name)
        self.ondemand.forget(name)  # its own default profile, and why it was refused
        self._pool_forget(name)  # which pool pilots serve it

    def shutdown(self, reason: str) -> list[Action]:
        """Tell every worker to exit and fail everything not yet answered."""
        self.changes += 1
        out: list[Action] = [ToWorker(i, Shutdown(reason)) for i in self._workers]
        error = WorkerLost(f"the hub is shutting down: {reason}").to_wire()
        unanswered = [p for qs in self._queues.values() for q in qs.values() for p in q.items]
        unanswered += [p for flight in self._batches.values() for p in flight.items]
        for p in unanswered:
            if not p.done:
                self._answer(p, False, None, error, 0.0, out)
        for queue in (q for qs in self._queues.values() for q in qs.values()):
            queue.items.clear()  # all answered: the queues hold nothing now
            queue.live = 0
        self.shares = QueueShares()
        return self.pipelines.route(out, 0.0)

    # -- clients --

    def _resolve(self, name: str, version: int | None) -> ServableInfo:
        info = self._servables.get((name, version))
        if info is None:
            info = self._resolver(name, version)
            self._servables[(name, version)] = info
        return info

    def input_plan(self, user: str, req: Request) -> InputPlan | None:
        """What ``req``'s input is to be checked against, so that a large one can be checked
        off the loop; None when ``req`` fails before its check (``handle`` says why)."""
        try:
            info = self._resolve(req.servable, req.version)
            self.gate.authorize(user, info)
        except Exception:  # handle() meets the same error and answers it
            return None
        method = req.method or info.default_method
        declared = info.inputs.get(method)
        if declared is None or info.pipeline:
            return None
        memoize = info.deterministic and req.cache and bool(self.memo.max_bytes)
        try:  # the method as the memo key names it: with the request's parameters
            keyed = memo_method(method, check_parameters(info, method, req.parameters))
        except DlhubHpcError:
            return None
        return InputPlan(info, keyed, declared, memoize)

    def _on_request(self, client: bytes, req: Request, now: float, out: list[Action],
                    user: str = "", checked: Checked | None = None) -> None:
        self.stats["requests"] += 1
        try:
            info = self._resolve(req.servable, req.version)
            self.gate.authorize(user, info)  # before the memo cache: a hit is an answer too
            method = req.method or info.default_method
            declared = info.inputs.get(method)
            if declared is None:
                raise MethodNotFound(
                    f"{info.name}@{info.version} has no method {method!r}; "
                    f"it has {sorted(info.inputs)}",
                    servable=info.name, method=method, methods=sorted(info.inputs),
                )
            if checked is not None and checked.declared is not declared:
                checked = None  # the servable changed while its input was being checked
            parameters = check_parameters(info, method, req.parameters)
            keyed = memo_method(method, parameters)
            payload = check_value(declared, req.payload) if checked is None else checked.value()
        except DlhubHpcError as exc:
            hidden = (isinstance(exc, (ServableNotFound, ServableWithdrawn))
                      and not self.gate.may_see(user, req.servable))
            if hidden:
                exc = ServableNotFound(f"no servable {req.servable} that {user!r} may use",
                                       servable=req.servable)
            self._reject(client, req.request_id, exc, out)
            return
        timeout = req.timeout if req.timeout is not None else self.config.default_timeout
        if info.pipeline:  # runs here, as step requests (broker/pipeline.py)
            self.pipelines.start(client, req, info, payload, timeout, now, out, user)
            return
        self._seq += 1
        pending = Pending(
            client, req.request_id, info.key, method, payload,
            None if timeout is None else now + timeout, self._seq, now, notice=info.notice,
            parameters=parameters, user=user,
        )
        key = None
        if info.deterministic and req.cache and self.memo.max_bytes:
            key = checked.memo_key if checked is not None else None
            key = key or memo_key(info.digest, info.version, keyed, payload)
            if self._join_memo(key, pending, now, out):  # answered, or waits on its twin
                return
        failed = self.load_failures.get(info.key)
        if failed is not None and not self._live_workers(info.key):  # no worker will come
            self._answer(pending, False, None, failed, 0.0, out, now)
            return
        refused = admission_refusal(self.shares, self.config, info, user)
        if refused is not None:
            self.stats["overloaded"] += 1
            self._reject(client, req.request_id, refused, out)
            return
        methods = self._queues.get(info.key)
        if methods is None:
            methods = self._queues[info.key] = {}
        queue = methods.get(method)
        if queue is None:  # made once: a queue holds a fair queue of its own
            queue = methods[method] = RequestQueue()
        if pending.deadline is not None:
            heapq.heappush(self._deadlines, (pending.deadline, pending.seq, pending))
        if key is not None:
            pending.memo_key = key
            self._flights[key] = []
        self._note_arrival(info, now)
        queue.items.append(pending)
        queue.live += 1
        self.shares.add(info.key, user)
        if self.ondemand.active:  # nothing serves it: its default profile starts a pilot
            self._on_demand_request(info, now, out)
        if self._round is not None and queue.live < info.max_batch_size:
            self._round[info.key] = info  # dispatched once this read of the socket ends
        else:
            self._dispatch(info, now, out)

    def _reject(self, client: bytes, request_id: str, exc: DlhubHpcError,
                out: list[Action]) -> None:
        self.stats["rejected"] += 1
        if self.metrics is not None:
            self.metrics.refused(type(exc).__name__)
        out.append(ToClient(client, Reply(request_id, False, None, exc.to_wire())))

    def _note_arrival(self, info: ServableInfo, now: float) -> None:
        """Is ``info`` under concurrent load, so that a part-full batch should wait?"""
        # Others still unanswered: more are coming (a closed-loop caller resubmits as its
        # answers arrive). None: a lone or strictly sequential caller, who must not wait.
        unanswered = self._in_flight[info.key] > 0 or any(
            q.live for q in self._queues[info.key].values()
        )
        self._arriving[info.key] = unanswered

    def _join_memo(self, key: bytes, pending: Pending, now: float, out: list[Action]) -> bool:
        """Answer from the cache, or wait on the identical request in flight; else False."""
        hit, value = self.memo.get(key)
        if hit:
            pending.done, pending.payload = True, None
            self.stats["replies_ok"] += 1
            if self.metrics is not None:
                self.metrics.memo_hit(pending)
            out.append(ToClient(pending.client, Reply(pending.request_id, True, value, None,
                                                      [0.0, 0.0], pending.notice)))
            return True
        followers = self._flights.get(key)
        if followers is None:
            return False
        pending.queued = False
        followers.append(pending)
        if pending.deadline is not None:
            heapq.heappush(self._deadlines, (pending.deadline, pending.seq, pending))
        self.stats["single_flight_joins"] += 1
        return True

    def _answer(self, p: Pending, ok: bool, value: Any, error: dict[str, Any] | None,
                inference: float, out: list[Action], now: float | None = None) -> None:
        """Reply to ``p`` and to every request joined to it; cache a deterministic answer."""
        timing = None if now is None else [now - p.arrived, inference]
        p.done = True
        p.payload = None  # the deadline heap may hold p a while; not its (maybe large) input
        out.append(ToClient(p.client, Reply(p.request_id, ok, value, error, timing, p.notice)))
        self.stats["replies_ok" if ok else "replies_error"] += 1
        metrics = self.metrics
        if metrics is not None:
            metrics.answered(p, ok, error, now)
        if p.memo_key is None:
            return
        followers = self._flights.pop(p.memo_key, [])
        if ok and type(value) is StreamRef:  # its chunks reach one caller: the rest run alone
            self._rerun_alone(p, followers, now, out)
            return
        if ok:
            self.memo.put(p.memo_key, value)
        for f in followers:
            if not f.done:
                f.done, f.payload = True, None
                self.stats["replies_ok" if ok else "replies_error"] += 1
                if metrics is not None:
                    metrics.answered(f, ok, error, now)
                timing = None if now is None else [now - f.arrived, inference]
                out.append(ToClient(f.client, Reply(f.request_id, ok, value, error, timing,
                                                    f.notice)))

    def _rerun_alone(self, p: Pending, followers: list[Pending], now: float | None,
                     out: list[Action]) -> None:
        """Requests joined to ``p``, whose output streamed: a stream has one receiver, so
        each goes back to the front of its queue, joined to nothing, and runs again."""
        waiting = [f for f in followers if not f.done]
        for f in reversed(waiting):  # reversed + appendleft keeps their order
            self._requeue_front(f)
        self.stats["single_flight_reruns"] += len(waiting)
        if waiting and now is not None:
            self._dispatch(self._resolve(*p.servable), now, out)

    # -- dispatch --

    def _dispatch(self, info: ServableInfo, now: float, out: list[Action]) -> None:
        self._held.pop(info.key, None)
        idle = self._idle.get(info.key)
        queues = self._queues.get(info.key)
        while queues:
            # the longest idle worker of its own, else a free pooled worker that holds it,
            # else a busy one to run a full batch next
            identity = next(iter(idle)) if idle else self.pools.free_holder(info)
            if ahead := identity is None:
                identity = ahead_to(self._room.get(info.key), info, queues,
                                    self._batch_seconds.get(info.key))
            if identity is None:
                # a pooled worker loads it; with none connected, its pool pilot's
                # block will (the request waits in the backlog: the pilot's demand)
                if self._pooled() and oldest_queue(queues)[0] is not None:
                    self._pool_load(info, now, out)
                return
            queue, method = oldest_queue(queues)
            if queue is None:
                return
            release = release_time(info, queue, self._arriving.get(info.key, False),
                                   self._batch_seconds.get(info.key))
            if release > now:
                self._held[info.key] = release
                if self.metrics is not None:
                    self.metrics.held(info.key, now)
                return
            items = take(queue, info.max_batch_size)
            if not items:
                queue.live = 0  # only answered requests were left
                continue
            for p in items:
                self.shares.remove(p.servable, p.user)
            worker = self._workers[identity]
            self._next_batch_id += 1
            batch_id = self._next_batch_id
            if worker.pooled:
                self.pools.use(identity, info.key)
                worker.servable = info.key
            elif ahead:
                self._room[info.key].pop(identity)
                worker.next_batch = batch_id
                self.stats["batches_ahead"] += 1
            else:
                self._idle[info.key].pop(identity)
                if self.config.prefetch and not streams_in(items):
                    self._room.setdefault(info.key, {})[identity] = None
            worker.last_sent = now
            held = 0.0 if self.metrics is None else self.metrics.left_queue(info.key, now)
            flight = InFlight(identity, info.key, items, now, ahead, held)
            self._batches[batch_id] = flight
            self._in_flight[info.key] += len(items)
            if not ahead:
                worker.state, worker.batch_id = "busy", batch_id
                self._count_batch(flight, now)
            params = [p.parameters for p in items]  # per item; None in the common case
            out.append(ToWorker(identity, Batch(batch_id, method, [p.payload for p in items],
                                                params if any(params) else None,
                                                ref_of(info.key) if worker.pooled else None,
                                                [p.request_id for p in items])))

    def _count_batch(self, flight: InFlight, start: float) -> None:
        """Count a batch once, when it runs (sent to a free worker, or its turn came ahead),
        its requests starting at ``start``: a batch sent ahead and taken back before its
        turn never ran, and its requests are counted in the batch they run in."""
        self.stats["batches"] += 1
        self.stats["batched_items"] += len(flight.items)
        if self.metrics is not None and flight.items:
            method = flight.items[0].method
            self.metrics.batch_ran(flight.servable, method, len(flight.items), flight.held)
            self.metrics.started(flight.servable, method, flight.items, start)

    def _requeue_front(self, p: Pending) -> None:
        queue = self._queues[p.servable][p.method]
        p.queued = True
        queue.items.appendleft(p)
        queue.live += 1
        self.shares.add(p.servable, p.user)

    # -- time --

    def _on_tick(self, now: float, out: list[Action]) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, p = heapq.heappop(self._deadlines)
            if not p.done:
                self._expire(p, now, out)
        if len(self._deadlines) > 1024 and len(self._deadlines) > 4 * self._pending_count():
            self._deadlines = [d for d in self._deadlines if not d[2].done]
            heapq.heapify(self._deadlines)
        for key in [k for k, due in self._held.items() if due <= now]:
            self._dispatch(self._resolve(*key), now, out)
        if self.ondemand.active:
            self._on_demand_tick(now, out)
        if now >= self._next_heartbeat:
            self.pace.update(len(self._workers), now)
            self._next_heartbeat = now + self.pace.beat
            silent = [
                w for w in self._workers.values()
                if now - w.last_seen > self.pace.silence
            ]
            for worker in silent:  # none of them may take the others' retries
                self._idle.get(worker.servable, {}).pop(worker.identity, None)
                self._room.get(worker.servable, {}).pop(worker.identity, None)
                self.pools.hold_back(worker.identity)
            for identity in [w.identity for w in silent]:
                self._lose_worker(
                    identity, f"no heartbeat for {self.pace.silence}s", now, out
                )
            self._recall_overdue(now, out)
            # Only to workers that heard nothing else from the hub in the last interval.
            quiet_since = now - self.pace.beat
            idle = [w for w in self._workers.values() if w.last_sent <= quiet_since]
            for w in idle:
                w.last_sent = now
            if idle:
                out.append(ToWorkers([w.identity for w in idle],
                                     Heartbeat("hub", self.pace.beat)))

    def _expire(self, p: Pending, now: float, out: list[Action]) -> None:
        """``p``'s deadline passed: it gets Timeout; a request joined to it takes its place."""
        if p.queued:
            self._queues[p.servable][p.method].live -= 1
            self.shares.remove(p.servable, p.user)
        self.stats["timeouts"] += 1
        key, p.memo_key = p.memo_key, None
        stage = self.start_stage(p.servable)
        error = timeout_error(p, self._live_workers(p.servable), stage,
                              "on demand" if self.ondemand.stage(p.servable) else "in its pool",
                              self.ondemand.refusal(p.servable) if stage == NOT_STARTED else None)
        self._answer(p, False, None, error.to_wire(), 0.0, out, now)
        if key is None:
            return
        waiting = [f for f in self._flights.pop(key, []) if not f.done]
        if waiting:
            leader = waiting[0]
            leader.memo_key = key
            self._flights[key] = waiting[1:]
            self._requeue_front(leader)
            self._dispatch(self._resolve(*leader.servable), now, out)

    def _fail_queued(self, key: ServableKey, error: dict[str, Any], now: float,
                     out: list[Action]) -> None:
        super()._fail_queued(key, error, now, out)
        self.shares.clear(key)  # every request queued for it was answered

    def _pending_count(self) -> int:
        queued = sum(q.live for qs in self._queues.values() for q in qs.values())
        followers = sum(len(f) for f in self._flights.values())
        return queued + followers + sum(len(f.items) for f in self._batches.values())

    # -- status and books --

    def view(self) -> Snapshot:
        """Queues, workers and counters, frozen: what the loop publishes to other threads."""
        stats = dict(self.stats)
        stats.update(self.memo.stats())
        return take_snapshot(self._queues, self._batches.values(), self._workers.values(),
                             stats, self.changes, self.load_failures.by_ref(),
                             pools=self._pools_view())

    def snapshot(self) -> dict[str, Any]:
        """``view()`` as plain data (for ``dlhub-hpc status``); on the loop thread only."""
        return self.view().as_dict()

    def validate(self) -> None:
        """Check the books (``invariants.py``); ``BrokerInvariantError`` names each fault."""
        found = problems(self) + share_problems(self._queues, self.shares)
        if found:
            raise BrokerInvariantError(
                "the broker's books do not balance: " + "; ".join(found)
                + "; please report it with the events that led here", problems=found)
