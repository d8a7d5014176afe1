"""Pilot and block records: what a hub submitted to a scheduler, so a restarted hub finds it.

A block's row is written when it is submitted and deleted when it is cancelled or ends; a
pilot's row (its site profile as data) lives from ``pilot start`` to ``pilot stop``. After a
crash, the hub re-adopts the jobs still running, or cancels them (``dlhub_hpc/pilot/recovery.py``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from dlhub_hpc.registry.store import Registry

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pilots (
    pilot_id TEXT PRIMARY KEY,
    servable TEXT NOT NULL,
    profile TEXT NOT NULL,
    nodes INTEGER,
    started_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pilot_blocks (
    block_id TEXT PRIMARY KEY,
    pilot_id TEXT NOT NULL,
    servable TEXT NOT NULL,
    job_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    workers INTEGER NOT NULL,
    submitted_at REAL NOT NULL,
    resources TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class BlockRecord:
    """One submitted block. ``pilot_id`` is '' for a block of ``workers start``."""

    block_id: str
    pilot_id: str
    servable: str
    job_id: str
    provider: str  # the Parsl provider's class name
    workers: int
    submitted_at: float
    resources: dict[str, Any] = field(default_factory=dict)  # the provider's own job record


@dataclass(frozen=True)
class PilotRecord:
    pilot_id: str
    servable: str
    profile: dict[str, Any]  # the SiteProfile as data
    nodes: int | None
    started_at: float


class PilotRecords:
    """The ``pilots`` and ``pilot_blocks`` tables of a registry."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        with registry.transaction() as db:
            db.executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"PilotRecords({self.registry!r})"

    def add_block(self, rec: BlockRecord) -> None:
        with self.registry.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO pilot_blocks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (rec.block_id, rec.pilot_id, rec.servable, rec.job_id, rec.provider,
                 rec.workers, rec.submitted_at, json.dumps(rec.resources)))

    def remove_blocks(self, block_ids: list[str]) -> None:
        with self.registry.transaction() as db:
            db.executemany("DELETE FROM pilot_blocks WHERE block_id=?",
                           [(b,) for b in block_ids])

    def blocks(self, pilot_id: str | None = None) -> list[BlockRecord]:
        """Every recorded block, or those of one pilot ('' for ``workers start`` blocks)."""
        query = "SELECT * FROM pilot_blocks"
        params: tuple[str, ...] = ()
        if pilot_id is not None:
            query, params = query + " WHERE pilot_id=?", (pilot_id,)
        with self.registry.transaction() as db:
            rows = db.execute(query + " ORDER BY submitted_at", params).fetchall()
        return [BlockRecord(row[0], row[1], row[2], row[3], row[4], row[5], row[6],
                            json.loads(row[7])) for row in rows]

    def add_pilot(self, rec: PilotRecord) -> None:
        with self.registry.transaction() as db:
            db.execute("INSERT OR REPLACE INTO pilots VALUES (?, ?, ?, ?, ?)",
                       (rec.pilot_id, rec.servable, json.dumps(rec.profile), rec.nodes,
                        rec.started_at))

    def remove_pilot(self, pilot_id: str) -> None:
        """Forget a pilot and its blocks."""
        with self.registry.transaction() as db:
            db.execute("DELETE FROM pilots WHERE pilot_id=?", (pilot_id,))
            db.execute("DELETE FROM pilot_blocks WHERE pilot_id=?", (pilot_id,))

    def pilots(self) -> list[PilotRecord]:
        with self.registry.transaction() as db:
            rows = db.execute("SELECT * FROM pilots ORDER BY started_at").fetchall()
        return [PilotRecord(r[0], r[1], json.loads(r[2]), r[3], r[4]) for r in rows]
