"""DLHubExecutor in a real Parsl DataFlowKernel, sending to a real hub with warm workers."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import parsl
import pytest
from parsl import python_app
from parsl.config import Config
from parsl.dataflow.dflow import DataFlowKernel
from parsl.executors import ThreadPoolExecutor

from dlhub_hpc import (
    Client,
    ConfigError,
    DLHubExecutor,
    ExecutionError,
    Hub,
    InvalidInput,
    ServableNotFound,
    SpecError,
    servable_app,
)
from dlhub_hpc.examples import example_dir
from dlhub_hpc.examples.screening import workflow
from dlhub_hpc.parsl_executor import ServableCall

from .conftest import SERVABLES


@pytest.fixture
def dfk(hub: Hub, tmp_path: Path) -> Iterator[DataFlowKernel]:
    config = Config(
        executors=[ThreadPoolExecutor(label="local", max_threads=2),
                   DLHubExecutor(label="dlhub", address=hub.client_address, timeout=20)],
        run_dir=str(tmp_path / "runinfo"),
        strategy="none",
    )
    with parsl.load(config) as loaded:
        yield loaded


@python_app(executors=["local"])
def featurize(numbers: list[float]) -> list[float]:
    return [2.0 * x for x in numbers]


@python_app(executors=["dlhub"])
def not_a_servable(x: int) -> int:
    return x


def test_servable_apps_chain_with_other_apps(
    dfk: DataFlowKernel, serve: Callable[..., str]
) -> None:
    serve(example_dir("add"))
    total = servable_app("demo/add")
    future = total(featurize([1.0, 2.0, 3.5]))  # a local app's future feeds the servable
    assert future.result(timeout=30) == 13.0
    twice = total(featurize(featurize([1.0])))
    assert twice.result(timeout=30) == 4.0
    assert future.task_record["executor"] == "dlhub"


def test_many_calls_use_no_thread_per_call_and_are_batched(
    dfk: DataFlowKernel, serve: Callable[..., str], client: Client
) -> None:
    serve(example_dir("add"))
    total = servable_app("demo/add", cache=False)
    assert total([1.0]).result(timeout=30) == 1.0  # the executor's client is connected
    threads_before = threading.active_count()
    futures = [total([float(i), 1.0]) for i in range(200)]
    assert threading.active_count() <= threads_before + 1
    assert [f.result(timeout=30) for f in futures] == [i + 1.0 for i in range(200)]
    worker = client.status()["workers"][0]
    assert worker["items"] == 201
    assert worker["batches"] < 201, "concurrent calls should share batches on the hub"


def test_errors_are_the_hubs_typed_errors(
    dfk: DataFlowKernel, serve: Callable[..., str]
) -> None:
    serve(SERVABLES / "flaky")
    flaky = servable_app("test/flaky")
    assert flaky(3).result(timeout=30) == 6
    with pytest.raises(ExecutionError, match="ValueError: negative input"):
        flaky(-1).result(timeout=30)
    with pytest.raises(ServableNotFound, match="no servable named 'test/absent'"):
        servable_app("test/absent")(1).result(timeout=30)
    with pytest.raises(InvalidInput, match="exactly one positional input"):
        flaky(1, 2).result(timeout=30)


def test_only_servable_apps_run_on_the_executor(dfk: DataFlowKernel) -> None:
    with pytest.raises(ConfigError, match="runs only apps made with servable_app"):
        not_a_servable(1).result(timeout=30)


def test_walltime_becomes_the_hubs_deadline(
    dfk: DataFlowKernel, serve: Callable[..., str]
) -> None:
    from dlhub_hpc import Timeout

    serve(SERVABLES / "sleepy")
    nap = servable_app("test/sleepy", cache=False)
    assert nap(0.01).result(timeout=30)["slept"] == 0.01
    with pytest.raises(Timeout):
        nap(3.0, walltime=0.3).result(timeout=30)


def test_bad_settings_fail_at_construction() -> None:
    with pytest.raises(ConfigError, match="address"):
        DLHubExecutor(address="127.0.0.1:5000")
    with pytest.raises(ConfigError, match="timeout"):
        DLHubExecutor(timeout=-1)
    with pytest.raises(SpecError, match="owner/name"):
        servable_app("no-owner")
    assert repr(DLHubExecutor(label="hub1")) == (
        "DLHubExecutor(label='hub1', address=None, timeout=60.0)")


def test_a_servable_call_also_runs_as_a_plain_function(
    hub: Hub, serve: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    serve(example_dir("add"))
    monkeypatch.setenv("DLHUB_HPC_HUB", hub.client_address)
    assert ServableCall("demo/add")([1, 2]) == 3.0


def _local_scorer() -> Any:
    spec = importlib.util.spec_from_file_location("screening_scorer",
                                                  workflow.MODEL_DIR / "scorer.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_screening_example_keeps_the_best_candidates(
    hub: Hub, serve: Callable[..., str], client: Client, tmp_path: Path
) -> None:
    serve(workflow.MODEL_DIR)
    config = workflow.make_config(hub.client_address, str(tmp_path / "runinfo"))
    with parsl.load(config):
        candidates, scores = workflow.screen(rounds=3, batches=2, batch_size=16, keep=4)
    assert candidates.shape == (4, workflow.ELEMENTS) and scores.shape == (4,)
    np.testing.assert_allclose(candidates.sum(axis=1), 1.0)
    assert list(scores) == sorted(scores, reverse=True)
    # the scores are the model's, computed on the hub's worker
    np.testing.assert_allclose(scores, _local_scorer().score(candidates))
    assert client.status()["workers"][0]["items"] == 3 * 2  # one request per batch
    # three rounds of mutation beat the best of one random batch
    rng_first = np.random.default_rng(0).dirichlet(np.ones(workflow.ELEMENTS), size=16)
    assert scores[0] > _local_scorer().score(rng_first).max()
