"""The publication store: servable versions in SQLite, bundles content-addressed on disk.

Keep the store on a local disk (never Lustre or GPFS: SQLite's locks are unreliable there).
Versions count up from 1 per ``owner/name`` and never change once stored; publishing the
same bundle as the latest version again returns that version rather than making a new one.
A version can be deprecated (still runs) or withdrawn (no longer runs); either way it stays
resolvable and its record says why. ``owner/name`` alone resolves to the latest version that
is not withdrawn. Bundles are stored under their sha256 and checked against it on every load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from builtins import list as List  # Registry.list shadows the builtin in the class
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dlhub_hpc.errors import (
    BundleDigestMismatch,
    ServableNotFound,
    ServableWithdrawn,
    SpecError,
)
from dlhub_hpc.registry import search
from dlhub_hpc.registry.identifiers import persistent_id
from dlhub_hpc.servable.bundle import Bundle
from dlhub_hpc.servable.spec import ServableSpec

logger = logging.getLogger(__name__)

Status = Literal["active", "deprecated", "withdrawn"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS servables (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    digest TEXT NOT NULL,
    spec TEXT NOT NULL,
    published_at REAL NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS servable_owners (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    visible_to TEXT NOT NULL
);
"""
# Columns added after the first release; old stores gain them on open.
_ADDED_COLUMNS = {
    "publisher": "TEXT NOT NULL DEFAULT ''",
    "status": "TEXT NOT NULL DEFAULT 'active'",
    "reason": "TEXT NOT NULL DEFAULT ''",
    "replacement": "TEXT",
    "status_at": "REAL",
}
_COLUMNS = ("name, version, digest, spec, published_at, publisher, status, reason, "
            "replacement, status_at")


@dataclass(frozen=True)
class ServableRecord:
    name: str
    version: int
    digest: str
    spec: ServableSpec
    published_at: float
    publisher: str = ""
    status: Status = "active"
    reason: str = ""
    replacement: str | None = None
    owner: str = ""
    visible_to: list[str] = field(default_factory=lambda: ["public"])

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def pid(self) -> str:
        """The persistent identifier: ``owner/name@version#sha256:DIGEST``."""
        return persistent_id(self.name, self.version, self.digest)

    def to_dict(self) -> dict[str, Any]:
        """Everything ``describe`` shows, as plain JSON values."""
        return {
            "name": self.name, "version": self.version, "ref": self.ref, "pid": self.pid,
            "digest": self.digest, "published_at": self.published_at,
            "publisher": self.publisher, "owner": self.owner, "visible_to": self.visible_to,
            "status": self.status, "reason": self.reason, "replacement": self.replacement,
            "dois": self.spec.datacite.dois(), "spec": self.spec.model_dump(mode="json"),
        }


