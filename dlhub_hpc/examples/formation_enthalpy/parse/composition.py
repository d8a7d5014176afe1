"""Step 1: parse a chemical formula with pymatgen into atomic fractions."""

from pymatgen.core import Composition


def fractions(formula: str) -> dict[str, float]:
    """``"Fe2O3"`` -> ``{"Fe": 0.4, "O": 0.6}``; pymatgen's error for what is no formula."""
    composition = Composition(formula)
    if not composition.valid:
        raise ValueError(f"{formula!r} names an element that does not exist")
    return {str(el): float(x) for el, x in composition.fractional_composition.items()}
