"""``python -m dlhub_hpc.examples.iris [DIR] [--publish]``: train the example, ready to publish."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dlhub_hpc.errors import DlhubHpcError
from dlhub_hpc.examples import prepare_iris

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dlhub_hpc.examples.iris",
        description="Write the iris example with a trained model.pkl to DIR.")
    parser.add_argument("directory", nargs="?", default="iris", type=Path,
                        help="where to write it (default: ./iris)")
    parser.add_argument("--publish", action="store_true",
                        help="then publish it to the running hub (or --hub)")
    parser.add_argument("--hub", default=None, help="the hub's client address")
    args = parser.parse_args(argv)
    try:
        directory = prepare_iris(args.directory)
    except ImportError as exc:  # scikit-learn is an extra
        print(f"the iris example needs scikit-learn ({exc}); install it with "
              "pip install 'dlhub-hpc[sklearn]'", file=sys.stderr)
        return 1
    print(f"wrote {directory / 'servable.yaml'} and a trained {directory / 'model.pkl'}")
    if not args.publish:
        print(f"publish it with: dlhub-hpc publish {args.directory}")
        return 0
    from dlhub_hpc.client import Client

    try:
        with Client(args.hub, timeout=60) as client:
            record = client.publish(directory)
    except DlhubHpcError as exc:
        print(f"error {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"published {record['name']}@{record['version']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
