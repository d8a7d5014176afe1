"""Parse a formula with pymatgen: ``"Fe2O3"`` -> ``{"Fe": 0.4, "O": 0.6}``."""

from pymatgen.core import Composition


def fractions(formula: str) -> dict[str, float]:
    return {str(el): float(x) for el, x in Composition(formula).fractional_composition.items()}
