"""The core serving path: publish, warm workers through a LocalProvider pilot, requests."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest

from dlhub_hpc import Client, InvalidInput, MethodNotFound, ServableNotFound
from dlhub_hpc.errors import ExecutionError
from dlhub_hpc.examples import example_dir, prepare_iris

from .conftest import SERVABLES


def test_python_function_servable_answers(client: Client, serve: Callable[..., str]) -> None:
    serve(example_dir("add"))
    assert client.run("demo/add", [1.5, 2.5, 3]) == 7.0
    future = client.submit("demo/add", [1, 2])
    assert isinstance(future, Future)
    assert future.result(timeout=10) == 3.0


def test_sklearn_servable_predicts_rows(
    client: Client, serve: Callable[..., str], tmp_path: Path
) -> None:
    serve(prepare_iris(tmp_path / "iris"))
    flowers = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])
    species = client.run("demo/iris", flowers)
    assert species.tolist() == [0, 2]
    proba = client.run("demo/iris", flowers.tolist(), method="predict_proba")
    assert proba.shape == (2, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_large_array_round_trips_unchanged(client: Client, serve: Callable[..., str]) -> None:
    serve(example_dir("noop"))
    data = np.random.default_rng(0).random(1 << 17)  # 1 MiB of float64
    echoed = client.run("demo/noop", {"x": data, "label": "a"})
    assert echoed["label"] == "a"
    np.testing.assert_array_equal(echoed["x"], data)


def test_many_concurrent_requests_all_answered(client: Client, serve: Callable[..., str]) -> None:
    serve(example_dir("add"), n=2)
    futures = [client.submit("demo/add", [float(i), 1.0]) for i in range(300)]
    assert [f.result(timeout=30) for f in futures] == [i + 1.0 for i in range(300)]
    workers = client.status()["workers"]
    assert len(workers) == 2
    assert all(w["items"] > 0 for w in workers), "both warm workers should have served"


def test_bad_requests_get_typed_errors_and_the_hub_keeps_serving(
    client: Client, serve: Callable[..., str]
) -> None:
    serve(example_dir("add"))
    with pytest.raises(ServableNotFound, match="no servable named 'demo/nope'"):
        client.run("demo/nope", [1])
    with pytest.raises(ServableNotFound, match=r"published versions: \[1\]"):
        client.run("demo/add@7", [1])
    with pytest.raises(MethodNotFound, match=r"has no method 'fit'; it has \['run'\]"):
        client.run("demo/add", [1], method="fit")
    with pytest.raises(InvalidInput, match=r"input\[1\] should be float, got str"):
        client.run("demo/add", [1, "two"])
    assert client.run("demo/add", [2, 3]) == 5.0


def test_one_failing_item_does_not_fail_its_neighbours(
    client: Client, serve: Callable[..., str]
) -> None:
    serve(SERVABLES / "flaky")
    futures = [client.submit("test/flaky", x) for x in (1, -1, 2, -2, 3)]
    assert futures[0].result(10) == 2
    assert futures[2].result(10) == 4
    assert futures[4].result(10) == 6
    for bad in (futures[1], futures[3]):
        with pytest.raises(ExecutionError, match="ValueError: negative input"):
            bad.result(10)


def test_new_version_is_served_by_its_own_workers(
    client: Client, serve: Callable[..., str], tmp_path: Path
) -> None:
    serve(SERVABLES / "flaky")
    changed = tmp_path / "flaky"
    changed.mkdir()
    (changed / "servable.yaml").write_text((SERVABLES / "flaky" / "servable.yaml").read_text())
    (changed / "flaky.py").write_text("def check(x):\n    return x * 3\n")
    assert client.publish(changed)["version"] == 2
    assert client.publish(changed)["version"] == 2, "an unchanged bundle keeps its version"
    client.start_workers("test/flaky@2", 1)
    client.wait_for_workers("test/flaky@1", 1)  # waiting is per version
    client.wait_for_workers("test/flaky@2", 1)
    assert client.run("test/flaky@1", 5) == 10
    assert client.run("test/flaky@2", 5) == 15
    assert client.run("test/flaky", 5) == 15, "no version means the latest"
