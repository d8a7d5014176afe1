"""``python -m dlhub_hpc.worker --hub ADDRESS --servable OWNER/NAME[@VERSION] [options]``

Pilots add ``--mpi`` (one worker over all ranks of an MPI job), ``--drain-after`` (the
block's walltime less a margin) and ``--gpus/--gpu-env/--workers-per-gpu`` (device binding).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from dlhub_hpc.errors import ConfigError, DlhubHpcError
from dlhub_hpc.logging_setup import LOG_FORMATS, setup_logging
from dlhub_hpc.protocol import DEFAULT_MAX_MESSAGE_BYTES
from dlhub_hpc.security.confine import host_pid
from dlhub_hpc.servable.pools import DEFAULT_BUDGET, pool_of
from dlhub_hpc.servable.spec import parse_ref
from dlhub_hpc.worker.gpu import GPU_ENVS, GpuBinding
from dlhub_hpc.worker.loop import Worker, WorkerOptions, install_signal_handlers
from dlhub_hpc.worker.models import PoolRunner
from dlhub_hpc.worker.runner import LocalRunner, Runner

logger = logging.getLogger(__name__)

MPI_ENV = "DLHUB_HPC_MPI"  # "1": as --mpi, for launchers that cannot add flags


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dlhub_hpc.worker")
    parser.add_argument("--hub", required=True, help="the hub's worker address")
    parser.add_argument("--servable", required=True,
                        help="owner/name[@version], or pool:SPEC for a pooled worker (SPEC: "
                             "owner:NAME, tag:TAG, public, or owner/a,owner/b)")
    parser.add_argument("--memory-budget", type=int, default=DEFAULT_BUDGET, metavar="BYTES",
                        help="a pooled worker's bytes of loaded models; past it the least "
                             "recently used are evicted")
    parser.add_argument("--block", default=None, help="the pilot block this worker belongs to")
    parser.add_argument("--image", default="", metavar="IMAGE",
                        help="the container image this worker runs in (its pilot sets it): "
                             "a pooled worker tells the hub, which gives it a servable with "
                             "an image of its own only when it runs that image")
    parser.add_argument("--heartbeat-interval", type=float, default=1.0)
    parser.add_argument("--hub-timeout", type=float, default=30.0)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--credential", type=Path, default=None, metavar="FILE",
                        help="the worker credential the hub issued (/dev/fd/N: read once)")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", default="text", choices=LOG_FORMATS,
                        help="json: one JSON object a line, with the request ids of each item")
    parser.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                        help="largest result message to send (the hub's "
                             "worker_max_message_bytes); larger outputs become item errors")
    parser.add_argument("--mpi", action="store_true", default=os.environ.get(MPI_ENV) == "1",
                        help=f"one worker over every rank of MPI_COMM_WORLD (or {MPI_ENV}=1)")
    parser.add_argument("--drain-after", type=float, default=None, metavar="SECONDS",
                        help="stop taking work this long after start, finish, and exit")
    parser.add_argument("--drain-grace", type=float, default=10.0, metavar="SECONDS",
                        help="how long a draining worker waits for the hub to release it")
    parser.add_argument("--gpus", default=None, metavar="LIST",
                        help="GPU ids on the node, e.g. 0,1,2,3; the local rank picks one")
    parser.add_argument("--gpu-env", default="CUDA_VISIBLE_DEVICES", choices=GPU_ENVS)
    parser.add_argument("--workers-per-gpu", type=int, default=1, metavar="K")
    parser.add_argument("--local-rank", type=int, default=None,
                        help="this worker's rank on its node (default: from the launcher)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format,
                  text_format="%(asctime)s %(levelname)s %(name)s [worker %(process)d] "
                              "%(message)s")
    try:
        return _serve(args)
    except DlhubHpcError as exc:
        logger.error("%s", exc.message)
        return 2


def _serve(args: argparse.Namespace) -> int:
    binding = None
    if args.gpus is not None:  # before any import of the model can touch a device
        binding = GpuBinding.from_flags(
            args.gpus, args.gpu_env, args.workers_per_gpu, args.local_rank
        ).apply()
    pool = pool_of(args.servable, args.memory_budget)
    if pool is not None and args.image:
        pool = pool.in_image(args.image)
    if pool is not None and args.mpi:
        raise ConfigError("a pooled worker runs in one process; start MPI servables with "
                          "their own pilot ('dlhub-hpc pilot start OWNER/NAME')")
    name, version = (args.servable, None) if pool else parse_ref(args.servable)
    opts = WorkerOptions(
        hub=args.hub, servable=name, version=version, block=args.block, pool=pool,
        heartbeat_interval=args.heartbeat_interval, hub_timeout=args.hub_timeout,
        drain_after=args.drain_after, drain_grace=args.drain_grace,
        max_message_bytes=args.max_message_bytes,
        credential=args.credential, pid=host_pid(), settle_heap=True,
    )
    if args.cache_dir is not None:
        opts.cache_dir = args.cache_dir
    runner: Runner = (LocalRunner(opts.cache_dir) if pool is None
                      else PoolRunner(opts.cache_dir, pool.budget))
    if args.mpi:
        from dlhub_hpc.worker.mpi import MpiRunner, follow, world

        comm = world()
        # Rank 0 reports the devices of every rank (each bound itself from its local rank).
        devices = comm.gather(binding["devices"] if binding else None, root=0)
        if comm.Get_rank() != 0:
            return follow(comm, opts.cache_dir)
        if binding is not None:
            binding["devices"] = ",".join(dict.fromkeys(d for d in devices if d))
        runner = MpiRunner(comm, opts.cache_dir)
    opts.binding = binding
    worker = Worker(opts, runner)
    install_signal_handlers(worker)
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
