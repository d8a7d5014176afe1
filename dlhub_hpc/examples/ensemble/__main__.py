"""``python -m dlhub_hpc.examples.ensemble``"""

from __future__ import annotations

import logging

from dlhub_hpc.examples import case_studies
from dlhub_hpc.examples.ensemble import __doc__ as doc
from dlhub_hpc.examples.ensemble import run

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = case_studies.parser("python -m dlhub_hpc.examples.ensemble", doc)
    parser.add_argument("--images", type=int, default=8, help="images to classify")
    parser.add_argument("--train", type=int, default=400, help="synthetic training images")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    run(args)


if __name__ == "__main__":
    main()