class Registry:
    """Servable versions and their bundles under ``root`` (``registry.sqlite``, ``bundles/``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"Registry(root={str(self.root)!r})"

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            (self.root / "bundles").mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.root / "registry.sqlite", check_same_thread=False)
            db.executescript(_SCHEMA)
            have = {row[1] for row in db.execute("PRAGMA table_info(servables)")}
            for column, decl in _ADDED_COLUMNS.items():
                if column not in have:
                    db.execute(f"ALTER TABLE servables ADD COLUMN {column} {decl}")
            search.create_index(db)
            db.commit()
            self._db = db
        return self._db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The lock and one SQLite transaction (for the access module's tables too)."""
        with self._lock, self.db:
            yield self.db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _bundle_path(self, digest: str) -> Path:
        return self.root / "bundles" / f"{digest}.tar"

    def publish(self, bundle: Bundle, publisher: str = "") -> ServableRecord:
        """Store a bundle as the next version of its servable (or return the same latest one).

        The first publisher of a name owns it; its visibility starts as the spec's
        ``dlhub.visible_to``. Callers check that ``publisher`` may publish under the name.
        """
        name = bundle.spec.full_name
        digest = bundle.digest
        with self.transaction() as db:
            row = db.execute(
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
            db.execute(
                f"INSERT INTO servables ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 'active', '', "
                "NULL, NULL)",
                (name, version, digest, bundle.spec.model_dump_json(), time.time(), publisher),
            )
            db.execute(
                "INSERT OR IGNORE INTO servable_owners VALUES (?, ?, ?)",
                (name, publisher, json.dumps(bundle.spec.dlhub.visible_to)),
            )
            search.index_version(db, name, version, bundle.spec)
        logger.info("published %s@%s (%s)", name, version, digest[:12])
        return self.get(name, version)

    def get(self, name: str, version: int | None = None) -> ServableRecord:
        """The record for ``name`` at ``version`` (None: the latest not withdrawn)."""
        with self._lock:
            return self._get_locked(name, version)

    def resolve(self, name: str, version: int | None = None) -> ServableRecord:
        """The record to *run*: like ``get``, but a withdrawn version is ``ServableWithdrawn``."""
        record = self.get(name, version)
        if record.status == "withdrawn":
            instead = f"; use {record.replacement} instead" if record.replacement else ""
            raise ServableWithdrawn(
                f"{record.ref} was withdrawn: {record.reason}{instead}",
                servable=record.name, version=record.version, reason=record.reason,
                replacement=record.replacement,
            )
        if record.status == "deprecated":
            logger.warning("%s is deprecated: %s", record.ref, record.reason)
        return record

    def _get_locked(self, name: str, version: int | None) -> ServableRecord:
        base = f"SELECT {_COLUMNS} FROM servables WHERE name=?"
        if version is None:
            row = self.db.execute(
                base + " ORDER BY status='withdrawn', version DESC LIMIT 1", (name,)
            ).fetchone()
        else:
            row = self.db.execute(base + " AND version=?", (name, version)).fetchone()
        if row is None:
            raise self._not_found(name, version)
        owner_row = self.db.execute(
            "SELECT owner, visible_to FROM servable_owners WHERE name=?", (name,)
        ).fetchone()
        owner, visible = owner_row if owner_row else (row[5], '["public"]')
        return ServableRecord(
            name=row[0], version=row[1], digest=row[2],
            spec=ServableSpec.model_validate(json.loads(row[3])), published_at=row[4],
            publisher=row[5], status=row[6], reason=row[7], replacement=row[8],
            owner=owner, visible_to=json.loads(visible),
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

    def set_status(
        self, name: str, version: int, status: Status, reason: str,
        replacement: str | None = None,
    ) -> ServableRecord:
        """Deprecate or withdraw one version (or make it active again); the record stays."""
        if status != "active" and not reason.strip():
            raise SpecError(f"say why {name}@{version} is {status}: give a reason")
        with self.transaction() as db:
            self._get_locked(name, version)  # ServableNotFound, with the versions, if unknown
            db.execute(
                "UPDATE servables SET status=?, reason=?, replacement=?, status_at=? "
                "WHERE name=? AND version=?",
                (status, reason, replacement, time.time(), name, version),
            )
        logger.info("%s@%s is now %s: %s", name, version, status, reason)
        return self.get(name, version)

    def set_visibility(self, name: str, visible_to: list[str]) -> ServableRecord:
        with self.transaction() as db:
            record = self._get_locked(name, None)
            db.execute(
                "UPDATE servable_owners SET visible_to=? WHERE name=?",
                (json.dumps(visible_to), name),
            )
        logger.info("%s is now visible to %s", name, visible_to)
        return record

    def access_rules(self) -> dict[str, tuple[str, list[str]]]:
        """Every servable's (owner, visible_to), for the hub's per-request access check."""
        with self._lock:
            rows = self.db.execute("SELECT name, owner, visible_to FROM servable_owners")
            return {r[0]: (r[1], json.loads(r[2])) for r in rows}

    def bundle_bytes(self, digest: str) -> bytes:
        """The bundle stored under ``digest``; its content must hash to that digest."""
        path = self._bundle_path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise SpecError(f"bundle {digest} is missing from {path.parent}") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise BundleDigestMismatch(
                f"bundle {path} hashes to sha256 {actual}, not the recorded {digest}; it was "
                "changed or corrupted on disk. Republish the servable from its directory",
                expected=digest, actual=actual, path=str(path),
            )
        return data

    def list(self) -> list[ServableRecord]:
        """The latest version of every servable, by name."""
        with self._lock:
            names = [r[0] for r in self.db.execute("SELECT DISTINCT name FROM servables")]
            return [self._get_locked(n, None) for n in sorted(names)]

    def versions(self, name: str) -> List[ServableRecord]:
        with self._lock:
            rows = self.db.execute(
                "SELECT version FROM servables WHERE name=? ORDER BY version", (name,)
            ).fetchall()
            if not rows:
                raise self._not_found(name, None)
            return [self._get_locked(name, r[0]) for r in rows]

    def search(self, query: search.SearchQuery) -> List[tuple[ServableRecord, float]]:
        """Latest versions matching ``query``, best first, with their rank (lower is better)."""
        with self._lock:
            hits = search.run(self.db, query)
            return [(self._get_locked(name, version), rank) for name, version, rank in hits]
