"""``python -m dlhub_hpc.worker --hub ADDRESS --servable OWNER/NAME[@VERSION]``"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dlhub_hpc.servable.spec import parse_ref
from dlhub_hpc.worker.loop import Worker, WorkerOptions, install_signal_handlers

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlhub_hpc.worker")
    parser.add_argument("--hub", required=True, help="the hub's worker address")
    parser.add_argument("--servable", required=True, help="owner/name[@version]")
    parser.add_argument("--block", default=None, help="the pilot block this worker belongs to")
    parser.add_argument("--heartbeat-interval", type=float, default=1.0)
    parser.add_argument("--hub-timeout", type=float, default=30.0)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [worker %(process)d] %(message)s",
    )
    name, version = parse_ref(args.servable)
    opts = WorkerOptions(
        hub=args.hub, servable=name, version=version, block=args.block,
        heartbeat_interval=args.heartbeat_interval, hub_timeout=args.hub_timeout,
    )
    if args.cache_dir is not None:
        opts.cache_dir = args.cache_dir
    worker = Worker(opts)
    install_signal_handlers(worker)
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
