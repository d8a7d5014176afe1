"""Pilot blocks: groups of warm workers started, watched and stopped through a Parsl provider.

Any Parsl ``ExecutionProvider`` works (``LocalProvider`` here; ``SlurmProvider`` and
``PBSProProvider`` through site profiles): a block is one ``provider.submit`` of the worker
command with ``tasks_per_node`` workers, and stopping it is ``provider.cancel``.
"""

from __future__ import annotations

import itertools
import logging
import shlex
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from parsl.providers.base import ExecutionProvider

from dlhub_hpc.errors import PilotError
from dlhub_hpc.pilot.recovery import Journal, skip_ids
from dlhub_hpc.security.isolation import WorkerLaunch

logger = logging.getLogger(__name__)


@dataclass
class Block:
    block_id: str
    job_id: str
    servable: str
    workers: int
    submitted_at: float
    state: str = "PENDING"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PilotManager:
    """Starts blocks of workers for servables through one Parsl provider."""

    def __init__(
        self,
        provider: ExecutionProvider,
        hub_address: str,
        run_dir: Path,
        *,
        python: str = sys.executable,
        heartbeat_interval: float = 1.0,
        hub_timeout: float = 30.0,
    ) -> None:
        self.provider = provider
        self.hub_address = hub_address
        self.run_dir = Path(run_dir)
        self.python = python
        self.heartbeat_interval = heartbeat_interval
        self.hub_timeout = hub_timeout
        self._blocks: dict[str, Block] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._provider_lock = threading.Lock()  # Parsl's providers are not thread-safe
        self.journal: Journal | None = None  # records blocks, for a hub restarted after a crash

    def __repr__(self) -> str:
        return (f"PilotManager(provider={type(self.provider).__name__}(...), "
                f"hub_address={self.hub_address!r}, run_dir={str(self.run_dir)!r})")

    def worker_command(self, servable: str, block_id: str,
                       launch: WorkerLaunch | None = None) -> str:
        """The command each worker of a block runs (on the compute node, in its environment),
        confined and credentialed as ``launch`` says (``None``: bare, no credential)."""
        args = [
            self.python, "-m", "dlhub_hpc.worker",
            "--hub", self.hub_address,
            "--servable", servable,
            "--block", block_id,
            "--heartbeat-interval", str(self.heartbeat_interval),
            "--hub-timeout", str(self.hub_timeout),
        ]
        return shlex.join(args) if launch is None else launch.command(args, self.python)

    def start_workers(self, servable: str, workers: int,
                      launch: WorkerLaunch | None = None) -> Block:
        """Submit one block running ``workers`` workers for ``servable``."""
        if workers < 1:
            raise PilotError(f"a block needs at least one worker, not {workers}")
        block_id = f"block-{next(self._ids)}"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.provider.script_dir = str(self.run_dir)
        command = self.worker_command(servable, block_id, launch)
        try:
            with self._provider_lock:
                job_id = self.provider.submit(command, workers, job_name=f"dlhub.{block_id}")
        except Exception as exc:
            raise PilotError(
                f"{self.provider.label} could not start {workers} workers for {servable}: {exc}",
                servable=servable,
            ) from exc
        if job_id is None:
            raise PilotError(f"{self.provider.label} is at capacity; no block was started")
        block = Block(block_id, str(job_id), servable, workers, time.time())
        with self._lock:
            self._blocks[block_id] = block
        if self.journal is not None:
            self.journal.block_started(self.provider, "", block_id, servable, block.job_id,
                                       workers)
        logger.info("started %s (job %s): %d workers for %s", block_id, job_id, workers, servable)
        return block

    def blocks(self) -> list[Block]:
        """Every block, with its state as the provider reports it now."""
        with self._lock:
            blocks = list(self._blocks.values())
        if blocks:
            try:
                with self._provider_lock:
                    states = self.provider.status([b.job_id for b in blocks])
                for block, status in zip(blocks, states, strict=True):
                    block.state = status.state.name
            except Exception:
                logger.warning("could not read block states from %s", self.provider.label,
                               exc_info=True)
        return blocks

    def stop(self, block_ids: list[str] | None = None, servable: str | None = None) -> list[Block]:
        """Cancel the named blocks, or those serving ``servable``, or (with neither) all."""
        with self._lock:
            chosen = [
                b for b in self._blocks.values()
                if (block_ids is None or b.block_id in block_ids)
                and (servable is None or b.servable == servable)
            ]
            unknown = set(block_ids or []) - {b.block_id for b in chosen}
            if unknown:
                raise PilotError(f"no such blocks: {sorted(unknown)}; see 'dlhub-hpc status'")
            for b in chosen:
                del self._blocks[b.block_id]
        if chosen:
            with self._provider_lock:
                self.provider.cancel([b.job_id for b in chosen])
            for b in chosen:
                b.state = "CANCELLED"
            logger.info("stopped %s", [b.block_id for b in chosen])
            if self.journal is not None:
                self.journal.blocks_ended([b.block_id for b in chosen])
        return chosen

    def adopt(self, block: Block) -> None:
        """Track a block a previous hub submitted (its job adopted into our provider)."""
        with self._lock:
            self._blocks[block.block_id] = block
            skip_ids(self._ids, list(self._blocks))
