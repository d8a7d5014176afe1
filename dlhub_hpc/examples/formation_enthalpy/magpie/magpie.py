"""Step 2: matminer's Magpie element-property features of a composition (made once)."""

import numpy as np
from matminer.featurizers.composition import ElementProperty
from pymatgen.core import Composition

FEATURIZER = ElementProperty.from_preset("magpie")


def featurize(compositions: list[dict[str, float]]) -> list[np.ndarray]:
    """One (1, 132) row of features per composition; a batch: the worker passes them all."""
    return [
        np.nan_to_num(np.asarray([FEATURIZER.featurize(Composition(c))], dtype=np.float64))
        for c in compositions
    ]
