"""Pipelines through a real hub and real workers: steps run in the hub, batched and memoized."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dlhub_hpc import Client
from dlhub_hpc.errors import ExecutionError, InvalidInput, PilotError, SpecError

STEP_CODE = """
    CALLS = []

    def run(xs):
        CALLS.append(len(xs))
        out = []
        for x in xs:
            if x == "boom" or x == "BOOM!":
                raise ValueError("cannot take boom")
            out.append(OP(x))
        return out
"""


def write_step(root: Path, name: str, op: str, input_type: str = "any") -> Path:
    """A python_function servable demo/<name> computing ``op`` (a lambda's body of x)."""
    directory = root / name
    directory.mkdir()
    code = textwrap.dedent(STEP_CODE).replace("OP(x)", op)
    (directory / f"{name.replace('-', '_')}.py").write_text(code)
    spec = {
        "datacite": {"title": f"step {name}"},
        "dlhub": {"owner": "demo", "name": name},
        "servable": {
            "type": "python_function", "deterministic": True, "max_batch_size": 32,
            "methods": {"run": {"function": f"{name.replace('-', '_')}:run", "takes_batch": True,
                                "input": {"type": input_type}}},
        },
    }
    (directory / "servable.yaml").write_text(yaml.safe_dump(spec))
    return directory


def write_pipeline(root: Path, name: str, steps: list[dict[str, Any]],
                   input_type: str = "string") -> Path:
    directory = root / name
    directory.mkdir()
    spec = {
        "datacite": {"title": f"pipeline {name}"},
        "dlhub": {"owner": "demo", "name": name},
        "servable": {"type": "pipeline", "steps": steps,
                     "methods": {"run": {"input": {"type": input_type}}}},
    }
    (directory / "servable.yaml").write_text(yaml.safe_dump(spec))
    return directory


@pytest.fixture
def chain(client: Client, serve: Callable[..., str], tmp_path: Path) -> str:
    """demo/shout -> demo/exclaim -> (demo/length | demo/double): upper-case, add '!', then
    the length and the doubled string, in parallel."""
    serve(write_step(tmp_path, "shout", "x.upper()", "string"))
    serve(write_step(tmp_path, "exclaim", "x + '!'", "string"))
    serve(write_step(tmp_path, "length", "len(x)", "string"))
    serve(write_step(tmp_path, "double", "x * 2", "string"))
    directory = write_pipeline(tmp_path, "chain", [
        {"servable": "demo/shout"}, {"servable": "demo/exclaim", "version": 1},
        {"parallel": [{"servable": "demo/length"}, {"servable": "demo/double"}]},
    ])
    return str(client.publish(directory)["name"])


def test_a_pipeline_answers_with_its_last_stage_only(client: Client, chain: str) -> None:
    assert client.run(chain, "hi") == [3, "HI!HI!"]
    status = client.status()
    assert status["stats"]["pipeline_runs"] == 1 and status["stats"]["pipeline_steps"] == 4
    assert not any(w["servable"].startswith(chain) for w in status["workers"])


def test_concurrent_pipeline_requests_are_batched_at_each_step(
    client: Client, chain: str,
) -> None:
    words = [f"w{i}" for i in range(40)]
    futures = [client.submit(chain, w) for w in words]
    assert [f.result(timeout=60) for f in futures] == [[3, f"W{i}!" * 2] if i < 10 else
                                                       [4, f"W{i}!" * 2] for i in range(40)]
    stats = client.status()["stats"]
    assert stats["pipeline_steps"] == 160
    assert stats["batches"] < stats["batched_items"], "steps of concurrent runs share batches"


def test_a_repeated_pipeline_call_is_answered_from_each_steps_memo(
    client: Client, chain: str,
) -> None:
    assert client.run(chain, "same") == [5, "SAME!SAME!"]
    before = client.status()["stats"]
    assert client.run(chain, "same") == [5, "SAME!SAME!"]
    after = client.status()["stats"]
    assert after["memo_hits"] - before["memo_hits"] == 4
    assert after["batches"] == before["batches"]


def test_a_failing_step_is_named_and_the_hub_goes_on(client: Client, chain: str) -> None:
    with pytest.raises(ExecutionError, match=r"demo/chain@1 step 1/3 \(demo/shout\) failed: "
                                             r".*cannot take boom"):
        client.run(chain, "boom")
    with pytest.raises(InvalidInput, match="input should be string"):
        client.run(chain, 42)
    assert client.run(chain, "ok") == [3, "OK!OK!"]


def test_publishing_a_pipeline_with_a_missing_step_fails(
    client: Client, serve: Callable[..., str], tmp_path: Path,
) -> None:
    client.publish(write_step(tmp_path, "only", "x", "string"))
    directory = write_pipeline(tmp_path, "broken", [{"servable": "demo/only"},
                                                    {"servable": "demo/missing"}])
    with pytest.raises(SpecError, match=r"step 2 \(demo/missing\) is not published"):
        client.publish(directory)
    wrong_method = write_pipeline(tmp_path, "broken2", [{"servable": "demo/only",
                                                         "method": "predict"}])
    with pytest.raises(SpecError, match="demo/only has no method 'predict'"):
        client.publish(wrong_method)


def test_a_pipeline_gets_no_workers_of_its_own(client: Client, chain: str) -> None:
    with pytest.raises(PilotError, match="start workers for its steps instead: demo/double"):
        client.start_workers(chain, 1)
