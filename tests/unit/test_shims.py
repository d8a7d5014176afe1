"""Vectorised shims: stacking row arrays, and SklearnShim running a batch as one call."""

from __future__ import annotations

import importlib
import pickle
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlhub_hpc.errors import ExecutionError
from dlhub_hpc.servable.shims import SklearnShim, load_servable, stack_rows
from dlhub_hpc.servable.spec import ServableSpec

# ---- stack_rows ----------------------------------------------------------------------------

@pytest.mark.parametrize("inputs", [
    [],
    [np.zeros((2, 3))],
    [np.zeros((2, 3)), np.zeros((2, 4))],
    [np.zeros((2, 3)), np.zeros((2, 3), dtype=np.float32)],
    [np.zeros((2, 3)), [[0.0, 0.0, 0.0]]],
    [[[0.0]], [[1.0]]],
    [np.zeros(3), np.zeros(3)],
    [np.zeros((2, 3)), np.zeros(3)],
], ids=["none", "single", "row-shape", "dtype", "not-array", "lists", "1-d", "mixed-ndim"])
def test_stack_rows_refuses_what_cannot_be_stacked(inputs: list[Any]) -> None:
    assert stack_rows(inputs) is None


def test_stack_rows_concatenates_and_gives_the_split_points() -> None:
    inputs = [np.full((1, 2), 1.0), np.full((3, 2), 2.0), np.full((2, 2), 3.0)]
    stacked = stack_rows(inputs)
    assert stacked is not None
    rows, splits = stacked
    assert rows.shape == (6, 2) and splits == [1, 4]
    assert [p.tolist() for p in np.split(rows, splits)] == [x.tolist() for x in inputs]


def test_stack_rows_accepts_higher_dimensional_rows() -> None:
    stacked = stack_rows([np.zeros((2, 3, 4)), np.ones((1, 3, 4))])
    assert stacked is not None
    assert stacked[0].shape == (3, 3, 4) and stacked[1] == [2]


# ---- SklearnShim ---------------------------------------------------------------------------

COUNTING_MODEL = """
    import numpy as np

    CALLS = []

    class Model:
        def predict(self, X):
            CALLS.append(len(X))
            if (X < 0).any():
                raise ValueError("negative input")
            return X.sum(axis=1)

        def total(self, X):
            CALLS.append(len(X))
            return np.array([X.sum()])  # one value, whatever the rows
"""


def sklearn_servable(root: Path, model: Any, make_spec: Callable[..., dict[str, Any]],
                     methods: tuple[str, ...] = ("predict",)) -> SklearnShim:
    with (root / "model.pkl").open("wb") as fh:
        pickle.dump(model, fh)
    declared = {m: {"input": {"type": "ndarray", "dtype": "float"}} for m in methods}
    spec = ServableSpec.from_data(make_spec("model", declared, type="sklearn",
                                            model="model.pkl"))
    shim = load_servable(spec, root)
    assert isinstance(shim, SklearnShim)
    return shim


@pytest.fixture
def counting(tmp_path: Path, clean_imports: None,
             make_spec: Callable[..., dict[str, Any]]) -> tuple[SklearnShim, list[int]]:
    """An sklearn servable whose model records the rows of every call."""
    name = f"counting_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(COUNTING_MODEL))
    sys.path.insert(0, str(tmp_path))
    module = importlib.import_module(name)
    shim = sklearn_servable(tmp_path, module.Model(), make_spec, ("predict", "total"))
    return shim, module.CALLS


def test_sklearn_runs_a_batch_of_row_arrays_as_one_call(
    counting: tuple[SklearnShim, list[int]],
) -> None:
    shim, calls = counting
    out = shim.run("predict", [np.array([[1.0, 2.0]]), np.array([[3.0, 4.0], [5.0, 6.0]]),
                               np.array([[0.5, 0.5]])])
    assert calls == [4]
    assert [o.tolist() for o in out] == [[3.0], [7.0, 11.0], [1.0]]


def test_when_the_stacked_call_fails_only_the_bad_item_fails(
    counting: tuple[SklearnShim, list[int]],
) -> None:
    shim, calls = counting
    good, bad, other = shim.run("predict", [np.ones((1, 2)), -np.ones((2, 2)),
                                            np.full((1, 2), 2.0)])
    assert calls == [4, 1, 2, 1]
    assert good.tolist() == [2.0] and other.tolist() == [4.0]
    assert isinstance(bad, ExecutionError) and "ValueError: negative input" in bad.message


def test_a_stacked_output_of_the_wrong_length_is_run_one_by_one(
    counting: tuple[SklearnShim, list[int]],
) -> None:
    shim, calls = counting
    out = shim.run("total", [np.ones((1, 2)), np.ones((2, 2))])
    assert calls == [3, 1, 2]
    assert [o.tolist() for o in out] == [[2.0], [4.0]]


def test_inputs_that_cannot_be_stacked_are_run_one_by_one(
    counting: tuple[SklearnShim, list[int]],
) -> None:
    shim, calls = counting
    out = shim.run("predict", [np.ones((1, 2)), np.ones((2, 3))])
    assert calls == [1, 2]
    assert [o.tolist() for o in out] == [[2.0], [3.0, 3.0]]


def test_a_real_sklearn_model_gives_the_same_answers_stacked(
    tmp_path: Path, make_spec: Callable[..., dict[str, Any]],
) -> None:
    from sklearn.linear_model import LinearRegression

    X = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [2.0, 3.0]])
    model = LinearRegression().fit(X, X @ np.array([2.0, -1.0]) + 0.5)
    shim = sklearn_servable(tmp_path, model, make_spec)
    inputs = [X[:1], X[1:3], X[3:]]
    out = shim.run("predict", inputs)
    assert len(out) == 3
    for got, x in zip(out, inputs, strict=True):
        np.testing.assert_allclose(got, model.predict(x))
