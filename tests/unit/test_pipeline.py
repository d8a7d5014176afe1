"""Pipelines in the broker's state machine: steps are ordinary requests inside the hub."""

from __future__ import annotations

from typing import Any

import pytest

from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.broker.gate import Gate, OpenGate
from dlhub_hpc.broker.pipeline import PIPELINE_IDENTITY, check_steps
from dlhub_hpc.broker.state import (
    BrokerState,
    FromClient,
    FromWorker,
    ServableInfo,
    Tick,
    ToClient,
    ToWorker,
)
from dlhub_hpc.errors import (
    DlhubHpcError,
    ExecutionError,
    InvalidInput,
    ServableNotFound,
    SpecError,
    Timeout,
    WorkerLost,
    error_from_wire,
)
from dlhub_hpc.protocol import Batch, BatchResult, Hello, Ready, Reply, Request
from dlhub_hpc.servable.spec import PipelineStage, PipelineStep, ServableSpec
from dlhub_hpc.servable.types import ArgType

ANY = ArgType(type="any")
STRING = ArgType(type="string")


def stages(*refs: str | list[str]) -> tuple[PipelineStage, ...]:
    """``"a"`` is a step on demo/a; a list is a parallel stage."""
    out = []
    for ref in refs:
        if isinstance(ref, list):
            out.append(PipelineStage(parallel=[PipelineStep(servable=f"demo/{r}") for r in ref]))
        else:
            out.append(PipelineStage(servable=f"demo/{ref}"))
    return tuple(out)


def step(name: str, inputs: ArgType = ANY, **kw: Any) -> ServableInfo:
    return ServableInfo(f"demo/{name}", 1, f"digest-{name}", {"run": inputs},
                        max_batch_size=8, **kw)


def pipeline(name: str, *refs: str | list[str], inputs: ArgType = STRING) -> ServableInfo:
    return ServableInfo(f"demo/{name}", 1, f"digest-{name}", {"run": inputs},
                        pipeline=stages(*refs))


class Authorizing(OpenGate):
    """A gate that asks ``authorize`` about each request and lets the rest in."""

    def __init__(self, authorize: Any) -> None:
        self.authorize = authorize  # type: ignore[method-assign]


class Harness:
    """A BrokerState with a catalog, a clock, and one worker per step servable."""

    def __init__(self, *infos: ServableInfo, gate: Gate | None = None) -> None:
        self.infos = {i.name: i for i in infos}
        self.state = BrokerState(self.resolve, HubConfig(heartbeat_interval=60,
                                                         heartbeat_timeout=120), gate)
        self.now = 0.0
        self.replies: list[tuple[bytes, Reply]] = []
        self.batches: dict[str, list[Batch]] = {}

    def resolve(self, name: str, version: int | None) -> ServableInfo:
        if name not in self.infos:
            raise ServableNotFound(f"no servable named {name!r} is published", servable=name)
        return self.infos[name]

    def _collect(self, actions: list[Any]) -> None:
        for a in actions:
            if isinstance(a, ToClient):
                self.replies.append((a.identity, a.message))
            elif isinstance(a, ToWorker) and isinstance(a.message, Batch):
                self.batches.setdefault(a.identity.decode(), []).append(a.message)

    def worker(self, name: str) -> None:
        wid = f"w-{name}"
        self._collect(self.state.handle(FromWorker(wid.encode(), Hello(
            wid, f"demo/{name}", None, "node", 1, None)), self.now))
        self._collect(self.state.handle(FromWorker(wid.encode(), Ready(wid)), self.now))

    def call(self, rid: str, payload: Any, servable: str = "demo/pipe", client: bytes = b"c1",
             timeout: float | None = None, cache: bool = True, user: str = "") -> None:
        msg = Request(rid, servable, None, "", payload, timeout, cache)
        self._collect(self.state.handle(FromClient(client, msg, user), self.now))

    def take(self, name: str) -> Batch:
        """The oldest batch sent to the worker of ``name`` (which must exist)."""
        return self.batches[f"w-{name}"].pop(0)

    def answer(self, name: str, batch: Batch, fn: Any) -> None:
        results = []
        for x in batch.payloads:
            try:
                results.append([True, fn(x)])
            except Exception as exc:
                results.append([False, ExecutionError(f"demo/{name} raised {exc}").to_wire()])
        self._collect(self.state.handle(FromWorker(f"w-{name}".encode(), BatchResult(
            batch.batch_id, results, 0.01)), self.now))

    def run_step(self, name: str, fn: Any) -> Batch:
        batch = self.take(name)
        self.answer(name, batch, fn)
        return batch

    def tick(self, at: float) -> None:
        self.now = at
        self._collect(self.state.handle(Tick(), at))


