"""Which owners' pools may serve a servable besides its own owner's: pooling grants.

A pool mixes one owner's servables by default (``dlhub_hpc.servable.pools``). An owner (or
the admin) may allow other owners' pools to serve a servable too: ``user:NAME`` entries and
``group:NAME`` entries (members of a group the admin defines, as in visibility). A grant
lets those owners' worker processes run the servable's code, hold its model and see the
inputs of every caller of it; it does not change who may see or run it.

The grants live in the registry's SQLite file; the broker asks for every pooled dispatch,
so lookups are served from memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from dlhub_hpc.errors import ConfigError
from dlhub_hpc.registry.access import check_group, check_name
from dlhub_hpc.registry.store import Registry

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pool_grants (
    servable TEXT NOT NULL,
    grantee TEXT NOT NULL,
    PRIMARY KEY (servable, grantee)
);
"""


def grant_entry(text: str) -> str:
    """``bob`` or ``user:bob`` -> ``user:bob``; ``group:lab`` as it is; ``ConfigError`` for
    anything else (what a ``--allow`` or ``--deny`` may say)."""
    kind, sep, name = text.strip().partition(":")
    if not sep:
        kind, name = "user", kind
    if kind == "user":
        return f"user:{check_name(name, 'user')}"
    if kind == "group":
        return f"group:{check_group(name)}"
    raise ConfigError(f"a pooling entry is an owner's name (bob, or user:bob) or group:NAME, "
                      f"not {text!r}")


class PoolGrants:
    """Each servable's pooling grants; ``groups_of(user)`` says a user's groups."""

    def __init__(self, registry: Registry, groups_of: Callable[[str], Iterable[str]]) -> None:
        self.registry = registry
        self._groups_of = groups_of
        with registry.transaction() as db:
            db.executescript(_SCHEMA)
        self._grants: dict[str, frozenset[str]] = {}
        self.reload()

    def __repr__(self) -> str:
        return f"PoolGrants(registry={self.registry!r})"

    def reload(self) -> None:
        with self.registry.transaction() as db:
            rows = db.execute("SELECT servable, grantee FROM pool_grants").fetchall()
        found: dict[str, set[str]] = {}
        for servable, grantee in rows:
            found.setdefault(servable, set()).add(grantee)
        self._grants = {name: frozenset(entries) for name, entries in found.items()}

    def of(self, name: str) -> list[str]:
        """The entries that may pool ``name``, sorted."""
        return sorted(self._grants.get(name, ()))

    def allows(self, name: str, owner: str) -> bool:
        """May ``owner``'s pools serve ``name``? Its grants only; the servable's own owner
        and the admin are the caller's business."""
        granted = self._grants.get(name)
        if not granted:
            return False
        if f"user:{owner}" in granted:
            return True
        return any(f"group:{g}" in granted for g in self._groups_of(owner))

    def change(self, name: str, allow: Iterable[str], deny: Iterable[str]) -> list[str]:
        """Add ``allow`` and remove ``deny`` entries of ``name``; its entries now. The
        caller checks that whoever asks may manage ``name``."""
        allowed = [grant_entry(e) for e in allow]
        denied = [grant_entry(e) for e in deny]
        both = sorted(set(allowed) & set(denied))
        if both:
            raise ConfigError(f"{', '.join(both)} both allowed and denied; give each once")
        with self.registry.transaction() as db:
            db.executemany("INSERT OR IGNORE INTO pool_grants VALUES (?, ?)",
                           [(name, e) for e in allowed])
            db.executemany("DELETE FROM pool_grants WHERE servable=? AND grantee=?",
                           [(name, e) for e in denied])
        self.reload()
        if allowed or denied:
            logger.info("pooling of %s: allowed %s, denied %s", name, allowed, denied)
        return self.of(name)
