"""Image records: one bundle published as two versions keeps both images."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from dlhub_hpc.registry.images import ImageRecord, ImageStore


def _rec(version: int, path: str) -> ImageRecord:
    return ImageRecord("alice/oqmd", version, "b" * 64, "r" * 64, "sif", path, "s" * 64,
                       float(version))


def test_same_recipe_for_two_versions_keeps_both_records(tmp_path: Path) -> None:
    # v2 re-publishes v1's bundle (a metadata fix): same recipe digest, same image file.
    # Recording v2's image must not drop v1's, or 'pilot start alice/oqmd@1' finds none.
    with ImageStore(tmp_path) as store:
        store.record(_rec(1, "/img/a.sif"))
        store.record(_rec(2, "/img/a.sif"))
        assert [r.version for r in store.find("alice/oqmd", 1)] == [1]
        assert [r.version for r in store.find("alice/oqmd", 2)] == [2]


def test_old_registry_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "registry.sqlite")
    db.executescript("""
CREATE TABLE images (
    servable TEXT NOT NULL,
    version INTEGER NOT NULL,
    bundle_digest TEXT NOT NULL,
    recipe_digest TEXT NOT NULL,
    format TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    built_at REAL NOT NULL,
    PRIMARY KEY (recipe_digest, format)
);
CREATE INDEX IF NOT EXISTS images_by_servable ON images (servable, version);
""")
    db.execute("INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
               tuple(_rec(1, "/img/a.sif").__dict__.values()))
    db.commit()
    db.close()
    with ImageStore(tmp_path) as store:
        store.record(_rec(2, "/img/a.sif"))
        assert [r.version for r in store.find("alice/oqmd", 1)] == [1]
        assert [r.version for r in store.find("alice/oqmd", 2)] == [2]
    with ImageStore(tmp_path) as store:  # opening again: nothing left to migrate
        assert len(store.by_recipe("r" * 64)) == 2
