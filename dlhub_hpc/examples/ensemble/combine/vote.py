"""Last step: combine the five members' answers into the ensemble's verdict."""

import numpy as np


def combine(answers: list[np.ndarray]) -> dict:
    """Each answer is a (1, 2) row of P(out of focus), P(in focus); average and vote."""
    p = [float(np.asarray(a).reshape(-1)[1]) for a in answers]
    votes = sum(x > 0.5 for x in p)
    return {"p_in_focus": float(np.mean(p)), "members": p, "votes_in_focus": int(votes),
            "in_focus": bool(np.mean(p) > 0.5)}
