"""The paper's case studies, each run end to end at small size as a scientist would run it."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from .conftest import wait_for, worker_processes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]


def needs(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: pip install -e '.[test]'")


def run_example(module: str, *args: str, timeout: float = 300) -> str:
    result = subprocess.run(
        [sys.executable, "-m", f"dlhub_hpc.examples.{module}", *args],
        capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "COLUMNS": "120"},  # rich tables at full width, one row a line
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "hub and workers stopped" in out
    address = re.search(r"\(workers: (tcp://[\d.:]+)\)", out)
    assert address is not None, out
    # The provider's cancel signals the workers and returns; each exits soon after.
    wait_for(lambda: worker_processes(address.group(1)) == [], timeout=30, what="workers exited")
    return out


def test_formation_enthalpy_pipeline() -> None:
    needs("pymatgen", "matminer", "sklearn")
    out = run_example("formation_enthalpy", "Fe2O3", "NaCl", "CuZn", "--compounds", "120")
    assert "OQMD cannot be downloaded here" in out
    mae = re.search(r"holdout MAE ([\d.]+) eV/atom", out)
    assert mae is not None and float(mae.group(1)) < 0.5, out
    rows = dict(re.findall(r"│ (Fe2O3|NaCl|CuZn) +│ +([-+][\d.]+) │", out))
    assert set(rows) == {"Fe2O3", "NaCl", "CuZn"}, out
    assert float(rows["NaCl"]) < -1.0 < float(rows["CuZn"]), "ionic NaCl below metallic CuZn"
    assert "step 1/3 (demo/formation-parse) failed" in out
    assert "each step answered from the hub's memo cache" in out
    counters = re.search(r"'pipeline_runs': (\d+)", out)
    assert counters is not None and int(counters.group(1)) == 5


def test_image_classifier_takes_numpy_batches() -> None:
    needs("torch")
    out = run_example("image_classifier", "--train", "500", "--requests", "6",
                      "--images", "4", "--show", "4")
    accuracy = re.search(r"accuracy ([\d.]+)% over 24 images", out)
    assert accuracy is not None and float(accuracy.group(1)) >= 80.0, out
    assert len(re.findall(r"│ +\d+ │ \w+ +│ \w+", out)) == 4


def test_sem_focus_ensemble_of_five_models() -> None:
    needs("sklearn")
    out = run_example("ensemble", "--train", "200", "--images", "6")
    for member in ("logistic", "forest", "boosting", "knn", "svm"):
        assert f"published demo/sem-focus-{member}@1" in out
    assert "7 workers ready" in out
    right = re.search(r"(\d)/6 verdicts right", out)
    assert right is not None and int(right.group(1)) >= 5, out
    steps = re.search(r"'pipeline_steps': (\d+)", out)
    assert steps is not None and int(steps.group(1)) == 6 * 7
