"""Bearer tokens: secrets the admin maps to a hub identity, for callers that hold no key pair.

The Open Inference Protocol gateway (``dlhub_hpc.gateway``) takes a token from each HTTP
caller and forwards it with the request; the hub, not the gateway, looks it up and acts as
the identity it maps to. So the gateway holds no user's secret and needs no privilege of
its own: it cannot act as anyone whose token it was not given, and a revoked token stops
working at the hub at once. Only the token's sha256 is stored (tokens carry 256 random
bits, so a plain hash suffices), in the registry beside the identities.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import sqlite3
import time
from typing import Any

from dlhub_hpc.errors import ConfigError, TokenRefused
from dlhub_hpc.protocol import Control, Message, Request
from dlhub_hpc.registry.access import AccessControl
from dlhub_hpc.registry.store import Registry

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "dlh_"
TOKEN_ARG = "token"  # a Control's argument that carries a token
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    revoked_at REAL,
    note TEXT NOT NULL DEFAULT ''
);
"""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class TokenStore:
    """The hub's tokens: made, listed and revoked by the admin, looked up per request."""

    def __init__(self, registry: Registry, access: AccessControl) -> None:
        self.registry = registry
        self.access = access
        with registry.transaction() as db:
            db.executescript(_SCHEMA)
        self._live: dict[str, str] = {}  # sha256 -> identity, of tokens not revoked
        self.reload()

    def __repr__(self) -> str:
        return f"TokenStore(registry={self.registry!r})"

    def reload(self) -> None:
        with self.registry.transaction() as db:
            rows = db.execute("SELECT sha256, identity FROM tokens WHERE revoked_at IS NULL")
            self._live = dict(rows.fetchall())

    def create(self, identity: str, note: str = "") -> dict[str, Any]:
        """A new token for ``identity``; the token itself is in the answer only this once."""
        if not self._known(identity):
            raise ConfigError(f"no identity named {identity!r}: add it first with 'dlhub-hpc "
                              "keys add NAME PUBLIC_KEY' (see 'dlhub-hpc keys list')",
                              identity=identity)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_id = secrets.token_hex(4)
        try:
            with self.registry.transaction() as db:
                db.execute("INSERT INTO tokens VALUES (?, ?, ?, ?, NULL, ?)",
                           (token_id, identity, token_hash(token), time.time(), note))
        except sqlite3.IntegrityError:  # an id drawn twice: vanishingly rare, try once more
            return self.create(identity, note)
        self.reload()
        logger.info("token %s made for %s", token_id, identity)
        return {"id": token_id, "identity": identity, "token": token}

    def listing(self) -> list[dict[str, Any]]:
        with self.registry.transaction() as db:
            rows = db.execute("SELECT id, identity, created_at, revoked_at, note FROM tokens "
                              "ORDER BY created_at").fetchall()
        return [{"id": i, "identity": n, "created_at": c, "revoked_at": r, "note": note}
                for i, n, c, r, note in rows]

    def revoke(self, token_id: str) -> int:
        """Revoke the token ``token_id``, or every live token of an identity of that name."""
        with self.registry.transaction() as db:
            done = db.execute("UPDATE tokens SET revoked_at=? WHERE revoked_at IS NULL AND "
                              "(id=? OR identity=?)", (time.time(), token_id, token_id)).rowcount
        if not done:
            raise ConfigError(f"no live token {token_id!r}; see 'dlhub-hpc keys token list'")
        self.reload()
        return int(done)

    def identity_of(self, token: str) -> str:
        """The identity ``token`` acts as; ``TokenRefused`` if it is unknown or revoked."""
        identity = self._live.get(token_hash(token)) if isinstance(token, str) else None
        if identity is None or not self._known(identity):
            raise TokenRefused("the bearer token is unknown or revoked; ask the hub's admin "
                               "for one ('dlhub-hpc keys token create --identity NAME')")
        return identity

    def _known(self, identity: str) -> bool:
        # A removed identity's tokens stop working with it (its name may stay in rules).
        return identity == self.access.admin or identity in self.access._keys.values()

    def acting_user(self, user: str, msg: Message) -> str:
        """Who ``msg`` acts as: its token's identity where it carries one, else ``user``
        (the connection's). A Control's token is taken out of its arguments."""
        if isinstance(msg, Request):
            return user if msg.token is None else self.identity_of(msg.token)
        if isinstance(msg, Control) and TOKEN_ARG in msg.args:
            return self.identity_of(msg.args.pop(TOKEN_ARG))
        return user

    def operations(self, require_admin: Any) -> dict[str, Any]:
        """The control operations over tokens, all for the hub's admin only."""
        def token(args: dict[str, Any]) -> Any:
            action = str(args.get("action", "list"))
            require_admin(args, f"{action} bearer tokens")
            if action == "create":
                return self.create(str(args.get("identity", "")), str(args.get("note", "")))
            if action == "revoke":
                return {"revoked": self.revoke(str(args.get("id", "")))}
            if action == "list":
                return self.listing()
            raise ConfigError(f"unknown token action {action!r}; use create, list or revoke")
        return {"tokens": token}
