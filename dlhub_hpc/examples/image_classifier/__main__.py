"""``python -m dlhub_hpc.examples.image_classifier``"""

from __future__ import annotations

import logging

from dlhub_hpc.examples import case_studies
from dlhub_hpc.examples.image_classifier import __doc__ as doc
from dlhub_hpc.examples.image_classifier import run

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = case_studies.parser("python -m dlhub_hpc.examples.image_classifier", doc)
    parser.add_argument("--requests", type=int, default=8, help="concurrent requests")
    parser.add_argument("--images", type=int, default=4, help="images per request")
    parser.add_argument("--train", type=int, default=1200, help="synthetic training images")
    parser.add_argument("--show", type=int, default=12, help="rows of the table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    run(args)


if __name__ == "__main__":
    main()
