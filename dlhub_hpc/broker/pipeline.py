"""Pipelines: servables whose steps are other servables, run inside the hub.

A pipeline request never reaches a worker. The runner turns it into ordinary step
requests, submitted to the broker's own request path under ``PIPELINE_IDENTITY``, so each
step is validated, queued, batched and memoized like any request. The step's reply comes
back to the runner (``route`` takes it out of the actions before they reach the shell),
which submits the next step with that output; only the last step's answer, or the first
error, goes to the caller. A stage may be ``parallel``: all its steps get the same input
and the next stage gets their outputs as a list (an ensemble).

Everything here is pure: like ``state.py`` it sees no sockets and no clocks.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dlhub_hpc.broker.events import Action, ServableInfo, ToClient
from dlhub_hpc.errors import DlhubHpcError, PilotError, SpecError, Timeout
from dlhub_hpc.protocol import Reply, Request
from dlhub_hpc.servable.spec import PipelineStage, PipelineStep, ServableSpec

logger = logging.getLogger(__name__)

# The identity step requests are sent under. ZeroMQ never gives a peer an identity that
# starts with a zero byte and is this long, so no real client can collide with it.
PIPELINE_IDENTITY = b"\x00dlhub-pipeline"
MAX_DEPTH = 8  # pipelines inside pipelines; deeper is a cycle

# The broker's own request path: (identity, request, now, actions, user).
Submit = Callable[[bytes, Request, float, list[Action], str], None]
AccessCheck = Callable[[str, bytes, PipelineStep], None]  # (user, caller identity, step)


@dataclass(slots=True, eq=False)
class PipelineRun:
    """One pipeline request on its way through the stages."""

    run_id: str
    client: bytes
    request_id: str
    name: str
    version: int
    stages: tuple[PipelineStage, ...]
    deadline: float | None
    cache: bool
    arrived: float
    user: str = ""  # the caller's authenticated user: each step runs on their behalf
    depth: int = 0
    stage: int = 0
    results: list[Any] = field(default_factory=list)
    waiting: int = 0
    inference: float = 0.0
    done: bool = False
    warnings: list[str] = field(default_factory=list)  # the pipeline's and its steps' notices

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


class PipelineRunner:
    """The pipelines in flight in one broker."""

    def __init__(self, submit: Submit, stats: Counter[str] | None = None) -> None:
        self._submit = submit
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self._runs: dict[str, PipelineRun] = {}
        self._steps: dict[str, tuple[PipelineRun, int]] = {}  # step id -> (run, member)
        self._next = 0
        # Each step is submitted with the caller's user, so the broker's own access check
        # applies to every step. This hook is an extra, pipeline-only check: called with
        # the user and the original caller's identity before each step; it raises a
        # DlhubHpcError (PermissionDenied) to refuse.
        self.access_check: AccessCheck | None = None

    def __len__(self) -> int:
        return len(self._runs)

    # -- entry points --

    def start(self, client: bytes, req: Request, info: ServableInfo, payload: Any,
              timeout: float | None, now: float, out: list[Action], user: str = "") -> None:
        """Run pipeline ``info`` for ``req`` (its payload already checked) for ``user``."""
        self._next += 1
        parent = self._steps.get(req.request_id) if client == PIPELINE_IDENTITY else None
        run = PipelineRun(
            f"p{self._next}", client, req.request_id, info.name, info.version, info.pipeline,
            None if timeout is None else now + timeout, req.cache, now, user,
            depth=0 if parent is None else parent[0].depth + 1,
            warnings=[info.notice] if info.notice else [],
        )
        self.stats["pipeline_runs"] += 1
        if run.depth >= MAX_DEPTH:
            self._finish(run, False, None, SpecError(
                f"{run.label} nests pipelines more than {MAX_DEPTH} deep; a step refers back "
                "to a pipeline that contains it", servable=info.name,
            ).to_wire(), now, out)
            return
        self._runs[run.run_id] = run
        self._submit_stage(run, payload, now, out)

    def caller(self, identity: bytes, request_id: str) -> bytes:
        """The client a request was made for: for a step, the pipeline's own caller."""
        while identity == PIPELINE_IDENTITY and request_id in self._steps:
            run = self._steps[request_id][0]
            identity, request_id = run.client, run.request_id
        return identity

    def route(self, actions: list[Action], now: float) -> list[Action]:
        """Take step replies out of ``actions`` and act on them; the rest pass through."""
        if not self._steps:  # no step out, so no step reply: the hot path of plain requests
            return actions
        out: list[Action] = []
        work = deque(actions)
        while work:
            action = work.popleft()
            if isinstance(action, ToClient) and action.identity == PIPELINE_IDENTITY:
                more: list[Action] = []
                self._on_step_reply(action.message, now, more)
                work.extend(more)
            else:
                out.append(action)
        return out

    # -- stages --

    def _submit_stage(self, run: PipelineRun, value: Any, now: float,
                      out: list[Action]) -> None:
        members = run.stages[run.stage].members
        run.results = [None] * len(members)
        run.waiting = len(members)
        for i, step in enumerate(members):
            if run.done:
                return  # an earlier member failed at once
            error = self._check_step(run, step, now)
            if error is not None:
                self._fail_step(run, step, error.to_wire(), now, out)
                return
            step_id = f"{run.run_id}/{run.stage}.{i}"
            self._steps[step_id] = (run, i)
            self.stats["pipeline_steps"] += 1
            timeout = None if run.deadline is None else run.deadline - now
            self._submit(PIPELINE_IDENTITY, Request(
                step_id, step.servable, step.version, step.method or "", value, timeout,
                run.cache,
            ), now, out, run.user)

    def _check_step(self, run: PipelineRun, step: PipelineStep, now: float
                    ) -> DlhubHpcError | None:
        """The single place each step is checked for the caller before it runs."""
        if run.deadline is not None and run.deadline <= now:
            return Timeout(f"{run.label} ran out of time before this step started",
                           servable=run.name)
        if self.access_check is not None:
            try:
                self.access_check(run.user, self.caller(run.client, run.request_id), step)
            except DlhubHpcError as exc:
                return exc
        return None

    def _on_step_reply(self, reply: Reply, now: float, out: list[Action]) -> None:
        entry = self._steps.pop(reply.request_id, None)
        if entry is None:
            logger.debug("dropped a reply to an unknown pipeline step %s", reply.request_id)
            return
        run, member = entry
        if run.done:
            return  # a parallel sibling already failed the run
        step = run.stages[run.stage].members[member]
        if reply.timing:
            run.inference += reply.timing[1]
        if reply.warning and reply.warning not in run.warnings:
            run.warnings.append(reply.warning)  # e.g. a step's version is deprecated
        if not reply.ok:
            self._fail_step(run, step, reply.error or {}, now, out)
            return
        run.results[member] = reply.value
        run.waiting -= 1
        if run.waiting:
            return
        stage = run.stages[run.stage]
        value = run.results if stage.parallel is not None else run.results[0]
        run.stage += 1
        if run.stage == len(run.stages):
            self._finish(run, True, value, None, now, out)
        else:
            self._submit_stage(run, value, now, out)

    def _fail_step(self, run: PipelineRun, step: PipelineStep, error: dict[str, Any],
                   now: float, out: list[Action]) -> None:
        self.stats["pipeline_step_errors"] += 1
        self._finish(run, False, None, step_error(run, step, error), now, out)

    def _finish(self, run: PipelineRun, ok: bool, value: Any, error: dict[str, Any] | None,
                now: float, out: list[Action]) -> None:
        run.done = True
        run.results = []
        self._runs.pop(run.run_id, None)
        # Steps of parallel siblings still out stay in _steps: their replies are dropped
        # when they come (every request gets one: an answer, an error or a timeout).
        timing = [max(0.0, now - run.arrived), run.inference]  # shutdown passes now=0
        warning = "; ".join(run.warnings) or None
        out.append(ToClient(run.client, Reply(run.request_id, ok, value, error, timing, warning)))


