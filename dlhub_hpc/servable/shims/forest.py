"""A compiled predict for scikit-learn tree models: forests, single trees, gradient boosting.

scikit-learn predicts a forest tree by tree, with Python and thread-pool overhead per tree:
a 100-tree forest costs about the same 10+ ms for one row as for 32, so a warm worker
spends its time in that overhead, not in the trees. At load, a supported model is
compiled once into flat numpy arrays (feature, threshold, children and leaf value of every
node of every tree, one node table), and a batch descends all trees at once, level by
level: a few gathers per level over a (trees x rows) index array.

Supported: ``RandomForest``/``ExtraTrees`` regressors and classifiers, ``DecisionTree``
regressors and classifiers (single-output classifiers; regressors also multi-output) and
``GradientBoostingRegressor`` with a constant initial estimate. The answers equal
scikit-learn's (same float32 view of the input, same comparisons, sums in another order).
Anything else, and any input the compiled path does not take (not a finite 2-d numeric
array of the right width), goes to scikit-learn's own method, which also raises its errors.

It is an opt-in (the spec's ``compile_trees: true``): a published model answers with its
own code by default. When on, the compiled methods are checked against the model's own on
sample rows at load (``forest_check.py``) and used only if they answer the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlhub_hpc.servable.shims.forest_check import verify

logger = logging.getLogger(__name__)

Call = Callable[[Any], Any]

# Estimators whose prediction is the mean of their trees' (scikit-learn's class names).
MEAN_OF_TREES = {
    "RandomForestRegressor", "ExtraTreesRegressor",
    "RandomForestClassifier", "ExtraTreesClassifier",
}
SINGLE_TREES = {"DecisionTreeRegressor", "DecisionTreeClassifier",
                "ExtraTreeRegressor", "ExtraTreeClassifier"}


@dataclass(frozen=True, repr=False)
class CompiledTrees:
    """All nodes of all trees in one table; ``roots[t]`` is tree t's first node.

    A leaf points to itself (threshold +inf), so every row may descend ``depth`` levels.
    ``children`` interleaves (left, right) per node: the next node is
    ``children[2 * node + (x > threshold)]``.
    """

    feature: np.ndarray
    threshold: np.ndarray
    children: np.ndarray
    value: np.ndarray  # (nodes, columns): leaf values, classifiers' already normalised
    roots: np.ndarray
    depth: int
    n_features: int
    scale: float  # 1 / trees for a forest's mean, the learning rate for boosting
    bias: np.ndarray  # (columns,), added after scaling (boosting's initial estimate)

    def __repr__(self) -> str:
        return (f"CompiledTrees(trees={len(self.roots)}, nodes={len(self.feature)}, "
                f"depth={self.depth}, n_features={self.n_features})")

    def leaves(self, X: np.ndarray) -> np.ndarray:
        """The leaf each row reaches in each tree: node ids, shape (trees, rows)."""
        rows = X.shape[0]
        flat = X.ravel()
        offsets = (np.arange(rows, dtype=np.intp) * self.n_features)[None, :]
        node = np.repeat(self.roots[:, None], rows, axis=1)
        for _ in range(self.depth):  # take() is leaner than fancy indexing for 1-d tables
            x = flat.take(offsets + self.feature.take(node))
            node = self.children.take(2 * node + (x > self.threshold.take(node)))
        return node

    def raw(self, X: np.ndarray) -> np.ndarray:
        """Scaled sum of the trees' leaf values plus the bias: shape (rows, columns)."""
        total = self.value[self.leaves(X)].sum(axis=0)
        return total * self.scale + self.bias

    def accepts(self, X: Any) -> np.ndarray | None:
        """X as scikit-learn's trees see it (float32 values, compared in float64), or None
        when the compiled path should not take it."""
        if not isinstance(X, np.ndarray) or X.ndim != 2 or X.shape[1] != self.n_features:
            return None
        if X.dtype.kind not in "fiub" or X.shape[0] == 0:
            return None
        with np.errstate(over="ignore"):  # too large for float32 becomes inf, refused below
            view = np.ascontiguousarray(X, dtype=np.float32)
        if not np.isfinite(view).all():
            return None  # NaN or out of float32 range: scikit-learn decides (or raises)
        return view.astype(np.float64)


def compile_tree_table(trees: list[Any], classifier: bool) -> dict[str, Any]:
    """Concatenate scikit-learn ``Tree`` objects into one padded node table."""
    features, thresholds, children, values, roots = [], [], [], [], []
    start, depth = 0, 0
    for tree in trees:
        n = tree.node_count
        left = tree.children_left.astype(np.intp)
        right = tree.children_right.astype(np.intp)
        leaf = left < 0
        ids = np.arange(n, dtype=np.intp)
        left = np.where(leaf, ids, left) + start
        right = np.where(leaf, ids, right) + start
        features.append(np.where(leaf, 0, tree.feature).astype(np.intp))
        thresholds.append(np.where(leaf, np.inf, tree.threshold).astype(np.float64))
        children.append(np.stack([left, right], axis=1).ravel())
        value = np.asarray(tree.value, dtype=np.float64)
        if classifier:
            value = value[:, 0, :]
            norm = value.sum(axis=1, keepdims=True)
            value = value / np.where(norm == 0, 1.0, norm)
        else:
            value = value[:, :, 0]
        values.append(value)
        roots.append(start)
        start += n
        depth = max(depth, int(tree.max_depth))
    return {
        "feature": np.concatenate(features), "threshold": np.concatenate(thresholds),
        "children": np.concatenate(children), "value": np.concatenate(values),
        "roots": np.asarray(roots, dtype=np.intp), "depth": depth,
    }


