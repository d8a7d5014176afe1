"""Broker cost against the number of connected workers: 1, 2, 4, ..., 1024 workers, one hub.

    python benchmarks/scaling.py [--counts 1,2,...,1024] [--requests 1000] [--plot out.png]

The DLHub paper served one servable from up to 512 containers, 1,000 requests a trial.
Here one hub process serves ``demo/noop`` to a fleet of workers resized through the
counts, up and then down again (``--passes``), so that a drift in the machine's load
touches every size alike. At each size a client in this process sends ``--requests``
requests with ``--in-flight`` outstanding (``Client.submit``), ``--rounds`` times, and the
run reports the throughput and the hub process's CPU seconds per request (all its
threads, in nanoseconds from ``/proc/PID/task/*/schedstat``; psutil's 10 ms ticks only
where that is missing). What is measured is the broker's bookkeeping and fan-out, which should not
grow with the number of idle workers: the target is hub CPU per request at the largest
size within ``TARGET`` x of that at ``BASELINE`` (8) workers; the exit status is 1 when it is
missed (``TARGET MISSED: ...``), 0 when met or not measured (no 8 or no larger count).

Two cores cannot run 1,024 worker processes, so the workers are *simulated worker loops
sharing processes*: a worker host process opens up to ``--per-host`` DEALER sockets, each
a separate worker identity speaking the real protocol (Hello -> Assign -> Ready, a
BatchResult echoing each Batch, Heartbeat every interval from a heartbeat socket of its
own as ``dlhub_hpc.worker`` does, Bye on exit), all served by one poll loop (epoll on the
sockets' ``ZMQ_FD``, so that a wake-up does not cost more in a bigger host). The hub
cannot tell them from real workers. A size adds hosts or stops the newest (their workers
say Bye). The parts live in ``benchmarks/_scaling/``: ``fleet``, ``measure``, ``report``.
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._scaling.measure import sweep
from benchmarks._scaling.report import BASELINE, TARGET, add_ratios, plot, print_table, write_json
from benchmarks.common import start_run
from benchmarks.targets import Targets

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results" / "scaling.json"
DEFAULT_COUNTS = "1,2,4,8,16,32,64,128,256,512,1024"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--counts", default=DEFAULT_COUNTS,
                        help=f"worker counts, comma-separated (default {DEFAULT_COUNTS})")
    parser.add_argument("--requests", type=int, default=1000,
                        help="timed requests per round (default 1000, as in the paper)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="timed rounds per size and pass (default 3)")
    parser.add_argument("--passes", type=int, default=2,
                        help="sweeps over the counts, alternately up and down (default 2)")
    parser.add_argument("--warmup", type=int, default=200,
                        help="untimed requests per size first (default 200)")
    parser.add_argument("--in-flight", type=int, default=32,
                        help="requests outstanding at once (default 32)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="the hub's max_batch_size for demo/noop (default 1: every "
                             "request is its own batch, the most fan-out)")
    parser.add_argument("--heartbeat-interval", type=float, default=1.0,
                        help="seconds between heartbeats, hub and workers (default 1)")
    parser.add_argument("--heartbeats-per-second", type=float, default=256.0,
                        help="the hub's heartbeats_per_second: past it, beats go further "
                             "apart (default 256, the hub's; 0: every interval at any size)")
    parser.add_argument("--per-host", type=int, default=128,
                        help="simulated workers per worker host process (default 128)")
    parser.add_argument("--idle", type=float, default=1.0,
                        help="seconds the idle hub's CPU is measured per size (0: skip)")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"default {RESULTS}")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG plot here")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each size")
    args = parser.parse_args(argv)
    try:
        args.counts = sorted({int(c) for c in args.counts.split(",") if c.strip()})
    except ValueError:
        parser.error(f"--counts should be integers separated by commas, not {args.counts!r}")
    if not args.counts or args.counts[0] < 1:
        parser.error("--counts needs at least one count >= 1")
    if min(args.requests, args.rounds, args.passes, args.in_flight, args.batch_size,
           args.per_host) < 1:
        parser.error("--requests, --rounds, --passes, --in-flight, --batch-size and "
                     "--per-host must be >= 1")
    if args.warmup < 0 or args.heartbeat_interval <= 0 or args.idle < 0 \
            or args.heartbeats_per_second < 0:
        parser.error("--warmup, --idle and --heartbeats-per-second must be >= 0, "
                     "--heartbeat-interval > 0")
    return args


def raise_fd_limit(workers: int) -> None:
    """The hub holds two connections per worker; spawned children inherit the limit."""
    need = 2 * workers + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise SystemExit(f"{workers} workers need about {need} open files; the hard limit "
                         f"is {hard} (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start_run(args.verbose, logger)
    raise_fd_limit(args.counts[-1])
    started = time.monotonic()
    hub_stats: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dlhub-scaling-") as tmp:
        rows = sweep(args, Path(tmp), hub_stats)
    ratio = add_ratios(rows, BASELINE)
    print_table(rows, ratio, args)
    write_json(rows, ratio, hub_stats, args, args.json)
    if args.plot is not None:
        plot(rows, args.plot)
    logger.info("done in %.1fs", time.monotonic() - started)
    targets = Targets()
    targets.check(f"hub CPU per request at {rows[-1].workers} workers / at {BASELINE} workers",
                  ratio, TARGET, unit="x")
    targets.report()
    return targets.exit_code()


if __name__ == "__main__":
    sys.exit(main())
