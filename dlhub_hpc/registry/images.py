"""Image records: which container images were built for which servable version.

A table of its own (``images``) in the hub's ``registry.sqlite``. One row per image file
(format ``sif``, ``sqfs`` or ``dir``), keyed by the recipe digest, which covers everything
that went into the image (bundle digest, base, dependencies, dlhub-hpc's own code).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from dlhub_hpc.errors import ContainerError, ImageDigestMismatch

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    servable TEXT NOT NULL,
    version INTEGER NOT NULL,
    bundle_digest TEXT NOT NULL,
    recipe_digest TEXT NOT NULL,
    format TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    built_at REAL NOT NULL,
    PRIMARY KEY (recipe_digest, format, servable, version)
);
CREATE INDEX IF NOT EXISTS images_by_servable ON images (servable, version);
"""
# The first schema keyed rows by (recipe, format) alone: one bundle published as two versions
# (or names) shares a recipe, and recording the image for one dropped the other's row.
_OLD_KEY = "PRIMARY KEY (recipe_digest, format)\n"
_MIGRATE = """
ALTER TABLE images RENAME TO images_old;
DROP INDEX IF EXISTS images_by_servable;
""" + _SCHEMA + """
INSERT INTO images SELECT * FROM images_old;
DROP TABLE images_old;
"""

FORMATS = ("sif", "sqfs", "dir")


@dataclass(frozen=True)
class ImageRecord:
    servable: str
    version: int
    bundle_digest: str
    recipe_digest: str
    format: str
    path: str
    sha256: str
    built_at: float

    @property
    def ref(self) -> str:
        return f"{self.servable}@{self.version}"

    def verify(self) -> str:
        """The image's path, after checking its sha256 against this record."""
        path = Path(self.path)
        if not path.exists():
            raise ContainerError(
                f"image {path} for {self.ref} is gone; rebuild it with "
                f"'dlhub-hpc build {self.ref}'", path=str(path),
            )
        actual = file_digest(path) if self.format != "dir" else tree_digest(path)
        if actual != self.sha256:
            raise ImageDigestMismatch(
                f"image {path} for {self.ref} has sha256 {actual[:16]}..., but it was built as "
                f"{self.sha256[:16]}...; it was changed after the build and will not be run. "
                f"Rebuild it with 'dlhub-hpc build --force {self.ref}'",
                path=str(path), expected=self.sha256, actual=actual,
            )
        return str(path)


def _sha256_of(path: str | Path) -> hashlib._Hash:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h


def file_digest(path: Path) -> str:
    return _sha256_of(path).hexdigest()


def tree_digest(root: Path) -> str:
    """sha256 over a directory tree: each entry's path, type, mode, and content or target."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(
                os.path.join(dirpath, d))]):
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            h.update(f"{rel_dir}/{name}\0{st.st_mode:o}\0".encode())
            if os.path.islink(full):
                h.update(os.readlink(full).encode())
            elif os.path.isfile(full):
                h.update(_sha256_of(full).digest())
            h.update(b"\n")
    return h.hexdigest()


class ImageStore:
    """Image records in ``root/registry.sqlite`` (the hub's registry file)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ImageStore(root={str(self.root)!r})"

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.root / "registry.sqlite", check_same_thread=False, timeout=30
            )
            row = self._db.execute(
                "SELECT sql FROM sqlite_master WHERE type='table' AND name='images'").fetchone()
            if row is not None and _OLD_KEY in row[0]:
                self._db.executescript("BEGIN;" + _MIGRATE + "COMMIT;")
            self._db.executescript(_SCHEMA)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> ImageStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record(self, rec: ImageRecord) -> ImageRecord:
        with self._lock, self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (rec.servable, rec.version, rec.bundle_digest, rec.recipe_digest, rec.format,
                 rec.path, rec.sha256, rec.built_at),
            )
        logger.info("recorded %s image of %s: %s", rec.format, rec.ref, rec.path)
        return rec

    def by_recipe(self, recipe_digest: str) -> list[ImageRecord]:
        with self._lock:
            rows = self.db.execute(
                "SELECT * FROM images WHERE recipe_digest=? ORDER BY format", (recipe_digest,)
            ).fetchall()
        return [ImageRecord(*row) for row in rows]

    def find(self, servable: str, version: int, fmt: str | None = None) -> list[ImageRecord]:
        """Images of ``servable@version``, newest first (of one format, if given)."""
        query = "SELECT * FROM images WHERE servable=? AND version=?"
        args: tuple[object, ...] = (servable, version)
        if fmt is not None:
            query += " AND format=?"
            args += (fmt,)
        with self._lock:
            rows = self.db.execute(query + " ORDER BY built_at DESC", args).fetchall()
        return [ImageRecord(*row) for row in rows]

    def get(self, servable: str, version: int, fmt: str) -> ImageRecord:
        found = self.find(servable, version, fmt)
        if not found:
            have = sorted({r.format for r in self.find(servable, version)})
            raise ContainerError(
                f"no {fmt} image of {servable}@{version} is recorded"
                + (f" (there are: {have})" if have else "")
                + f"; build one with 'dlhub-hpc build {servable}@{version}'",
                servable=servable, version=version, format=fmt,
            )
        return found[0]


__all__ = ["FORMATS", "ImageRecord", "ImageStore", "file_digest", "tree_digest"]