def _boosting_bias(model: Any, table: dict[str, Any], n_features: int) -> np.ndarray | None:
    """The constant initial estimate of a GradientBoostingRegressor, or None when its
    ``init`` is an estimator whose estimate depends on the input."""
    from sklearn.dummy import DummyRegressor

    init = getattr(model, "init_", None)
    if not (init == "zero" or isinstance(init, DummyRegressor)):
        return None
    probe = np.zeros((1, n_features))
    trees = CompiledTrees(**table, n_features=n_features, scale=float(model.learning_rate),
                          bias=np.zeros(1))
    return np.asarray(model.predict(probe), dtype=np.float64).reshape(1) - trees.raw(probe)[0]


def compile_model(model: Any) -> CompiledTrees | None:
    """Compile a supported fitted scikit-learn tree model; None for anything else."""
    kind = type(model).__name__
    module = type(model).__module__
    if not module.startswith("sklearn.") or not hasattr(model, "n_features_in_"):
        return None
    classifier = hasattr(model, "classes_")
    if classifier and (getattr(model, "n_outputs_", 1) != 1
                       or not isinstance(model.classes_, np.ndarray)):
        return None  # multi-output classifiers: a list of class arrays
    n_features = int(model.n_features_in_)
    if kind in MEAN_OF_TREES:
        trees = [e.tree_ for e in model.estimators_]
        table = compile_tree_table(trees, classifier)
        return CompiledTrees(**table, n_features=n_features, scale=1.0 / len(trees),
                             bias=np.zeros(table["value"].shape[1]))
    if kind in SINGLE_TREES:
        table = compile_tree_table([model.tree_], classifier)
        return CompiledTrees(**table, n_features=n_features, scale=1.0,
                             bias=np.zeros(table["value"].shape[1]))
    if kind == "GradientBoostingRegressor":
        table = compile_tree_table([e.tree_ for e in model.estimators_[:, 0]], False)
        bias = _boosting_bias(model, table, n_features)
        if bias is None:
            return None
        return CompiledTrees(**table, n_features=n_features,
                             scale=float(model.learning_rate), bias=bias)
    return None


def compiled_method(model: Any, trees: CompiledTrees, attr: str, fallback: Call) -> Call | None:
    """The compiled ``predict``/``predict_proba`` of ``model``, or None for other methods."""
    classifier = hasattr(model, "classes_")

    def outputs(raw: np.ndarray) -> np.ndarray:
        return raw[:, 0] if raw.shape[1] == 1 else raw

    def predict(X: Any) -> Any:
        view = trees.accepts(X)
        if view is None:
            return fallback(X)
        raw = trees.raw(view)
        return model.classes_.take(np.argmax(raw, axis=1)) if classifier else outputs(raw)

    def predict_proba(X: Any) -> Any:
        view = trees.accepts(X)
        return fallback(X) if view is None else trees.raw(view)

    if attr == "predict":
        return predict
    if attr == "predict_proba" and classifier:
        return predict_proba
    return None


@dataclass(frozen=True)
class TreePath:
    """What ``compile_calls`` chose: ``state`` is ``compiled``, ``fallback`` (compiled but
    it differed from the model's own methods on the sample rows: ``why``) or ``own``."""

    calls: dict[str, Call]
    state: str
    why: str = ""


def compile_calls(model: Any, calls: Mapping[str, Call], servable: str = "",
                  compiler: Callable[[Any], CompiledTrees | None] | None = None) -> TreePath:
    """Replace the model's ``predict``/``predict_proba`` in ``calls`` with compiled ones where
    the model is a supported tree model and the compiled ones answer as the model's own do
    on sample rows (``forest_check``); otherwise keep the model's own, with a warning if
    they differed. ``compiler`` makes the compiled form (default ``compile_model``)."""
    own = dict(calls)
    try:
        trees = (compiler or compile_model)(model)
    except Exception:  # an estimator shape this module does not know: keep scikit-learn's
        logger.debug("%s: cannot compile %s; using its own predict", servable,
                     type(model).__name__, exc_info=True)
        return TreePath(own, "own")
    if trees is None:
        logger.debug("%s: %s is not a supported tree model; using its own predict",
                     servable, type(model).__name__)
        return TreePath(own, "own")
    fast: dict[str, Call] = {}
    for name, call in calls.items():
        if getattr(call, "__self__", None) is not model:
            continue
        compiled = compiled_method(model, trees, getattr(call, "__name__", ""), call)
        if compiled is not None:
            fast[name] = compiled
    if not fast:
        return TreePath(own, "own")
    why = verify(model, own, fast)
    if why is not None:
        logger.warning("%s: the compiled tree path does not answer as %s's own methods "
                       "(%s); using the model's own methods", servable or "servable",
                       type(model).__name__, why)
        return TreePath(own, "fallback", why)
    logger.debug("%s: compiled %r for %s", servable, trees, ", ".join(fast))
    return TreePath({**own, **fast}, "compiled")


def fast_calls(model: Any, calls: Mapping[str, Call], servable: str = "") -> dict[str, Call]:
    """``compile_calls``' calls: compiled where that is proven equal, else the model's own."""
    return compile_calls(model, calls, servable).calls
