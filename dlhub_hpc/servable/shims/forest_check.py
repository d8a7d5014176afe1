"""Proof, at load, that a compiled tree model answers as the model's own methods do.

The spec carries no sample inputs, so the rows come from the model itself: its trees'
own split thresholds and ``n_features_in_``. Two kinds of rows (see ``sample_rows``):

- ``POOL_ROWS`` rows whose every feature is drawn from that feature's split values: each
  threshold and the float32 values on either side of it (rows on a threshold are where a
  comparison done another way would differ), and a value beyond the smallest and largest;
- leaf-directed rows: for each tree, rows built to follow the root-to-leaf path of up to
  ``LEAF_ROWS // trees`` of its leaves (at least one per tree; every leaf when the
  budget allows, so a small forest is checked leaf by leaf), the other features drawn as
  above, so each such row also takes some path through every other tree.

About 1,300 rows at most: building and checking them takes about 0.3 s for a 100-tree,
depth-12 forest on 132 features (``oqmd_rf``), once per worker load.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

Call = Callable[[Any], Any]

POOL_ROWS = 256
LEAF_ROWS = 1024
RTOL = 1e-9  # the compiled path sums the same leaf values in another order
TIE = 1e-9  # classes whose probabilities are this close may break a tie either way


@dataclass(frozen=True)
class Nodes:
    """One tree's node arrays, read once (each attribute of a ``Tree`` builds a new array)."""

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray


def model_trees(model: Any) -> list[Any]:
    """The scikit-learn ``Tree`` objects of a forest, a boosted model or a single tree."""
    if hasattr(model, "tree_"):
        return [model.tree_]
    return [e.tree_ for e in np.ravel(model.estimators_)]


def nodes(tree: Any) -> Nodes:
    return Nodes(np.asarray(tree.feature), np.asarray(tree.threshold),
                 np.asarray(tree.children_left), np.asarray(tree.children_right))


def feature_pools(trees: list[Nodes], n_features: int) -> list[np.ndarray]:
    """Per feature: its thresholds, the float32 values next to them, and values beyond."""
    inner = [tr.left >= 0 for tr in trees]
    features = np.concatenate([tr.feature[i] for tr, i in zip(trees, inner, strict=True)])
    thresholds = np.concatenate([tr.threshold[i] for tr, i in zip(trees, inner, strict=True)])
    pools = []
    for f in range(n_features):
        t = np.unique(thresholds[features == f])
        if not len(t):
            pools.append(np.zeros(1))
            continue
        t32 = t.astype(np.float32)
        near = [t32, np.nextafter(t32, np.float32(-np.inf)), np.nextafter(t32, np.float32(np.inf))]
        edges = np.array([t.min() - 1.0, t.max() + 1.0])
        pools.append(np.unique(np.concatenate([t, *(v.astype(np.float64) for v in near), edges])))
    return pools


def leaf_row(tree: Nodes, leaf: int, parent: np.ndarray, row: np.ndarray) -> np.ndarray:
    """``row`` changed so that it reaches ``leaf`` of ``tree`` (x <= threshold goes left)."""
    bounds: dict[int, list[float]] = {}  # feature -> [lo, hi]: lo < x <= hi
    node = leaf
    while parent[node] >= 0:
        up = int(parent[node])
        lo_hi = bounds.setdefault(int(tree.feature[up]), [-np.inf, np.inf])
        t = float(tree.threshold[up])
        if tree.left[up] == node:
            lo_hi[1] = min(lo_hi[1], t)
        else:
            lo_hi[0] = max(lo_hi[0], t)
        node = up
    out = row.copy()
    for f, (lo, hi) in bounds.items():
        x = np.float32(hi) if hi < np.inf else np.float32(lo + 1.0)
        if float(x) > hi:  # compared in float64, as scikit-learn compares
            x = np.nextafter(x, np.float32(-np.inf))
        if float(x) > lo:  # else no float32 lies in (lo, hi]: the leaf cannot be reached
            out[f] = x
    return out