def step_error(run: PipelineRun, step: PipelineStep, error: dict[str, Any]) -> dict[str, Any]:
    """A step's error record, rewritten to name the pipeline and the step; same type."""
    number = f"{run.stage + 1}/{len(run.stages)}"
    details = dict(error.get("details") or {})
    details.setdefault("pipeline", run.name)
    details.setdefault("step", run.stage + 1)
    details.setdefault("step_servable", step.servable)
    return {
        "type": error.get("type", "DlhubHpcError"),
        "message": f"{run.label} step {number} ({step.ref}) failed: "
                   f"{error.get('message', 'no message')}",
        "details": details,
    }


def check_steps(spec: ServableSpec, lookup: Callable[[str, int | None], ServableSpec]) -> None:
    """At publish time: every step of pipeline ``spec`` exists, with the method it names.

    ``lookup(name, version)`` returns a published spec or raises ``ServableNotFound``.
    """
    for number, stage in enumerate(spec.servable.steps or [], start=1):
        for step in stage.members:
            if step.servable == spec.full_name:
                raise SpecError(f"{spec.full_name} step {number} refers to the pipeline itself")
            try:
                found = lookup(step.servable, step.version)
            except DlhubHpcError as exc:
                raise SpecError(
                    f"{spec.full_name} step {number} ({step.ref}) is not published: "
                    f"{exc.message}; publish the steps first",
                    servable=spec.full_name, step=number,
                ) from None
            if step.method is not None and step.method not in found.servable.methods:
                raise SpecError(
                    f"{spec.full_name} step {number}: {step.servable} has no method "
                    f"{step.method!r}; it has {sorted(found.servable.methods)}",
                    servable=spec.full_name, step=number,
                )


def refuse_workers(spec: ServableSpec) -> None:
    """A pipeline runs in the hub: asking for its workers gets the steps that need them."""
    if spec.servable.steps is None:
        return
    steps = sorted({step.servable for stage in spec.servable.steps for step in stage.members})
    raise PilotError(
        f"{spec.full_name} is a pipeline and runs in the hub; start workers for its steps "
        f"instead: {', '.join(steps)}",
        servable=spec.full_name, steps=steps,
    )