def make_three(gate: Gate | None = None) -> Harness:
    """parse -> feat -> model, with a worker each; parse is deterministic (memoized)."""
    h = Harness(step("parse", STRING, deterministic=True), step("feat"), step("model"),
                pipeline("pipe", "parse", "feat", "model"), gate=gate)
    for name in ("parse", "feat", "model"):
        h.worker(name)
    return h


@pytest.fixture
def three() -> Harness:
    return make_three()


def test_a_pipeline_runs_its_steps_in_order_and_only_the_last_answer_reaches_the_caller(
    three: Harness,
) -> None:
    three.call("r1", "Fe2O3")
    assert three.run_step("parse", lambda s: {"Fe": 2, "O": 3}).payloads == ["Fe2O3"]
    assert three.replies == []  # the intermediate result stays in the hub
    assert three.run_step("feat", lambda d: [d["Fe"], d["O"]]).payloads == [{"Fe": 2, "O": 3}]
    assert three.replies == []
    assert three.run_step("model", sum).payloads == [[2, 3]]
    assert len(three.replies) == 1
    client, reply = three.replies[0]
    assert client == b"c1" and reply.request_id == "r1" and reply.ok and reply.value == 5
    assert reply.timing is not None and reply.timing[1] == pytest.approx(0.03)
    assert len(three.state.pipelines) == 0
    assert three.state.stats["pipeline_runs"] == 1 and three.state.stats["pipeline_steps"] == 3


def test_each_step_is_batched_across_pipeline_requests() -> None:
    h = Harness(step("parse", STRING), step("feat"), step("model"),
                pipeline("pipe", "parse", "feat", "model"))
    for i in range(3):  # no worker yet: the step requests queue up
        h.call(f"r{i}", f"H{i + 1}")
    for name in ("parse", "feat", "model"):
        h.worker(name)
        batch = h.run_step(name, lambda x: x)
        assert len(batch.payloads) == 3
    assert sorted(r.request_id for _, r in h.replies) == ["r0", "r1", "r2"]
    assert [r.value for _, r in sorted(h.replies, key=lambda cr: cr[1].request_id)] == [
        "H1", "H2", "H3"]


def test_a_deterministic_step_is_memoized_across_pipeline_runs(three: Harness) -> None:
    for rid in ("r1", "r2"):
        three.call(rid, "NaCl")
        if rid == "r1":
            three.run_step("parse", lambda s: {"Na": 1, "Cl": 1})
        three.run_step("feat", lambda d: [1.0, 1.0])
        three.run_step("model", sum)
    assert three.batches["w-parse"] == []
    assert [r.value for _, r in three.replies] == [2.0, 2.0]


def test_a_step_error_names_the_step_and_keeps_its_type(three: Harness) -> None:
    three.call("r1", "Xx")
    three.run_step("parse", lambda s: {"Xx": 1})
    three.run_step("feat", lambda d: 1 / 0)
    assert three.batches.get("w-model", []) == []
    (client, reply), = three.replies
    assert client == b"c1" and not reply.ok
    error = error_from_wire(reply.error or {})
    assert isinstance(error, ExecutionError)
    assert "demo/pipe@1 step 2/3 (demo/feat) failed" in error.message
    assert error.details["step"] == 2 and error.details["step_servable"] == "demo/feat"


def test_an_output_that_does_not_fit_the_next_step_fails_that_step() -> None:
    h = Harness(step("parse", STRING), step("upper", STRING), pipeline("pipe", "parse", "upper"))
    h.worker("parse")
    h.call("r1", "Fe")
    h.run_step("parse", lambda s: 42)  # upper declares a string input
    (_, reply), = h.replies
    error = error_from_wire(reply.error or {})
    assert isinstance(error, InvalidInput) and "step 2/2 (demo/upper)" in error.message


def test_the_pipeline_input_is_checked_against_its_declared_type(three: Harness) -> None:
    three.call("r1", 12)
    (_, reply), = three.replies
    assert isinstance(error_from_wire(reply.error or {}), InvalidInput)
    assert three.batches.get("w-parse", []) == []


