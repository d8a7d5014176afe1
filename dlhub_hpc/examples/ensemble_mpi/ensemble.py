"""One member of a bootstrap ensemble: its rank picks its resample of the training data."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

RANK = int(os.environ.get("DLHUB_HPC_RANK", "0"))  # set by the MPI worker on every rank


def fit(rank: int, degree: int = 3) -> np.ndarray:
    """The polynomial member ``rank`` fits to its bootstrap resample of noisy sin(x)."""
    data = np.random.default_rng(2026)
    x = np.linspace(0.0, 3.0, 64)
    y = np.sin(x) + data.normal(0.0, 0.1, x.size)
    pick = np.random.default_rng(rank).integers(0, x.size, x.size)
    return np.polyfit(x[pick], y[pick], degree)


COEFFS = fit(RANK)


def predict(points: list[float]) -> list[float]:
    return np.polyval(COEFFS, np.asarray(points, dtype=float)).tolist()


def member(_: Any) -> float:
    return float(RANK)
