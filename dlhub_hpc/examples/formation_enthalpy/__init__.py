"""Formation enthalpy from a composition: the DLHub paper's materials workflow.

A three-step pipeline served by the hub: ``"Fe2O3"`` -> pymatgen parse -> matminer Magpie
features -> scikit-learn regressor -> eV/atom. Each step is its own servable with its own
warm workers; the hub passes the intermediate results from step to step itself.

The paper's regressor was trained on OQMD, which cannot be downloaded here. ``prepare``
trains a stand-in at set-up on a small table it generates from pymatgen's own element
data: binary compounds whose "formation enthalpy" is a made-up rule of electronegativity
difference and atomic-radius mismatch. The predictions show the workflow, not chemistry.

Run it (``--hub ADDRESS`` to use a running hub, e.g. on a cluster's login node)::

    python -m dlhub_hpc.examples.formation_enthalpy Fe2O3 NaCl Al2O3 MgO
"""

from __future__ import annotations

import itertools
import json
import logging
import pickle
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
STEPS = ("parse", "magpie", "regressor")  # publish order: the steps, then the pipeline
PIPELINE = "demo/formation-enthalpy"
STEP_NAMES = ("demo/formation-parse", "demo/formation-magpie", "demo/formation-regressor")

METALS = ("Li", "Na", "K", "Mg", "Ca", "Sr", "Ba", "Al", "Ga", "In", "Ti", "V", "Cr", "Mn",
          "Fe", "Co", "Ni", "Cu", "Zn", "Y", "Zr", "Nb", "Mo", "Ag", "La", "Sn")
NONMETALS = ("O", "S", "Se", "N", "P", "F", "Cl", "Br", "I", "C", "Si", "B", "H")
STOICHIOMETRIES = ((1, 1), (1, 2), (2, 1), (2, 3), (1, 3), (3, 4))


def toy_enthalpy(formula: str) -> float:
    """The made-up rule the stand-in model learns (eV/atom), from pymatgen element data:
    ionic attraction grows with the electronegativity difference, size mismatch costs."""
    from pymatgen.core import Composition

    fractions = Composition(formula).fractional_composition
    total = 0.0
    for (a, ca), (b, cb) in itertools.combinations(fractions.items(), 2):
        dx = float(a.X) - float(b.X)
        ra, rb = float(a.atomic_radius or 1.5), float(b.atomic_radius or 1.5)
        mismatch = (ra - rb) / ((ra + rb) / 2)
        total += 4 * ca * cb * (-0.6 * dx * dx + 0.35 * mismatch * mismatch)
    return total


def training_table(n: int, seed: int = 0) -> list[tuple[str, float]]:
    """``n`` binary formulas (metal + non-metal or metal + metal) and their toy enthalpies."""
    rng = np.random.default_rng(seed)
    pairs = [(m, x) for m in METALS for x in NONMETALS]
    pairs += list(itertools.combinations(METALS, 2))
    rows = []
    for i in rng.permutation(len(pairs))[:n]:
        a, b = pairs[i]
        p, q = STOICHIOMETRIES[rng.integers(len(STOICHIOMETRIES))]
        formula = f"{a}{p if p > 1 else ''}{b}{q if q > 1 else ''}"
        rows.append((formula, toy_enthalpy(formula)))
    return rows


def featurize_all(formulas: list[str]) -> np.ndarray:
    from matminer.featurizers.composition import ElementProperty
    from pymatgen.core import Composition

    featurizer = ElementProperty.from_preset("magpie")
    return np.nan_to_num(np.array([featurizer.featurize(Composition(f)) for f in formulas]))


def train(dest: Path, n: int = 300, seed: int = 0) -> dict[str, Any]:
    """Train the stand-in regressor on ``n`` toy compounds; write model.pkl and a summary."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.metrics import mean_absolute_error

    rows = training_table(n, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # matminer's notes on missing element data
        x = featurize_all([f for f, _ in rows])
    y = np.array([h for _, h in rows])
    cut = int(0.8 * len(rows))
    model = RandomForestRegressor(n_estimators=60, max_depth=12, random_state=seed, n_jobs=1)
    model.fit(x[:cut], y[:cut])
    mae = float(mean_absolute_error(y[cut:], model.predict(x[cut:])))
    model.fit(x, y)  # the served model sees the whole table
    with (dest / "model.pkl").open("wb") as fh:
        pickle.dump(model, fh)
    summary = {"compounds": len(rows), "holdout_mae_ev_per_atom": mae,
               "target_range": [float(y.min()), float(y.max())]}
    (dest / "training.json").write_text(json.dumps(summary, indent=2))
    return summary


def prepare(dest: Path, n: int = 300) -> dict[str, Path]:
    """Copy the four servable directories to ``dest`` and train the regressor there."""
    dest = Path(dest)
    dirs = {}
    for part in (*STEPS, "pipeline"):
        dirs[part] = Path(shutil.copytree(HERE / part, dest / part, dirs_exist_ok=True))
    train(dirs["regressor"], n)
    return dirs


def run(args: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from dlhub_hpc.errors import DlhubHpcError
    from dlhub_hpc.examples import case_studies as cs

    console = Console()
    with cs.workdir(args.home) as home:
        console.print(f"training the stand-in regressor on {args.compounds} toy compounds "
                      "made from pymatgen element data (OQMD cannot be downloaded here)")
        dirs = prepare(home / "servables", args.compounds)
        summary = json.loads((dirs["regressor"] / "training.json").read_text())
        console.print(f"holdout MAE {summary['holdout_mae_ev_per_atom']:.3f} eV/atom on "
                      f"targets from {summary['target_range'][0]:.2f} to "
                      f"{summary['target_range'][1]:.2f} eV/atom")
        with cs.hub_client(args.hub, home, console) as client:
            cs.publish(client, [dirs[p] for p in (*STEPS, "pipeline")], console)
            cs.start_workers(client, STEP_NAMES, args.workers, console)
            started = time.perf_counter()
            futures = [client.submit(PIPELINE, f) for f in args.formulas]
            answers = [f.result() for f in futures]
            elapsed = time.perf_counter() - started
            table = Table(title=f"Formation enthalpy ({PIPELINE}: pymatgen -> matminer -> "
                                "scikit-learn)")
            for col in ("formula", "predicted (eV/atom)", "toy rule (eV/atom)"):
                table.add_column(col, justify="left" if col == "formula" else "right")
            for formula, answer in zip(args.formulas, answers, strict=True):
                table.add_row(formula, f"{float(answer[0]):+.3f}",
                              f"{toy_enthalpy(formula):+.3f}")
            table.caption = (f"{len(answers)} formulas in {elapsed * 1000:.0f} ms; "
                             "the intermediate features never left the hub")
            console.print(table)
            try:
                client.run(PIPELINE, "Xx2O3")
            except DlhubHpcError as exc:
                console.print(f"a formula pymatgen cannot parse: {type(exc).__name__}: "
                              f"{exc.message}")
            again = client.run(PIPELINE, args.formulas[0])
            console.print(f"{args.formulas[0]} again: {float(again[0]):+.3f} eV/atom "
                          "(each step answered from the hub's memo cache)")
            console.print(f"hub counters: {cs.batching_summary(client)}")
