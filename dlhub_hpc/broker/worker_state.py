"""The workers' part of the broker's state machine (``BrokerState`` inherits it).

A worker's life at the hub: its ``Hello`` (checked against the gate), ``Ready`` once
loaded or ``LoadFailed``, the ``BatchResult`` of each batch it ran, heartbeats, ``Drain``
and ``Bye``, and its loss (silent or gone), whose batch is retried on another worker or
answered with ``WorkerLost``. Pooled workers take the hooks of ``pool_state.py``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from dlhub_hpc.broker.batching import AHEAD_MAX_SECONDS
from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.broker.events import (
    Action,
    FromWorker,
    InFlight,
    LoadServable,
    Pending,
    ServableKey,
    ToWorker,
    WorkerInfo,
)
from dlhub_hpc.broker.gate import Gate
from dlhub_hpc.broker.pipeline import PipelineRunner
from dlhub_hpc.broker.pool_state import PoolDispatch
from dlhub_hpc.errors import DlhubHpcError, LocalPathRefused, ProtocolError, WorkerLost
from dlhub_hpc.metrics.recorder import BrokerMetrics
from dlhub_hpc.protocol import (
    BatchResult,
    Bye,
    Drain,
    Heartbeat,
    Hello,
    LoadFailed,
    Ready,
    Recall,
    Shutdown,
    StreamRef,
)

logger = logging.getLogger(__name__)


class WorkerLifecycle(PoolDispatch):
    """Handlers of workers' messages and of their loss; the state's own tables are shared."""

    config: HubConfig
    gate: Gate
    replacement_expected: Callable[[ServableKey], bool] | None
    metrics: BrokerMetrics | None
    changes: int
    pipelines: PipelineRunner
    _idle: dict[ServableKey, dict[bytes, None]]
    _room: dict[ServableKey, dict[bytes, None]]
    _batches: dict[int, InFlight]
    _in_flight: Counter[ServableKey]
    _batch_seconds: dict[ServableKey, float]

    # -- what the state provides --

    def _answer(self, p: Pending, ok: bool, value: Any, error: dict[str, Any] | None,
                inference: float, out: list[Action], now: float | None = None) -> None:
        raise NotImplementedError

    def _requeue_front(self, p: Pending) -> None:
        raise NotImplementedError

    def _count_batch(self, flight: InFlight, start: float) -> None:
        raise NotImplementedError

    # -- workers --

    def _admit(self, event: FromWorker, out: list[Action]) -> bool:
        """Does this message come with the credential its worker registered with, still live?

        A worker's messages name it by routing id, a heartbeat or drain by worker id: a
        worker with another owner's (or a revoked) credential must not keep a worker of
        theirs alive, drain it, or answer its batches.
        """
        msg = event.message
        named = (msg.sender if isinstance(msg, Heartbeat)
                 else msg.worker_id if isinstance(msg, Drain) and event.identity not in
                 self._workers else None)
        worker = self._workers.get(named.encode() if named else event.identity)
        if worker is None or worker.user == event.user:
            if self.gate.credential_live(event.user):
                return True
            self.stats["revoked_worker_messages"] += 1
            if worker is not None and not isinstance(msg, Heartbeat):
                out.append(ToWorker(event.identity, Shutdown("its credential was revoked")))
            return False
        self.stats["impostor_worker_messages"] += 1
        logger.warning("dropped a %s for worker %s from another credential (%s)",
                       type(msg).__name__, worker.worker_id, event.user)
        return False

    def _on_hello(self, identity: bytes, msg: Hello, now: float, out: list[Action],
                  user: str = "") -> None:
        if msg.pool is not None:
            self._pool_hello(identity, msg, now, out, user)
            return
        try:
            info = self._resolve(msg.servable, msg.version)
        except DlhubHpcError as exc:
            out.append(ToWorker(identity, Shutdown(f"cannot serve {msg.servable}: {exc}")))
            return
        if not self.gate.may_serve(user, info):
            self.stats["workers_refused"] += 1
            logger.warning("refused worker %s for %s: its credential (%s) does not serve it",
                           msg.worker_id, info.name, user)
            out.append(ToWorker(identity, Shutdown(
                f"this worker credential may not serve {info.name}: it serves its own "
                "owner's servables only; start workers through the hub")))
            return
        if identity in self._workers:
            self._lose_worker(identity, "it registered again", now, out)
        self._workers[identity] = WorkerInfo(
            identity, msg.worker_id, info.key, msg.host, msg.pid, msg.block, now, now,
            ranks=msg.ranks, binding=msg.binding, user=user,
        )
        self._worker_count[info.key] += 1
        self.load_failures.clear(info.key)
        self.stats["workers_registered"] += 1
        out.append(LoadServable(identity, info))

    def _known(self, identity: bytes, out: list[Action], now: float) -> WorkerInfo | None:
        worker = self._workers.get(identity)
        if worker is None:
            # A worker this hub declared lost (or never met): its work went elsewhere.
            self.stats["unknown_worker_messages"] += 1
            out.append(ToWorker(identity, Shutdown("this hub does not know you; start afresh")))
            return None
        worker.last_seen = now
        return worker

    def _on_ready(self, identity: bytes, msg: Ready, now: float, out: list[Action]) -> None:
        worker = self._known(identity, out, now)
        if worker is None or worker.draining:
            return
        if worker.state != "loading":  # said twice: a busy worker would lose its batch
            self.stats["unexpected_messages"] += 1
            return
        if worker.pooled:
            self._pool_ready(identity, worker, msg, now, out)
            return
        worker.state = "idle"
        self._idle.setdefault(worker.servable, {})[identity] = None
        self._dispatch(self._resolve(*worker.servable), now, out)

    def assign_failed(self, identity: bytes, error: DlhubHpcError, now: float) -> list[Action]:
        """The hub could not send a worker its servable (a corrupted bundle): a failed load."""
        self.changes += 1
        out: list[Action] = []
        self._on_load_failed(identity, LoadFailed("", error.to_wire()), now, out)
        return self.pipelines.route(out, now)

    def _on_load_failed(
        self, identity: bytes, msg: LoadFailed, now: float, out: list[Action]
    ) -> None:
        loaded = self._workers.get(identity)
        if loaded is not None and loaded.pooled and loaded.state == "loading":
            self._pool_load_failed(identity, loaded, msg, now, out)  # it keeps the others
            return
        if loaded is not None and loaded.state != "loading":  # it had loaded: it is gone
            self._lose_worker(identity, f"it reported a failed load ({msg.error.get('message')})",
                              now, out)
            return
        worker = self._workers.pop(identity, None)
        if worker is None:
            return
        self._worker_count[worker.servable] -= 1
        self.stats["load_failures"] += 1
        logger.warning("worker %s could not load %s: %s", worker.worker_id, worker.servable,
                       msg.error.get("message"))
        if self._live_workers(worker.servable):
            return
        # Its callers get the load's own error (BundleDigestMismatch ...) now, not a Timeout.
        error = self.load_failures.record(worker.servable, msg.error)
        self._fail_queued(worker.servable, error, now, out)

    def _fail_queued(self, key: ServableKey, error: dict[str, Any], now: float,
                     out: list[Action]) -> None:
        for queue in self._queues.get(key, {}).values():
            while queue.items:
                p = queue.items.popleft()
                if not p.done:
                    self._answer(p, False, None, error, 0.0, out, now)
            queue.live = 0

    def runs(self, identity: bytes, batch_id: int) -> bool:
        """Is batch ``batch_id`` one the hub gave the worker at ``identity`` and still
        waits on (not taken back, not given up with the worker)?"""
        flight = self._batches.get(batch_id)
        return flight is not None and flight.worker == identity

    def _on_batch_result(
        self, identity: bytes, msg: BatchResult, now: float, out: list[Action]
    ) -> None:
        worker = self._known(identity, out, now)
        if worker is None:
            return
        if not self.runs(identity, msg.batch_id):
            self.stats["stale_results"] += 1
            return
        flight = self._batches[msg.batch_id]
        del self._batches[msg.batch_id]
        # a worker's word: used only where it is a plausible run time
        ran = msg.elapsed if isinstance(msg.elapsed, float) and 0 <= msg.elapsed < 3600 else None
        if flight.ahead:  # it answered before the batch it waited behind: it ran, from
            flight.ahead = False  # about its run time ago
            self._count_batch(flight, max(flight.sent, now - (ran or 0.0)))
        self._in_flight[worker.servable] -= len(flight.items)
        if self.metrics is not None and flight.items:
            self.metrics.batch_done(flight.servable, flight.items[0].method, msg.elapsed)
        if ran is not None:
            last = self._batch_seconds.get(flight.servable)
            self._batch_seconds[flight.servable] = (
                ran if last is None else last + 0.2 * (ran - last))
        results = msg.results
        if len(results) == 1 and _error_record(results[0]) is not None:
            results = results * len(flight.items)  # one error answers the whole batch
        resent = self._send_again(flight, results)
        if not resent:
            self._answer_batch(flight, msg, results, now, out)
        worker.batches += 1
        worker.items += len(flight.items)
        if self._next_of(worker, msg.batch_id, now, out, results):
            if resent:
                self._dispatch(self._resolve(*worker.servable), now, out)
            return
        worker.state, worker.batch_id = "idle", None
        if worker.draining:  # it holds nothing now: let it go
            worker.state = "draining"
            out.append(ToWorker(identity, Shutdown("drained")))
            return
        if worker.pooled:
            self._pool_freed(identity, now, out)
            return
        if _streams_out(results):
            # It sends those outputs in chunks before it reads anything else: a request
            # given to it now would wait for them. The shell calls outputs_sent after.
            worker.state = "sending"
            return
        self._idle.setdefault(worker.servable, {})[identity] = None
        self._dispatch(self._resolve(*worker.servable), now, out)

    def _answer_batch(self, flight: InFlight, msg: BatchResult, results: list[Any],
                      now: float, out: list[Action]) -> None:
        wrong_count = len(results) != len(flight.items)
        for i, p in enumerate(flight.items):
            if p.done:
                continue
            result = None if wrong_count else results[i]
            error = _error_record(result)
            if isinstance(result, list) and len(result) == 2 and result[0] is True:
                self._answer(p, True, result[1], None, msg.elapsed, out, now)
            elif error is not None:
                self._answer(p, False, None, error, msg.elapsed, out, now)
            else:
                why = (f"worker returned {len(msg.results)} results for {len(flight.items)} "
                       "inputs") if wrong_count else "malformed result from worker"
                self._answer(p, False, None, ProtocolError(why).to_wire(), msg.elapsed, out, now)

    def _send_again(self, flight: InFlight, results: list[Any]) -> bool:
        """A batch whose same-node arrays its worker could not take (their tickets expired
        while it ran the batch before, as one sent ahead may wait past a slow batch): its
        requests go back to the front of the queue, with no attempt counted, to go again
        with new tickets. Once: refused again, they are answered with the refusal."""
        if not results or not all(_refused(r) for r in results):
            return False
        waiting = [p for p in flight.items if not p.done]
        if not waiting or any(p.refused for p in waiting):
            return False
        for p in reversed(waiting):  # reversed + appendleft keeps their order
            p.refused = True
            self._requeue_front(p)
        self.stats["batches_sent_again"] += 1
        return True

    def _next_of(self, worker: WorkerInfo, done: int, now: float, out: list[Action],
                 results: list[Any]) -> bool:
        """After batch ``done`` (its ``results``): True if the worker holds another (sent
        ahead), which it runs now; then it has room for the next one ahead, unless it
        drains or first sends ``done``'s outputs in chunks (as long as its callers take:
        nothing more waits)."""
        ahead = worker.next_batch
        if ahead is None:
            self._room.get(worker.servable, {}).pop(worker.identity, None)
            return False
        worker.next_batch = None
        if done == worker.batch_id:
            worker.batch_id = ahead
            flight = self._batches[ahead]
            flight.ahead, flight.sent = False, now  # it runs now: its requests waited so far
            self._count_batch(flight, now)
        # else the one ahead answered first, and the other still runs
        if not worker.draining and not _streams_out(results):
            self._room.setdefault(worker.servable, {})[worker.identity] = None
            self._dispatch(self._resolve(*worker.servable), now, out)
        return True

    def outputs_sent(self, identity: bytes, now: float) -> list[Action]:
        """The worker has no output transfer open any more (sent, aborted or stalled): it
        takes work again."""
        worker = self._workers.get(identity)
        if worker is None or worker.state != "sending":
            return []
        self.changes += 1
        out: list[Action] = []
        worker.state = "idle"
        self._idle.setdefault(worker.servable, {})[identity] = None
        self._dispatch(self._resolve(*worker.servable), now, out)
        return self.pipelines.route(out, now)

    def heartbeat(self, identity: bytes, sender: str, user: str, now: float) -> list[Action]:
        """``handle(FromWorker(identity, Heartbeat(sender), user), now)`` for the loop's
        most frequent message (a worker's, every interval): a refreshed ``last_seen`` is
        nothing a snapshot shows, so only a refused heartbeat counts as a change."""
        msg, out = Heartbeat(sender), list[Action]()
        if self._admit(FromWorker(identity, msg, user), out):
            self._on_heartbeat(identity, msg, now, out)
        else:
            self.changes += 1
        return out

    def _on_heartbeat(self, identity: bytes, msg: Heartbeat, now: float, out: list[Action]) -> None:
        # Heartbeats come from a worker's own heartbeat socket; the sender names the worker.
        worker = self._workers.get(msg.sender.encode())
        if worker is not None:
            worker.last_seen = now

    def _on_bye(self, identity: bytes, msg: Bye, now: float, out: list[Action]) -> None:
        if identity in self._workers:
            self._lose_worker(identity, f"it exited ({msg.reason})", now, out, graceful=True)

    def _on_drain(self, identity: bytes, msg: Drain, now: float, out: list[Action]) -> None:
        """The worker takes no new work; its queue waits for the others or a replacement."""
        if identity not in self._workers:  # told mid-batch from the worker's heartbeat socket
            identity = msg.worker_id.encode()
        worker = self._known(identity, out, now)
        if worker is None or worker.draining:
            return
        worker.draining, worker.state = True, "draining"
        self._idle.get(worker.servable, {}).pop(identity, None)
        self._room.get(worker.servable, {}).pop(identity, None)
        self._pool_drained(identity, now, out)  # a load it began goes to another
        self.stats["workers_drained"] += 1
        logger.info("worker %s (%s@%s) drains: %s", worker.worker_id, *worker.servable,
                    msg.reason)
        if worker.batch_id is None:
            out.append(ToWorker(identity, Shutdown("drained")))

    def _live_workers(self, servable: ServableKey) -> int:
        return self._worker_count[servable] + self._pool_live(servable)

    def _lose_worker(
        self, identity: bytes, why: str, now: float, out: list[Action], *, graceful: bool = False
    ) -> None:
        worker = self._workers.pop(identity)
        if worker.pooled:
            self.pools.leave(identity)
        else:
            self._worker_count[worker.servable] -= 1
        self._idle.get(worker.servable, {}).pop(identity, None)
        self._room.get(worker.servable, {}).pop(identity, None)
        self.stats["workers_exited" if graceful else "workers_lost"] += 1
        logger.log(logging.INFO if graceful else logging.WARNING, "worker %s (%s@%s) gone: %s",
                   worker.worker_id, *worker.servable, why)
        ahead = self._take_back_ahead(worker)
        flight = self._batches.pop(worker.batch_id, None) if worker.batch_id else None
        if flight is None:
            if ahead:
                self._dispatch(self._resolve(*worker.servable), now, out)
            if worker.pooled and worker.state == "loading":  # another may load it
                self._dispatch(self._resolve(*worker.servable), now, out)
            return
        self._in_flight[worker.servable] -= len(flight.items)
        others = self._live_workers(worker.servable)
        if not others and self.replacement_expected is not None:
            others = self.replacement_expected(worker.servable)
        if not others:  # a pool's pilot brings pooled workers back, as a servable's does
            others = self._pool_pilot_serves(worker.servable)
        name, version = worker.servable
        for p in reversed(flight.items):  # reversed + appendleft keeps the original order
            if p.done:
                continue
            p.attempts += 1
            if p.attempts > self.config.max_retries or not others:
                self.stats["worker_lost_errors"] += 1
                error = WorkerLost(
                    f"the worker running {name}@{version}.{p.method} died ({why}) and "
                    + ("no other worker serves it" if not others else
                       f"the request had already been tried {p.attempts} times"),
                    servable=name, version=version, worker=worker.worker_id,
                )
                self._answer(p, False, None, error.to_wire(), 0.0, out, now)
            else:
                self.stats["retries"] += 1
                self._requeue_front(p)
        self._dispatch(self._resolve(name, version), now, out)

    def _take_back_ahead(self, worker: WorkerInfo) -> bool:
        """The batch ``worker`` holds ahead, if any, goes back to the front of the queue
        with no attempt counted: it never started."""
        ahead = self._batches.pop(worker.next_batch, None) if worker.next_batch else None
        worker.next_batch = None
        if ahead is None:
            return False
        self._in_flight[worker.servable] -= len(ahead.items)
        for p in reversed(ahead.items):
            if not p.done:
                self._requeue_front(p)
        return True

    def _recall_overdue(self, now: float, out: list[Action]) -> None:
        """A batch sent ahead waits behind the one its worker runs only while that one is
        brief: once it has run over ``AHEAD_MAX_SECONDS`` (and twice its servable's usual
        batch time), the worker gets nothing more ahead, and a batch it holds ahead is taken
        back for a free worker, if one is there to take it. The worker skips it if it has
        not started it; a result it still sends is dropped as stale."""
        overdue: list[tuple[WorkerInfo, int | None, float]] = []
        for w in self._workers.values():
            running = self._batches.get(w.batch_id) if w.batch_id is not None else None
            if running is None or w.pooled:
                continue
            limit = max(AHEAD_MAX_SECONDS, 2 * (self._batch_seconds.get(w.servable) or 0.0))
            if now - running.sent > limit:
                overdue.append((w, w.next_batch, limit))
        for worker, recalled, limit in overdue:
            self._room.get(worker.servable, {}).pop(worker.identity, None)
            if recalled is None or not self._idle.get(worker.servable):
                continue
            self._take_back_ahead(worker)
            self.stats["batches_recalled"] += 1
            logger.info("worker %s (%s@%s): batch %s taken back; the one it runs has run "
                        "over %.0fs", worker.worker_id, *worker.servable, recalled, limit)
            out.append(ToWorker(worker.identity, Recall(recalled)))
            self._dispatch(self._resolve(*worker.servable), now, out)


def _streams_out(results: list[Any]) -> bool:
    """Whether the worker sends some of these outputs in chunks before it reads on."""
    return any(type(r) is list and len(r) == 2 and r[0] is True and type(r[1]) is StreamRef
               for r in results)


def _refused(result: Any) -> bool:
    error = _error_record(result)
    return error is not None and error["type"] == LocalPathRefused.__name__


def _error_record(result: Any) -> dict[str, Any] | None:
    """The error record of a worker's ``[False, error]`` result, in the form clients rebuild
    errors from (a worker's record is not trusted to have it); None for anything else."""
    if not (isinstance(result, list) and len(result) == 2 and result[0] is False
            and isinstance(result[1], dict)):
        return None
    error = result[1]
    details = error.get("details")
    return {"type": str(error.get("type", "ExecutionError")),
            "message": str(error.get("message", "the worker gave no message")),
            "details": details if isinstance(details, dict) else {}}
