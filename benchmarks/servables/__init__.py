"""The DLHub paper's benchmark servables, and the inputs the suite sends them.

Each servable is a folder here (``servable.yaml`` and its module). ``prepare`` copies one
to a scratch folder and builds what it needs there (``oqmd_rf`` trains and pickles its
forest), so nothing is ever written into the source tree.
"""

from __future__ import annotations

import logging
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
OWNER = "bench"
NAMES = ("noop", "matminer_util", "matminer_featurize", "oqmd_rf", "cifar_cnn")
OQMD_NOTE = ("oqmd_rf: the OQMD data cannot be downloaded here, so the forest is trained "
             "on 2,000 random rows of 132 features (numpy seed 0)")

ELEMENTS = (
    "H", "Li", "Be", "B", "C", "N", "O", "F", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "K",
    "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As", "Se",
    "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te",
    "Cs", "Ba", "La", "Ce", "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Pb", "Bi",
)


def ref(name: str) -> str:
    """``owner/name`` of a benchmark servable."""
    return f"{OWNER}/{name}"


def prepare(name: str, dest: Path) -> Path:
    """Copy servable ``name`` into ``dest/name`` and build its model there."""
    if name not in NAMES:
        raise ValueError(f"unknown servable {name!r}; known: {', '.join(NAMES)}")
    target = dest / name
    shutil.copytree(HERE / name, target, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if name == "oqmd_rf":
        train_oqmd_rf(target / "model.pkl")
    return target


def variant(source: Path, dest: Path, suffix: str, **servable: Any) -> Path:
    """A copy of a prepared servable published under ``<name><suffix>`` (same model), with
    ``servable`` block fields changed (e.g. ``compile_trees=False``)."""
    shutil.copytree(source, dest, dirs_exist_ok=True)
    spec_file = dest / "servable.yaml"
    spec = yaml.safe_load(spec_file.read_text())
    spec["dlhub"]["name"] += suffix
    spec["servable"].update(servable)
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    return dest


def train_oqmd_rf(path: Path, rows: int = 2000, features: int = 132) -> None:
    """An OQMD-sized random forest on random data (the real data is not reachable here)."""
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(0)
    x = rng.random((rows, features))
    y = x[:, :8].sum(axis=1) + 0.1 * rng.standard_normal(rows)
    model = RandomForestRegressor(n_estimators=100, max_depth=12, n_jobs=-1, random_state=0)
    model.fit(x, y)
    model.n_jobs = 1  # one worker per core predicts on its own core
    with path.open("wb") as fh:
        pickle.dump(model, fh, protocol=pickle.HIGHEST_PROTOCOL)
    logger.info("trained %s (%d bytes)", path, path.stat().st_size)


# ---- inputs ---------------------------------------------------------------------------

def formulas(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct formulas of 2 or 3 elements, e.g. ``"Fe2O3"``."""
    seen: dict[str, None] = {}
    while len(seen) < n:
        k = int(rng.integers(2, 4))
        elements = rng.choice(len(ELEMENTS), size=k, replace=False)
        amounts = rng.integers(1, 10, size=k)
        formula = "".join(f"{ELEMENTS[e]}{a if a > 1 else ''}"
                          for e, a in zip(elements, amounts, strict=True))
        seen[formula] = None
    return list(seen)


def _noop(n: int, rng: np.random.Generator) -> list[Any]:
    return [f"noop-{i}" for i in range(n)]


def _rows(n: int, rng: np.random.Generator) -> list[Any]:
    return list(rng.random((n, 1, 132)))


def _images(n: int, rng: np.random.Generator) -> list[Any]:
    return list(rng.standard_normal((n, 1, 3, 32, 32), dtype=np.float32))


INPUTS: dict[str, Callable[[int, np.random.Generator], list[Any]]] = {
    "noop": _noop,
    "matminer_util": formulas,
    "matminer_featurize": formulas,
    "oqmd_rf": _rows,
    "cifar_cnn": _images,
}


def make_inputs(name: str, n: int, seed: int = 1) -> list[Any]:
    """``n`` distinct inputs for servable ``name``, one request each."""
    return INPUTS[name](n, np.random.default_rng(seed))
