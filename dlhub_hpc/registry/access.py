"""Identities, groups and who may see which servable.

The hub maps CurveZMQ public keys to identity names (Unix users, workers); the admin (the
user who started the hub) defines groups. A servable is visible to ``public``, listed
``user:NAME`` entries and members of listed ``group:NAME`` entries; its owner (its first
publisher) and the admin always see it. Visibility governs run, describe and search alike.
The tables live in the registry's SQLite file; lookups are served from memory, since the
hub checks every request.
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict

from dlhub_hpc.errors import ConfigError, PermissionDenied
from dlhub_hpc.registry.store import Registry, ServableRecord

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS identities (
    name TEXT PRIMARY KEY,
    public_key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    added_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS group_members (
    grp TEXT NOT NULL,
    member TEXT NOT NULL,
    PRIMARY KEY (grp, member)
);
"""
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_GROUP = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # no '@': visibility's group:NAME has none
_Z85_KEY = re.compile(r"^[0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")


def check_public_key(key: str) -> str:
    if not _Z85_KEY.match(key):
        raise ConfigError(
            f"{key!r} is not a CurveZMQ public key (40 Z85 characters, as in a .pub file "
            "from 'dlhub-hpc keys create')"
        )
    return key


def check_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(f"{what} {name!r} may use letters, digits and _ . @ - (1-64 chars)")
    return name


def check_group(name: str) -> str:
    if not _GROUP.match(name):
        raise ConfigError(f"group {name!r} may use letters, digits and _ . - (1-64 chars), "
                          "as in a visibility entry group:NAME")
    return name


class AccessControl:
    """Identities, groups and visibility rules over one ``Registry``; ``admin`` sees all."""

    def __init__(self, registry: Registry, admin: str) -> None:
        self.registry = registry
        self.admin = admin
        with registry.transaction() as db:
            db.executescript(_SCHEMA)
        self._keys: dict[str, str] = {}
        self._groups: dict[str, set[str]] = defaultdict(set)  # user -> groups
        self._rules: dict[str, tuple[str, list[str]]] = {}
        self.reload()

    def __repr__(self) -> str:
        return f"AccessControl(registry={self.registry!r}, admin={self.admin!r})"

    def reload(self) -> None:
        """Read identities, groups and rules into memory (after any change)."""
        with self.registry.transaction() as db:
            keys = {k: n for n, k in db.execute("SELECT name, public_key FROM identities")}
            groups: dict[str, set[str]] = defaultdict(set)
            for grp, member in db.execute("SELECT grp, member FROM group_members"):
                groups[member].add(grp)
        self._keys, self._groups = keys, groups
        self._rules = self.registry.access_rules()

    # -- identities --

    def identity_for_key(self, public_key: str) -> str | None:
        return self._keys.get(public_key)

    def known(self, name: str) -> bool:
        """Is ``name`` the admin or an identity of this hub?"""
        return name == self.admin or name in self._keys.values()

    def add_identity(self, name: str, public_key: str, kind: str = "user") -> None:
        check_name(name, "identity")
        check_public_key(public_key)
        with self.registry.transaction() as db:
            taken = db.execute(
                "SELECT name FROM identities WHERE public_key=? AND name<>?", (public_key, name)
            ).fetchone()
            if taken:
                raise ConfigError(f"that key already belongs to {taken[0]!r}; one key, one "
                                  "identity: make a new key pair with 'dlhub-hpc keys create'")
            db.execute("INSERT OR REPLACE INTO identities VALUES (?, ?, ?, ?)",
                       (name, public_key, kind, time.time()))
        logger.info("identity %s (%s) added", name, kind)
        self.reload()

    def remove_identity(self, name: str) -> None:
        with self.registry.transaction() as db:
            gone = db.execute("DELETE FROM identities WHERE name=?", (name,)).rowcount
        if not gone:
            raise ConfigError(f"no identity named {name!r}; see 'dlhub-hpc keys list'")
        self.reload()

    def identities(self) -> list[dict[str, object]]:
        with self.registry.transaction() as db:
            rows = db.execute(
                "SELECT name, public_key, kind, added_at FROM identities ORDER BY name"
            ).fetchall()
        return [{"name": n, "public_key": k, "kind": kind, "added_at": t,
                 "groups": sorted(self._groups.get(n, ()))} for n, k, kind, t in rows]

    # -- groups --

    def set_group(self, group: str, members: list[str]) -> None:
        check_group(group)
        for m in members:
            check_name(m, "member")
        with self.registry.transaction() as db:
            db.execute("DELETE FROM group_members WHERE grp=?", (group,))
            db.executemany("INSERT INTO group_members VALUES (?, ?)",
                           [(group, m) for m in sorted(set(members))])
        self.reload()

    def groups_of(self, user: str) -> frozenset[str] | set[str]:
        """The groups ``user`` is a member of."""
        return self._groups.get(user, frozenset())

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for user, groups in self._groups.items():
            for g in groups:
                out[g].append(user)
        return {g: sorted(m) for g, m in sorted(out.items())}

    # -- rules --

    def rules_changed(self) -> None:
        self._rules = self.registry.access_rules()

    def can_see(self, user: str, name: str) -> bool:
        owner, visible = self._rules.get(name, ("", ["public"]))
        if "public" in visible or user in (owner, self.admin) or f"user:{user}" in visible:
            return True
        return any(f"group:{g}" in visible for g in self._groups.get(user, ()))

    def owner(self, name: str) -> str:
        """Who published ``name`` first ('' if nobody has)."""
        return self._rules.get(name, ("", []))[0]

    def check_see(self, user: str, name: str) -> None:
        if not self.can_see(user, name):
            raise PermissionDenied(
                f"{user!r} may not use {name}; ask its owner to add you "
                f"('dlhub-hpc visibility {name} --user {user}')",
                servable=name, identity=user,
            )

    def check_manage(self, user: str, name: str) -> None:
        """Only the owner (or the admin) changes a servable: new versions, status, visibility.

        A name nobody has published yet is claimed only under one's own identity
        (``owner/...``), so nobody publishes in another's name first.
        """
        if name not in self._rules and user != self.admin:
            owner = name.partition("/")[0]
            if owner != user:
                raise PermissionDenied(
                    f"{user!r} may not publish as {owner!r}; set dlhub.owner to {user!r} "
                    "(or ask the hub's admin to publish it)",
                    servable=name, identity=user, owner=owner,
                )
        owner = self._rules.get(name, (user, []))[0]
        if user not in (owner, self.admin):
            raise PermissionDenied(
                f"{name} belongs to {owner!r}; {user!r} may not change it",
                servable=name, identity=user, owner=owner,
            )

    def visible(self, user: str, records: list[ServableRecord]) -> list[ServableRecord]:
        return [r for r in records if self.can_see(user, r.name)]
