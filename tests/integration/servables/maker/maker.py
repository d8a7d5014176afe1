import os
import time

import numpy as np


def make(args: dict) -> np.ndarray:
    """``n`` float64 values of ``fill``; first waits (up to a minute) for file ``gate``."""
    gate = args.get("gate")
    give_up = time.monotonic() + 60
    while gate and not os.path.exists(gate) and time.monotonic() < give_up:
        time.sleep(0.01)
    out = np.full(int(args["n"]), float(args.get("fill", 1.5)))
    out[-1] = -1.0
    return out


def total(x: np.ndarray) -> float:
    return float(np.asarray(x).sum())
