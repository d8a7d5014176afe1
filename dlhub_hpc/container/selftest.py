"""``python3 -m dlhub_hpc.container.selftest``: the image's %test; loads the baked-in model.

Imports the worker, reads the bundle at ``$DLHUB_HPC_BUNDLE`` (or the path given), loads it
with its shim, and prints the servable's methods. Exit status 0 when the model loads.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

from dlhub_hpc.errors import DlhubHpcError
from dlhub_hpc.servable.shims import load_servable
from dlhub_hpc.servable.spec import ServableSpec, find_spec_file

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    where = args[0] if args else os.environ.get("DLHUB_HPC_BUNDLE")
    if not where:
        print("selftest: no bundle: set DLHUB_HPC_BUNDLE or pass its path", file=sys.stderr)
        return 2
    root = Path(where)
    try:
        # Everything a worker imports must be in the image, not only what the model needs.
        importlib.import_module("dlhub_hpc.worker.loop")
    except ImportError as exc:
        print(f"selftest: the worker cannot start in this image: {exc}", file=sys.stderr)
        return 1
    try:
        spec = ServableSpec.from_file(find_spec_file(root))
        load_servable(spec, root)
    except DlhubHpcError as exc:
        print(f"selftest: {exc}", file=sys.stderr)
        return 1
    print(f"selftest: {spec.full_name} loads; methods {sorted(spec.servable.methods)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