def test_a_missing_step_servable_fails_with_the_step_named() -> None:
    h = Harness(step("parse", STRING), pipeline("pipe", "parse", "gone"))
    h.worker("parse")
    h.call("r1", "Fe")
    h.run_step("parse", lambda s: s)
    (_, reply), = h.replies
    error = error_from_wire(reply.error or {})
    assert isinstance(error, ServableNotFound) and "step 2/2 (demo/gone)" in error.message


@pytest.fixture
def ensemble() -> Harness:
    h = Harness(step("feat"), step("m0"), step("m1"), step("m2"), step("vote"),
                pipeline("ens", "feat", ["m0", "m1", "m2"], "vote", inputs=ANY))
    for name in ("feat", "m0", "m1", "m2", "vote"):
        h.worker(name)
    return h


def test_a_parallel_stage_sends_the_same_input_to_each_member_and_gathers_in_order(
    ensemble: Harness,
) -> None:
    ensemble.call("r1", 3, servable="demo/ens")
    ensemble.run_step("feat", lambda x: x * 10)
    for i in (2, 0, 1):  # members answer out of order
        assert ensemble.run_step(f"m{i}", lambda x, i=i: x + i).payloads == [30]
        if i != 1:
            assert ensemble.replies == []
    assert ensemble.run_step("vote", lambda xs: xs).payloads == [[30, 31, 32]]
    (_, reply), = ensemble.replies
    assert reply.ok and reply.value == [30, 31, 32]


def test_a_failing_member_fails_the_run_once(ensemble: Harness) -> None:
    ensemble.call("r1", 1, servable="demo/ens")
    ensemble.run_step("feat", lambda x: x)
    ensemble.run_step("m1", lambda x: 1 / 0)
    ensemble.run_step("m0", lambda x: x)
    ensemble.run_step("m2", lambda x: x)
    (_, reply), = ensemble.replies
    assert not reply.ok and "step 2/3 (demo/m1)" in (reply.error or {})["message"]
    assert ensemble.batches.get("w-vote", []) == []


def test_a_step_that_gets_no_worker_times_out_within_the_pipeline_deadline() -> None:
    h = Harness(step("parse", STRING), step("slow"), pipeline("pipe", "parse", "slow"))
    h.worker("parse")
    h.call("r1", "Fe", timeout=5.0)
    h.now = 2.0
    h.run_step("parse", lambda s: s)
    h.tick(4.9)
    assert h.replies == []
    h.tick(5.1)
    (_, reply), = h.replies
    error = error_from_wire(reply.error or {})
    assert isinstance(error, Timeout) and "step 2/2 (demo/slow)" in error.message


def test_the_access_hook_sees_the_original_caller_for_every_step(three: Harness) -> None:
    seen: list[tuple[bytes, str]] = []

    def check(user: str, caller: bytes, step: PipelineStep) -> None:
        assert user == "alice@site"
        seen.append((caller, step.servable))
        if step.servable == "demo/model":
            raise DlhubHpcError(f"{user} may not call {step.servable}")

    three.state.pipelines.access_check = check
    three.call("r1", "Fe", client=b"alice", user="alice@site")
    three.run_step("parse", lambda s: s)
    three.run_step("feat", lambda d: d)
    assert seen == [(b"alice", "demo/parse"), (b"alice", "demo/feat"), (b"alice", "demo/model")]
    assert three.batches.get("w-model", []) == []
    (client, reply), = three.replies
    assert client == b"alice"
    assert "alice@site may not call demo/model" in (reply.error or {})["message"]


def test_pipelines_nest_and_the_inner_steps_know_the_outer_caller() -> None:
    h = Harness(step("a"), step("b"), pipeline("inner", "a", "b", inputs=ANY),
                step("c"), pipeline("outer", "inner", "c", inputs=ANY))
    for name in ("a", "b", "c"):
        h.worker(name)
    callers: list[bytes] = []
    h.state.pipelines.access_check = lambda user, caller, step: callers.append(caller)
    h.call("r1", 1, servable="demo/outer", client=b"bob")
    batch = h.take("a")
    step_id = h.state.pipelines.caller(PIPELINE_IDENTITY, "unknown")
    assert step_id == PIPELINE_IDENTITY
    h.answer("a", batch, lambda x: x + 1)
    h.run_step("b", lambda x: x * 2)
    h.run_step("c", lambda x: x - 1)
    (client, reply), = h.replies
    assert client == b"bob" and reply.value == 3
    assert set(callers) == {b"bob"} and len(callers) == 4  # inner, a, b, c


