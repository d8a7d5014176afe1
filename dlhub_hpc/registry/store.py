"""The publication store: servable versions in SQLite, bundles content-addressed on disk.

Keep the store on a local disk (never Lustre or GPFS: SQLite's locks are unreliable there).
Versions count up from 1 per ``owner/name``; publishing the same bundle as the latest
version again returns that version rather than making a new one.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dlhub_hpc.errors import ServableNotFound, SpecError
from dlhub_hpc.servable.bundle import Bundle
from dlhub_hpc.servable.spec import ServableSpec

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS servables (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    digest TEXT NOT NULL,
    spec TEXT NOT NULL,
    published_at REAL NOT NULL,
    PRIMARY KEY (name, version)
);
"""


@dataclass(frozen=True)
class ServableRecord:
    name: str
    version: int
    digest: str
    spec: ServableSpec
    published_at: float

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class Registry:
    """Servable versions and their bundles under ``root`` (``registry.sqlite``, ``bundles/``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Registry(root={str(self.root)!r})"

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            (self.root / "bundles").mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.root / "registry.sqlite", check_same_thread=False)
            self._db.executescript(_SCHEMA)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _bundle_path(self, digest: str) -> Path:
        return self.root / "bundles" / f"{digest}.tar"

    def publish(self, bundle: Bundle) -> ServableRecord:
        """Store a bundle as the next version of its servable (or return the same latest one)."""
        name = bundle.spec.full_name
        digest = bundle.digest
        with self._lock, self.db:
            row = self.db.execute(
                "SELECT version, digest FROM servables WHERE name=? ORDER BY version DESC LIMIT 1",
                (name,),
            ).fetchone()
            if row is not None and row[1] == digest:
                logger.info("%s is unchanged; keeping version %s", name, row[0])
                return self._get_locked(name, row[0])
            path = self._bundle_path(digest)
            if not path.exists():
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(bundle.data)
                tmp.replace(path)
            version = 1 if row is None else row[0] + 1
            self.db.execute(
                "INSERT INTO servables VALUES (?, ?, ?, ?, ?)",
                (name, version, digest, bundle.spec.model_dump_json(), time.time()),
            )
        logger.info("published %s@%s (%s)", name, version, digest[:12])
        return self.get(name, version)

    def get(self, name: str, version: int | None = None) -> ServableRecord:
        """The record for ``name`` at ``version`` (None: the latest)."""
        with self._lock:
            return self._get_locked(name, version)

    def _get_locked(self, name: str, version: int | None) -> ServableRecord:
        if version is None:
            row = self.db.execute(
                "SELECT * FROM servables WHERE name=? ORDER BY version DESC LIMIT 1", (name,)
            ).fetchone()
        else:
            row = self.db.execute(
                "SELECT * FROM servables WHERE name=? AND version=?", (name, version)
            ).fetchone()
        if row is None:
            raise self._not_found(name, version)
        return ServableRecord(
            name=row[0],
            version=row[1],
            digest=row[2],
            spec=ServableSpec.model_validate(json.loads(row[3])),
            published_at=row[4],
        )

    def _not_found(self, name: str, version: int | None) -> ServableNotFound:
        versions = [
            r[0] for r in self.db.execute(
                "SELECT version FROM servables WHERE name=? ORDER BY version", (name,)
            )
        ]
        if versions:
            return ServableNotFound(
                f"{name} has no version {version}; published versions: {versions}",
                servable=name, version=version, versions=versions,
            )
        return ServableNotFound(
            f"no servable named {name!r} is published; publish it with "
            "'dlhub-hpc publish DIR' or check 'dlhub-hpc status'",
            servable=name,
        )

    def bundle_bytes(self, digest: str) -> bytes:
        path = self._bundle_path(digest)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise SpecError(f"bundle {digest} is missing from {path.parent}") from None

    def list(self) -> list[ServableRecord]:
        """The latest version of every servable, by name."""
        with self._lock:
            names = [r[0] for r in self.db.execute("SELECT DISTINCT name FROM servables")]
            return [self._get_locked(n, None) for n in sorted(names)]
