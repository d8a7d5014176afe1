"""MPI servables: one worker spread over the ranks of one ``MPI_COMM_WORLD`` (mpi4py).

Rank 0 is an ordinary worker towards the hub; it drives the other ranks with small
commands: ``load`` (every rank unpacks and loads the servable), ``run`` (a share of the
batch) and ``stop``. A batch is either split by rows (each rank runs a contiguous slice,
rank 0 gathers the slices in order) or, for an ensemble servable, run whole on every rank
as one member (``DLHUB_HPC_RANK`` tells the model which) and combined on rank 0.

Waiting ranks poll with ``iprobe`` and a short sleep instead of a blocking receive: Open
MPI busy-waits in a blocking receive, which would steal a core from the model.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np

from dlhub_hpc.errors import ConfigError, ExecutionError, ServableLoadError
from dlhub_hpc.protocol import Assign
from dlhub_hpc.servable.shims import Shim
from dlhub_hpc.servable.shims.calling import ItemParameters
from dlhub_hpc.servable.spec import ServableSpec
from dlhub_hpc.worker.runner import Runner, WireResult, check_ranks, load_assigned, run_shim

logger = logging.getLogger(__name__)

CMD, RESULT = 11, 12  # message tags: rank 0 -> others, others -> rank 0
RANK_ENV, RANKS_ENV = "DLHUB_HPC_RANK", "DLHUB_HPC_RANKS"
_MAX_SLEEP = 0.002  # seconds between polls when idle: ~2 ms added latency at most


def member() -> tuple[int, int]:
    """``(rank, ranks)`` of this process in its MPI worker: an ensemble member's index."""
    return int(os.environ.get(RANK_ENV, "0")), int(os.environ.get(RANKS_ENV, "1"))


def world() -> Any:
    """``MPI.COMM_WORLD``, with a clear error when mpi4py or its MPI library is missing."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ConfigError(
            f"--mpi needs mpi4py and an MPI library ({exc}); pip install 'dlhub-hpc[mpi]' "
            "and load your site's MPI module"
        ) from None
    comm = MPI.COMM_WORLD
    os.environ[RANK_ENV], os.environ[RANKS_ENV] = str(comm.Get_rank()), str(comm.Get_size())
    return comm


def _recv(comm: Any, source: int, tag: int) -> Any:
    """A receive that sleeps between polls instead of spinning."""
    delay = 1e-5
    while not comm.iprobe(source=source, tag=tag):
        time.sleep(delay)
        delay = min(delay * 2, _MAX_SLEEP)
    return comm.recv(source=source, tag=tag)


def split(payloads: list[Any], parts: int) -> list[list[Any]]:
    """Contiguous, nearly equal slices, one per rank (the first ones one longer)."""
    size, extra = divmod(len(payloads), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(payloads[start:end])
        start = end
    return out


def combine(members: list[list[WireResult]], how: str) -> list[WireResult]:
    """Per item: the mean of the members' values (or the list of them); any error wins."""
    combined: list[WireResult] = []
    for item in zip(*members, strict=True):
        failed = next((r for r in item if not r[0]), None)
        if failed is not None:
            combined.append(failed)
            continue
        values = [r[1] for r in item]
        if how == "list":
            combined.append([True, values])
            continue
        try:
            mean = np.mean(np.stack([np.asarray(v, dtype=float) for v in values]), axis=0)
        except (TypeError, ValueError) as exc:
            combined.append([False, ExecutionError(
                f"the ensemble members' outputs cannot be averaged ({exc}); return numbers "
                "or arrays of one shape, or declare 'ensemble: list'",
            ).to_wire()])
            continue
        as_array = isinstance(values[0], np.ndarray)
        combined.append([True, mean if as_array else mean.tolist()])
    return combined


