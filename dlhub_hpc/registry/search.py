"""Search over published servables with SQLite FTS5, ranked by bm25, plus exact filters.

Free text covers titles, descriptions, creators, domains, subjects, method descriptions
and DOIs; filters narrow by owner, domain, shim type, DOI and publication date. Only the
version ``owner/name`` resolves to is returned for each servable.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from datetime import date, datetime, timezone

from pydantic import BaseModel, ConfigDict, Field

from dlhub_hpc.errors import SpecError
from dlhub_hpc.servable.datacite import normalize_doi
from dlhub_hpc.servable.spec import ServableSpec

logger = logging.getLogger(__name__)

_TEXT_COLUMNS = ("name", "title", "description", "creators", "domains", "subjects",
                 "methods", "dois")
# bm25 weights, one per column above: a title hit counts more than a method summary hit.
_WEIGHTS = (4.0, 8.0, 2.0, 3.0, 3.0, 3.0, 1.0, 5.0)

_SCHEMA = f"""
CREATE VIRTUAL TABLE IF NOT EXISTS servable_text USING fts5(
    {", ".join(_TEXT_COLUMNS)}, tokenize = "unicode61 tokenchars '._-/'"
);
CREATE TABLE IF NOT EXISTS servable_facets (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    owner TEXT NOT NULL,
    type TEXT NOT NULL,
    domains TEXT NOT NULL,
    dois TEXT NOT NULL,
    year INTEGER,
    published_on TEXT NOT NULL,
    UNIQUE (name, version)
);
"""


class SearchQuery(BaseModel):
    """What to look for; every field is optional and they combine with AND."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = ""
    owner: str | None = None
    domain: str | None = None
    type: str | None = None
    doi: str | None = None
    published_after: date | None = None
    published_before: date | None = None
    limit: int = Field(default=20, ge=1, le=1000)


def create_index(db: sqlite3.Connection) -> None:
    db.executescript(_SCHEMA)


def index_version(db: sqlite3.Connection, name: str, version: int, spec: ServableSpec) -> None:
    """Add one published version to the index (inside the caller's transaction)."""
    dc = spec.datacite
    dois = dc.dois()
    cur = db.execute(
        "INSERT INTO servable_facets (name, version, owner, type, domains, dois, year, "
        "published_on) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (name, version, spec.dlhub.owner, spec.servable.type,
         json.dumps([d.lower() for d in spec.dlhub.domains]), json.dumps(dois),
         dc.publication_year, datetime.now(timezone.utc).date().isoformat()),
    )
    methods = " ".join(
        f"{m} {s.description} {s.input.description} {s.output.description}"
        for m, s in spec.servable.methods.items()
    )
    creators = " ".join(
        f"{c.name} {' '.join(c.affiliations)} {c.orcid or ''}" for c in dc.creators
    )
    db.execute(
        f"INSERT INTO servable_text (rowid, {', '.join(_TEXT_COLUMNS)}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (cur.lastrowid, name.replace("/", " "), dc.title,
         f"{dc.description} {spec.servable.model_summary}", creators,
         " ".join(spec.dlhub.domains), " ".join(dc.subjects), methods, " ".join(dois)),
    )


def match_expression(text: str) -> str:
    """Free text as an FTS5 query: every word must occur (in any indexed field).

    Words are quoted, so punctuation in them (DOIs, ORCIDs) is not FTS5 syntax; a
    trailing ``*`` keeps its prefix meaning.
    """
    terms = []
    for word in text.replace("\0", " ").split():  # FTS5 ends a string at NUL
        prefix = word.endswith("*") and len(word) > 1
        core = word.rstrip("*").replace('"', '""')
        if core:
            terms.append(f'"{core}"' + ("*" if prefix else ""))
    return " ".join(terms)


def run(db: sqlite3.Connection, query: SearchQuery) -> list[tuple[str, int, float]]:
    """(name, version, rank) of matching servables, best first (unlimited: callers filter
    by access before they cut to ``query.limit``)."""
    where = [
        "f.version = (SELECT s.version FROM servables s WHERE s.name = f.name "
        "ORDER BY s.status = 'withdrawn', s.version DESC LIMIT 1)"
    ]
    params: list[object] = []
    if query.owner:
        where.append("f.owner = ?")
        params.append(query.owner)
    if query.type:
        where.append("f.type = ?")
        params.append(query.type)
    if query.domain:
        where.append("EXISTS (SELECT 1 FROM json_each(f.domains) WHERE value = ?)")
        params.append(query.domain.lower())
    if query.doi:
        try:
            doi = normalize_doi(query.doi)
        except ValueError as exc:
            raise SpecError(str(exc)) from None
        where.append("EXISTS (SELECT 1 FROM json_each(f.dois) WHERE value = ?)")
        params.append(doi)
    if query.published_after:
        where.append("f.published_on >= ?")
        params.append(query.published_after.isoformat())
    if query.published_before:
        where.append("f.published_on <= ?")
        params.append(query.published_before.isoformat())
    expression = match_expression(query.text)
    if expression:
        weights = ", ".join(str(w) for w in _WEIGHTS)
        sql = (f"SELECT f.name, f.version, bm25(servable_text, {weights}) AS rank "
               "FROM servable_text JOIN servable_facets f ON f.id = servable_text.rowid "
               f"WHERE servable_text MATCH ? AND {' AND '.join(where)} ORDER BY rank, f.name")
        params.insert(0, expression)
    else:
        sql = (f"SELECT f.name, f.version, 0.0 FROM servable_facets f "
               f"WHERE {' AND '.join(where)} ORDER BY f.name")
    try:
        rows = db.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        raise SpecError(f"cannot search for {query.text!r}: {exc}") from exc
    return [(r[0], int(r[1]), float(r[2])) for r in rows]
