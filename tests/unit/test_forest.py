"""The compiled tree-model predict (servable/shims/forest.py) against scikit-learn's own."""

from __future__ import annotations

import inspect
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dlhub_hpc.servable.shims import SklearnShim, load_servable
from dlhub_hpc.servable.shims.forest import compile_model, fast_calls
from dlhub_hpc.servable.spec import ServableSpec

sklearn = pytest.importorskip("sklearn", reason="scikit-learn is not installed")
from sklearn import ensemble, tree  # noqa: E402
from sklearn.linear_model import LinearRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

FEATURES = 7


def data(rows: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, FEATURES))
    X[:, 3] = rng.integers(0, 4, rows)  # a column with ties: rows fall exactly on thresholds
    return X, X[:, 0] * 2 + np.sin(X[:, 1]) + 0.1 * rng.normal(size=rows)


def probes(model: Any, X: np.ndarray) -> list[np.ndarray]:
    """Random rows, the training rows, rows exactly on the thresholds, and one row."""
    rng = np.random.default_rng(1)
    on_threshold = X[:40].copy()
    trees = [e.tree_ for e in np.ravel(getattr(model, "estimators_", [model]))]
    t = trees[0]
    for i, node in enumerate(np.flatnonzero(t.children_left >= 0)[:40]):
        on_threshold[i, t.feature[node]] = t.threshold[node]
    return [rng.normal(size=(200, FEATURES)) * 3, X, on_threshold, X[:1],
            X.astype(np.float32), np.rint(X).astype(np.int64)]


def regressors() -> list[Any]:
    return [
        ensemble.RandomForestRegressor(n_estimators=20, max_depth=6, random_state=0),
        ensemble.RandomForestRegressor(n_estimators=5, random_state=0),  # unlimited depth
        ensemble.ExtraTreesRegressor(n_estimators=15, max_depth=8, random_state=0),
        tree.DecisionTreeRegressor(max_depth=5, random_state=0),
        tree.ExtraTreeRegressor(random_state=0),
        ensemble.GradientBoostingRegressor(n_estimators=30, max_depth=3, random_state=0),
        ensemble.GradientBoostingRegressor(n_estimators=10, init="zero", learning_rate=0.3,
                                           loss="huber", random_state=0),
    ]