def test_a_pipeline_that_contains_itself_stops_at_the_depth_limit() -> None:
    h = Harness(pipeline("loop", "loop", inputs=ANY))
    h.call("r1", 1, servable="demo/loop")
    (_, reply), = h.replies
    assert not reply.ok and "nests pipelines more than" in (reply.error or {})["message"]
    assert len(h.state.pipelines) == 0


def test_shutdown_answers_a_pipeline_in_flight(three: Harness) -> None:
    three.call("r1", "Fe")
    three._collect(three.state.shutdown("test over"))
    (client, reply), = three.replies
    assert client == b"c1" and not reply.ok
    assert isinstance(error_from_wire(reply.error or {}), WorkerLost)


# ---- the spec and the publish-time check ------------------------------------------------

def pipeline_spec(steps: list[dict[str, Any]], **servable: Any) -> dict[str, Any]:
    return {
        "datacite": {"title": "A pipeline"},
        "dlhub": {"owner": "demo", "name": "pipe"},
        "servable": {"type": "pipeline", "steps": steps,
                     "methods": {"run": {"input": {"type": "string"}}}, **servable},
    }


@pytest.mark.parametrize(("steps", "words"), [
    (None, "needs 'steps'"),
    ([], "at least one step"),
    ([{"servable": "demo/a", "parallel": [{"servable": "demo/b"}]}], "either 'servable'"),
    ([{}], "either 'servable'"),
    ([{"parallel": []}], "at least one step"),
    ([{"parallel": [{"servable": "demo/b"}], "version": 2}], "inside each parallel"),
    ([{"servable": "demo/a", "version": 0}], "greater than or equal to 1"),
], ids=["no-steps", "empty", "both", "neither", "empty-parallel", "outer-version", "version-0"])
def test_bad_pipeline_specs_say_what_to_fix(steps: Any, words: str) -> None:
    data = pipeline_spec(steps)
    if steps is None:
        del data["servable"]["steps"]
    with pytest.raises(SpecError, match=words):
        ServableSpec.from_data(data)


def test_only_a_pipeline_has_steps() -> None:
    data = pipeline_spec([{"servable": "demo/a"}])
    data["servable"]["type"] = "python_function"
    data["servable"]["methods"]["run"]["function"] = "m:f"
    with pytest.raises(SpecError, match="only a pipeline has them"):
        ServableSpec.from_data(data)


def test_publishing_checks_that_each_step_exists_with_its_method() -> None:
    published = {"demo/a": ServableSpec.from_data({
        "datacite": {"title": "a"}, "dlhub": {"owner": "demo", "name": "a"},
        "servable": {"type": "python_function",
                     "methods": {"run": {"function": "m:f", "input": {"type": "any"}}}},
    })}

    def lookup(name: str, version: int | None) -> ServableSpec:
        if name not in published:
            raise ServableNotFound(f"no servable named {name!r} is published")
        return published[name]

    check_steps(ServableSpec.from_data(pipeline_spec([{"servable": "demo/a"}])), lookup)
    cases = [
        ([{"servable": "demo/a"}, {"parallel": [{"servable": "demo/b"}]}],
         r"step 2 \(demo/b\) is not published: no servable named 'demo/b'"),
        ([{"servable": "demo/a", "method": "predict"}], r"demo/a has no method 'predict'"),
        ([{"servable": "demo/pipe"}], "refers to the pipeline itself"),
    ]
    for steps, words in cases:
        with pytest.raises(SpecError, match=words):
            check_steps(ServableSpec.from_data(pipeline_spec(steps)), lookup)


def test_every_step_passes_the_brokers_own_access_check_as_the_caller() -> None:
    checked: list[tuple[str, str]] = []

    def authorize(user: str, info: ServableInfo) -> None:
        checked.append((user, info.name))
        if info.name == "demo/feat" and user != "carol":
            raise DlhubHpcError(f"{user} may not use {info.name}")

    three = make_three(Authorizing(authorize))
    three.call("r1", "Fe", user="dave")
    three.run_step("parse", lambda s: s)
    assert checked == [("dave", "demo/pipe"), ("dave", "demo/parse"), ("dave", "demo/feat")]
    (_, reply), = three.replies
    assert not reply.ok and "step 2/3 (demo/feat)" in (reply.error or {})["message"]
    assert "dave may not use demo/feat" in (reply.error or {})["message"]
