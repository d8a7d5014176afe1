"""Magpie features of formulas with matminer; the featurizer is made once, at import."""

from matminer.featurizers.composition import ElementProperty
from pymatgen.core import Composition

FEATURIZER = ElementProperty.from_preset("magpie")


def featurize(formulas: list[str]) -> list[list[float]]:
    """One list of 132 features per formula (a batch: the worker passes every input)."""
    return [[float(v) for v in FEATURIZER.featurize(Composition(f))] for f in formulas]