@pytest.mark.parametrize("model", regressors(), ids=lambda m: type(m).__name__)
def test_regressors_predict_what_sklearn_predicts(model: Any) -> None:
    X, y = data()
    model.fit(X, y)
    fast = fast_calls(model, {"predict": model.predict})["predict"]
    assert fast != model.predict  # compiled, not scikit-learn's bound method
    for Q in probes(model, X):
        got = fast(Q)
        assert got.shape == (len(Q),)
        np.testing.assert_allclose(got, model.predict(Q), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("model", [
    ensemble.RandomForestRegressor(n_estimators=10, max_depth=6, random_state=0),
    ensemble.ExtraTreesRegressor(n_estimators=10, random_state=0),
    tree.DecisionTreeRegressor(random_state=0),
], ids=lambda m: type(m).__name__)
def test_multi_output_regression(model: Any) -> None:
    X, y = data()
    Y = np.stack([y, -y, X[:, 2] ** 2], axis=1)
    model.fit(X, Y)
    fast = fast_calls(model, {"p": model.predict})["p"]
    for Q in probes(model, X):
        got = fast(Q)
        assert got.shape == (len(Q), 3)
        np.testing.assert_allclose(got, model.predict(Q), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("model", [
    ensemble.RandomForestClassifier(n_estimators=25, max_depth=7, random_state=0),
    ensemble.ExtraTreesClassifier(n_estimators=10, random_state=0),
    ensemble.RandomForestClassifier(n_estimators=10, class_weight="balanced", random_state=0),
    tree.DecisionTreeClassifier(max_depth=4, random_state=0),
], ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("labels", [np.array([10, -3, 7, 2]), np.array(["b", "a"]),
                                    np.array(["x", "c", "m"])], ids=["int4", "str2", "str3"])
def test_classifiers_keep_the_class_order(model: Any, labels: np.ndarray) -> None:
    X, y = data()
    target = labels[np.digitize(y, np.quantile(y, np.linspace(0, 1, len(labels) + 1)[1:-1]))]
    model.fit(X, target)
    calls = fast_calls(model, {"predict": model.predict, "proba": model.predict_proba})
    for Q in probes(model, X):
        proba = calls["proba"](Q)
        assert proba.shape == (len(Q), len(labels))
        np.testing.assert_allclose(proba, model.predict_proba(Q), rtol=1e-9, atol=1e-12)
        expected = model.predict(Q)
        got = calls["predict"](Q)
        assert got.dtype == expected.dtype
        # rows whose best two classes tie exactly may break either way after a reordered sum
        top2 = np.sort(model.predict_proba(Q), axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 1e-9
        assert (got[clear] == expected[clear]).all()


def test_a_single_leaf_tree_predicts_its_constant() -> None:
    X, _ = data(50)
    model = ensemble.RandomForestRegressor(n_estimators=3, random_state=0).fit(X, np.full(50, 4.5))
    compiled = compile_model(model)
    assert compiled is not None and compiled.depth == 0
    fast = fast_calls(model, {"predict": model.predict})["predict"]
    np.testing.assert_allclose(fast(X), np.full(50, 4.5))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # sklearn's
def test_inputs_the_compiled_path_refuses_go_to_sklearn() -> None:
    X, y = data()
    model = ensemble.RandomForestRegressor(n_estimators=5, random_state=0).fit(X, y)
    fast = fast_calls(model, {"predict": model.predict})["predict"]
    with pytest.raises(ValueError, match="features"):  # scikit-learn's own message
        fast(X[:, :3])
    too_big = X[:2].copy()
    too_big[0, 0] = 1e300  # beyond float32: scikit-learn refuses it
    with pytest.raises(ValueError):
        model.predict(too_big)
    with pytest.raises(ValueError):
        fast(too_big)
    as_list = X[:3].tolist()  # not an array: scikit-learn converts it
    np.testing.assert_allclose(fast(as_list), model.predict(as_list))
    with_nan = X[:4].copy()
    with_nan[1, 2] = np.nan
    np.testing.assert_allclose(fast(with_nan), model.predict(with_nan))


@pytest.mark.parametrize("model", [
    LinearRegression(),
    make_pipeline(StandardScaler(), ensemble.RandomForestRegressor(n_estimators=3)),
    ensemble.GradientBoostingClassifier(n_estimators=5),
    ensemble.GradientBoostingRegressor(n_estimators=5, init=LinearRegression()),
    ensemble.HistGradientBoostingRegressor(max_iter=5),
], ids=lambda m: type(m).__name__)
def test_other_models_keep_their_own_methods(model: Any, caplog: pytest.LogCaptureFixture) -> None:
    X, y = data()
    model.fit(X, y > 0 if "Classifier" in type(model).__name__ else y)
    calls = {"predict": model.predict}
    with caplog.at_level(logging.DEBUG, logger="dlhub_hpc.servable.shims.forest"):
        assert fast_calls(model, calls, "t/model") == calls
    assert "using its own predict" in caplog.text


def test_only_predict_methods_are_compiled() -> None:
    X, y = data()
    model = ensemble.RandomForestRegressor(n_estimators=3, random_state=0).fit(X, y)
    calls = {"apply": model.apply, "predict": model.predict, "other": len}
    out = fast_calls(model, calls)
    assert out["apply"] == model.apply and out["other"] is len
    assert out["predict"] != model.predict
    assert repr(compile_model(model)).startswith("CompiledTrees(trees=3, ")


def servable(root: Path, model: Any, **extra: Any) -> SklearnShim:
    with (root / "model.pkl").open("wb") as fh:
        pickle.dump(model, fh)
    spec = ServableSpec.from_data({
        "datacite": {"title": "a forest"},
        "dlhub": {"owner": "test", "name": "forest"},
        "servable": {"type": "sklearn", "model": "model.pkl", **extra, "methods": {
            "predict": {"input": {"type": "ndarray", "shape": [None, FEATURES]}}}},
    })
    shim = load_servable(spec, root)
    assert isinstance(shim, SklearnShim)
    return shim


def test_the_sklearn_shim_runs_a_batch_through_the_compiled_path(tmp_path: Path) -> None:
    X, y = data()
    model = ensemble.RandomForestRegressor(n_estimators=10, random_state=0).fit(X, y)
    shim = servable(tmp_path, model, compile_trees=True)
    assert not inspect.ismethod(shim._calls["predict"])  # the compiled function
    inputs = [X[i:i + 1] for i in range(5)] + [X[5:9], X[:, :2]]  # the last one is bad
    outcomes = shim.run("predict", inputs)
    for x, out in zip(inputs[:-1], outcomes[:-1], strict=True):
        np.testing.assert_allclose(out, model.predict(x))
    assert "features" in str(outcomes[-1])  # its own error; the neighbours succeeded


def test_compile_trees_false_keeps_sklearns_predict(tmp_path: Path) -> None:
    X, y = data()
    model = ensemble.RandomForestRegressor(n_estimators=3, random_state=0).fit(X, y)
    shim = servable(tmp_path, model, compile_trees=False)
    call = shim._calls["predict"]
    assert inspect.ismethod(call) and isinstance(call.__self__, type(model))

