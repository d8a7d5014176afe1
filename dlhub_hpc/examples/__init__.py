"""Example servables: ``add`` and ``noop`` (Python functions), ``iris`` (scikit-learn), and
the ``screening`` workflow with its model (``screening/model``).

The paper's case studies, each runnable with ``python -m``: ``formation_enthalpy`` (a
pymatgen -> matminer -> scikit-learn pipeline), ``image_classifier`` (PyTorch) and
``ensemble`` (five models combined by a pipeline); ``case_studies`` is what they share."""

from __future__ import annotations

import logging
import pickle
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

EXAMPLES = Path(__file__).parent


def example_dir(name: str) -> Path:
    """The directory of a ready-to-publish example (``add``, ``noop``)."""
    path = EXAMPLES / name
    if not (path / "servable.yaml").is_file():
        raise FileNotFoundError(f"no example servable named {name!r} in {EXAMPLES}")
    return path


def prepare_iris(dest: Path) -> Path:
    """Copy the iris example to ``dest`` and train its model there (a pickled forest);
    ``python -m dlhub_hpc.examples.iris DIR`` does this from a shell."""
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    dest = Path(dest)
    # The servable is servable.yaml and the model; the Python files here only train it.
    shutil.copytree(EXAMPLES / "iris", dest, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    x, y = load_iris(return_X_y=True)
    model = RandomForestClassifier(n_estimators=20, random_state=0).fit(x, y)
    with (dest / "model.pkl").open("wb") as fh:
        pickle.dump(model, fh)
    return dest
