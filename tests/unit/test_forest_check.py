"""compile_trees: off by default; when on, the compiled trees prove themselves at load."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlhub_hpc.servable.shims import SklearnShim, forest, load_servable
from dlhub_hpc.servable.shims.forest import CompiledTrees, compile_calls, compile_model
from dlhub_hpc.servable.shims.forest_check import model_trees, sample_rows
from dlhub_hpc.servable.spec import ServableSpec

sklearn = pytest.importorskip("sklearn", reason="scikit-learn is not installed")
from sklearn import ensemble, tree  # noqa: E402

FEATURES = 5
LOGGER = "dlhub_hpc.servable.shims.forest"


def data(rows: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(rows, FEATURES))
    X[:, 2] = rng.integers(0, 3, rows)  # ties: rows exactly on thresholds
    return X, X[:, 0] - np.cos(X[:, 1]) + 0.1 * rng.normal(size=rows)


def small_forest() -> Any:
    X, y = data()
    return ensemble.RandomForestRegressor(n_estimators=8, max_depth=5, random_state=0).fit(X, y)


def classifier() -> Any:
    X, y = data()
    labels = np.array(["lo", "mid", "hi"])[np.digitize(y, [-0.5, 0.5])]
    return ensemble.RandomForestClassifier(n_estimators=8, max_depth=5,
                                           random_state=0).fit(X, labels)


def corrupted(change: Callable[[dict[str, np.ndarray]], None]) -> Callable[[Any], Any]:
    """A compiler that compiles the model, then changes one of its tables."""
    def compile_wrong(model: Any) -> CompiledTrees:
        good = compile_model(model)
        assert good is not None
        tables = {k: getattr(good, k).copy() for k in ("feature", "threshold", "children",
                                                        "value")}
        change(tables)
        return dataclasses.replace(good, **tables)
    return compile_wrong


def deep_inner_node(t: dict[str, np.ndarray]) -> int:
    """An internal node of the last tree whose two children are both leaves."""
    children = t["children"].reshape(-1, 2)
    ids = np.arange(len(children))
    leaf = children[:, 0] == ids
    inner = np.flatnonzero(~leaf & leaf[children[:, 0]] & leaf[children[:, 1]])
    return int(inner[-1])


def one_leaf(t: dict[str, np.ndarray]) -> None:
    node = deep_inner_node(t)
    t["value"][t["children"][2 * node + 1]] += 0.25


def swap_children(t: dict[str, np.ndarray]) -> None:
    node = deep_inner_node(t)
    t["children"][2 * node:2 * node + 2] = t["children"][2 * node:2 * node + 2][::-1]


def threshold_one_float32_down(t: dict[str, np.ndarray]) -> None:
    node = deep_inner_node(t)
    below = np.nextafter(np.float32(t["threshold"][node]), np.float32(-np.inf))
    t["threshold"][node] = np.nextafter(below, np.float32(-np.inf))


@pytest.mark.parametrize("change", [one_leaf, swap_children, threshold_one_float32_down],
                         ids=lambda f: f.__name__)
def test_a_corrupted_compiled_forest_falls_back_to_predict(
        change: Callable[[dict[str, np.ndarray]], None],
        caplog: pytest.LogCaptureFixture) -> None:
    model = small_forest()
    calls = {"predict": model.predict}
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        path = compile_calls(model, calls, "t/forest", compiler=corrupted(change))
    assert path.state == "fallback" and "predict" in path.why
    assert path.calls["predict"] == model.predict  # the model's own bound method
    assert "t/forest: the compiled tree path does not answer" in caplog.text
    X, _ = data(40)
    np.testing.assert_array_equal(path.calls["predict"](X), model.predict(X))


def test_the_uncorrupted_compiler_is_used() -> None:
    model = small_forest()
    path = compile_calls(model, {"predict": model.predict},
                         compiler=corrupted(lambda t: None))
    assert path.state == "compiled" and not inspect.ismethod(path.calls["predict"])


def test_a_classifier_whose_probabilities_are_swapped_falls_back() -> None:
    model = classifier()

    def swap_classes(t: dict[str, np.ndarray]) -> None:
        t["value"][:] = t["value"][:, ::-1]

    calls = {"predict": model.predict, "proba": model.predict_proba}
    path = compile_calls(model, calls, compiler=corrupted(swap_classes))
    assert path.state == "fallback"
    assert path.calls == calls


def test_a_compiled_path_that_raises_falls_back() -> None:
    model = small_forest()

    def too_narrow(m: Any) -> CompiledTrees:
        good = compile_model(m)
        assert good is not None
        return dataclasses.replace(good, feature=np.full_like(good.feature, FEATURES + 40))

    path = compile_calls(model, {"predict": model.predict}, compiler=too_narrow)
    assert path.state == "fallback" and "raised" in path.why


def test_sample_rows_reach_every_leaf_of_a_small_forest() -> None:
    model = small_forest()
    rows = sample_rows(model)
    assert rows.shape[1] == FEATURES and np.isfinite(rows).all()
    reached = model.apply(rows.astype(np.float32))
    for t, tr in enumerate(model_trees(model)):
        leaves = set(np.flatnonzero(tr.children_left < 0).tolist())
        assert leaves <= set(reached[:, t].tolist())


def test_sample_rows_of_a_large_forest_stay_bounded() -> None:
    X, y = data(2000)
    model = ensemble.ExtraTreesRegressor(n_estimators=300, random_state=0).fit(X, y)
    rows = sample_rows(model)
    assert len(rows) <= 256 + 1024 + 300
    reached = model.apply(rows.astype(np.float32))
    assert len(np.unique(reached[:, -1])) > 1  # the last tree's rows take several paths


# ---- through the shim -------------------------------------------------------------------

def servable(root: Path, model: Any, **extra: Any) -> SklearnShim:
    with (root / "model.pkl").open("wb") as fh:
        pickle.dump(model, fh)
    spec = ServableSpec.from_data({
        "datacite": {"title": "a forest"},
        "dlhub": {"owner": "test", "name": "forest"},
        "servable": {"type": "sklearn", "model": "model.pkl", **extra, "methods": {
            "predict": {"input": {"type": "ndarray", "shape": [None, FEATURES]}},
            "predict_proba": {"input": {"type": "ndarray", "shape": [None, FEATURES]}}}},
    })
    shim = load_servable(spec, root)
    assert isinstance(shim, SklearnShim)
    return shim


def test_compile_trees_is_off_by_default(tmp_path: Path) -> None:
    model = classifier()
    shim = servable(tmp_path, model)
    assert shim.spec.servable.compile_trees is False
    assert shim.tree_path == "own"
    for name in ("predict", "predict_proba"):
        call = shim._calls[name]
        assert inspect.ismethod(call) and call.__self__ is not None
        assert call.__name__ == name


def test_compile_trees_on_uses_the_checked_compiled_path(tmp_path: Path) -> None:
    model = classifier()
    shim = servable(tmp_path, model, compile_trees=True)
    assert shim.tree_path == "compiled"
    assert not inspect.ismethod(shim._calls["predict"])
    assert not inspect.ismethod(shim._calls["predict_proba"])
    X, _ = data(20)
    out = shim.run("predict_proba", [X[i:i + 1] for i in range(20)])
    np.testing.assert_allclose(np.concatenate(out), model.predict_proba(X), rtol=1e-9)


def test_compile_trees_on_falls_back_when_the_compiled_path_differs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    X, y = data()
    model = tree.DecisionTreeClassifier(max_depth=4, random_state=0).fit(X, y > 0)
    monkeypatch.setattr(forest, "compile_model", corrupted(swap_children))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        shim = servable(tmp_path, model, compile_trees=True)
    assert shim.tree_path == "fallback"
    assert "test/forest: the compiled tree path does not answer" in caplog.text
    assert inspect.ismethod(shim._calls["predict"])
    out = shim.run("predict", [X[i:i + 1] for i in range(30)])
    np.testing.assert_array_equal(np.concatenate(out), model.predict(X[:30]))