def sample_rows(model: Any, seed: int = 0) -> np.ndarray:
    """The rows a compiled model is checked on (see the module docstring)."""
    trees = [nodes(t) for t in model_trees(model)]
    rng = np.random.default_rng(seed)
    pools = feature_pools(trees, int(model.n_features_in_))

    sizes = np.array([len(p) for p in pools])
    starts = np.cumsum(sizes) - sizes
    values = np.concatenate(pools)

    def pool_rows(n: int) -> np.ndarray:  # each feature drawn uniformly from its own pool
        picks = (rng.random((n, len(pools))) * sizes).astype(np.intp)
        return values[starts + np.minimum(picks, sizes - 1)]

    rows = [pool_rows(POOL_ROWS)]
    per_tree = max(1, LEAF_ROWS // len(trees))
    for tree in trees:
        left, right = tree.left, tree.right
        parent = np.full(len(left), -1, dtype=np.intp)
        inner = np.flatnonzero(left >= 0)
        parent[left[inner]] = inner
        parent[right[inner]] = inner
        leaves = np.flatnonzero(left < 0)
        if len(leaves) > per_tree:
            leaves = rng.choice(leaves, size=per_tree, replace=False)
        base = pool_rows(len(leaves))
        rows.append(np.stack([leaf_row(tree, int(leaf), parent, r)
                              for leaf, r in zip(leaves, base, strict=True)]))
    return np.concatenate(rows)


def difference(model: Any, attr: str, own: Call, fast: Call, rows: np.ndarray) -> str | None:
    """How ``fast`` differs from the model's ``own`` method on ``rows``; None if it does not."""
    with warnings.catch_warnings():  # e.g. a model fitted on named columns, given an array
        warnings.simplefilter("ignore")
        expected = np.asarray(own(rows))
        got = np.asarray(fast(rows))
        proba = (model.predict_proba(rows) if attr == "predict" and hasattr(model, "classes_")
                 else None)
    if got.shape != expected.shape or got.dtype.kind != expected.dtype.kind:
        return f"gives {got.dtype}{got.shape}, not {expected.dtype}{expected.shape}"
    if proba is not None:  # labels: compare where the best class is clear
        top2 = np.sort(proba, axis=1)[:, -2:] if proba.shape[1] > 1 else np.ones((len(rows), 2))
        clear = (top2[:, 1] - top2[:, 0] > TIE) | (proba.shape[1] == 1)
        bad = clear & (got != expected)
        return f"{int(bad.sum())} of {len(rows)} labels differ" if bad.any() else None
    if expected.dtype.kind != "f":
        bad = got != expected
        return f"{int(bad.sum())} of {got.size} values differ" if bad.any() else None
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    gap = np.abs(got - expected)
    bad = gap > RTOL * np.abs(expected) + RTOL * scale
    if bad.any() or not np.isfinite(got).all():
        return (f"{int(bad.sum())} of {got.size} values differ, "
                f"by up to {float(np.nanmax(gap)):.3g}")
    return None


def verify(model: Any, own: dict[str, Call], fast: dict[str, Call]) -> str | None:
    """None if each ``fast[name]`` answers as ``own[name]`` on the sample rows, else why not.

    ``own`` and ``fast`` share keys: method names of the spec; each ``own`` call is a bound
    method of ``model`` (its ``__name__`` says which).
    """
    try:
        rows = sample_rows(model)
        for name, call in fast.items():
            attr = getattr(own[name], "__name__", name)
            why = difference(model, attr, own[name], call, rows)
            if why is not None:
                return f"{name}: {why} on {len(rows)} sample rows"
    except Exception as exc:  # the check itself failing is a difference too
        logger.debug("checking the compiled trees failed", exc_info=True)
        return f"the check raised {type(exc).__name__}: {exc}"
    return None
