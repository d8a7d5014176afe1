"""``python -m dlhub_hpc.examples.formation_enthalpy [FORMULA ...]``"""

from __future__ import annotations

import logging

from dlhub_hpc.examples import case_studies
from dlhub_hpc.examples.formation_enthalpy import __doc__ as doc
from dlhub_hpc.examples.formation_enthalpy import run

logger = logging.getLogger(__name__)

DEFAULT_FORMULAS = ["Fe2O3", "NaCl", "Al2O3", "MgO", "TiO2", "ZnS", "CuZn", "LiF"]


def main(argv: list[str] | None = None) -> None:
    parser = case_studies.parser("python -m dlhub_hpc.examples.formation_enthalpy", doc)
    parser.add_argument("formulas", nargs="*", default=DEFAULT_FORMULAS)
    parser.add_argument("--compounds", type=int, default=300,
                        help="size of the toy training table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    run(args)


if __name__ == "__main__":
    main()