class MpiRunner(Runner):
    """Rank 0's side: shares each batch over every rank of ``comm``."""

    def __init__(self, comm: Any, cache_dir: Path) -> None:
        self.comm = comm
        self.ranks = comm.Get_size()
        self.cache_dir = cache_dir
        self.shim: Shim | None = None
        self.ensemble: str | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"MpiRunner(ranks={self.ranks}, cache_dir={str(self.cache_dir)!r})"

    def _send_all(self, command: tuple[Any, ...]) -> None:
        for rank in range(1, self.ranks):
            self.comm.send(command, dest=rank, tag=CMD)

    def load(self, assign: Assign) -> ServableSpec:
        self._send_all(("load", assign.servable, assign.version, assign.digest,
                        assign.spec, assign.bundle))
        problems: list[str] = []
        spec: ServableSpec | None = None
        try:
            spec, self.shim = load_assigned(assign, self.cache_dir)
        except Exception as exc:
            problems.append(f"rank 0: {getattr(exc, 'message', exc)}")
        for rank in range(1, self.ranks):
            error = _recv(self.comm, rank, RESULT)
            if error is not None:
                problems.append(f"rank {rank}: {error}")
        if problems or spec is None:
            raise ServableLoadError("; ".join(problems), ranks=self.ranks)
        self.ensemble = spec.servable.ensemble
        check_ranks(spec, self.ranks)
        if spec.servable.ranks != self.ranks:
            logger.warning("%s declares %d ranks but runs on %d", spec.full_name,
                           spec.servable.ranks, self.ranks)
        return spec

    def run(self, method: str, payloads: list[Any],
            parameters: ItemParameters = None) -> list[WireResult]:
        assert self.shim is not None, "the hub sent a batch before the servable was loaded"
        if self.ensemble is not None:
            shares = [payloads] * self.ranks
            params: list[Any] = [parameters] * self.ranks
        else:
            shares = split(payloads, self.ranks)
            params = split(parameters, self.ranks) if parameters else [None] * self.ranks
        helpers = [rank for rank in range(1, self.ranks) if shares[rank]]  # small batches: fewer
        for rank in helpers:
            self.comm.send(("run", method, shares[rank], params[rank]), dest=rank, tag=CMD)
        # _run_share never raises: the helpers' results must be read
        parts = [_run_share(self.shim, method, shares[0], 0, params[0])]
        parts += [_recv(self.comm, rank, RESULT) for rank in helpers]
        if self.ensemble is not None:
            return combine(parts, self.ensemble)
        return [r for part in parts for r in part]

    def close(self) -> None:
        """Tell every other rank to exit; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._send_all(("stop",))


def follow(comm: Any, cache_dir: Path) -> int:
    """A rank other than 0: load when told, run its share of each batch, exit on ``stop``."""
    # Signals go to every rank at once (scancel, walltime); rank 0 decides, and sends stop.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    rank = comm.Get_rank()
    shim: Shim | None = None
    while True:
        command = _recv(comm, 0, CMD)
        kind = command[0]
        if kind == "stop":
            logger.debug("rank %d stops", rank)
            return 0
        if kind == "load":
            _, name, version, digest, spec, bundle = command
            try:
                _, shim = load_assigned(Assign(name, version, digest, spec, bundle), cache_dir)
                comm.send(None, dest=0, tag=RESULT)
            except Exception as exc:
                logger.error("rank %d cannot load %s@%s: %s", rank, name, version, exc)
                comm.send(str(getattr(exc, "message", exc)), dest=0, tag=RESULT)
        elif kind == "run":
            _, method, payloads, *rest = command  # rest: the items' parameters, if any
            results = _run_share(shim, method, payloads, rank, rest[0] if rest else None)
            try:
                comm.send(results, dest=0, tag=RESULT)
            except Exception as exc:  # an output pickle cannot carry: rank 0 still gets one
                logger.exception("rank %d cannot send its results", rank)
                error = ExecutionError(f"MPI rank {rank} cannot send its results to rank 0: "
                                       f"{type(exc).__name__}: {exc}", rank=rank).to_wire()
                comm.send([[False, error] for _ in payloads], dest=0, tag=RESULT)


def _run_share(shim: Shim | None, method: str, payloads: list[Any], rank: int,
               parameters: ItemParameters = None) -> list[WireResult]:
    """This rank's share; whatever goes wrong, rank 0 gets one result per item (no hang)."""
    if not payloads:
        return []
    try:
        assert shim is not None, "rank 0 sent a batch before the servable was loaded"
        return run_shim(shim, method, payloads, parameters)
    except Exception as exc:
        logger.exception("rank %d failed its share of a batch", rank)
        error = ExecutionError(f"MPI rank {rank} failed: {type(exc).__name__}: {exc}",
                               rank=rank).to_wire()
        return [[False, error] for _ in payloads]
