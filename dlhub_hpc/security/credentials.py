"""Worker credentials scoped to owners: which servables a connecting worker may serve.

Each owner whose workers the hub starts gets a CurveZMQ key pair of its own. The public
half is recorded in the registry (``worker_credentials``) with the owner it serves; the
ZAP handler names a worker connection ``worker:OWNER`` and the broker hands that
connection only servables of OWNER. The hub's own pair (``worker.key`` in its home) is the
admin's credential and may serve every servable.

The secret half is written only into the hub's private ``credentials/`` folder (0700, in
the hub's home, which no sandboxed or user-switched worker sees). The hub hands it to a
worker it starts on an inherited file descriptor (see ``isolation``), so the servable's
code never finds it on a path. Revoking an owner's credential refuses new connections
with it and drops the workers that hold it; the next start issues a new one.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dlhub_hpc.errors import ConfigError
from dlhub_hpc.registry.store import Registry
from dlhub_hpc.security.keys import KeyPair, _private_dirs, load_keypair, write_keypair

logger = logging.getLogger(__name__)

WORKER_PREFIX = "worker:"  # ZAP user id of a worker connection: worker:OWNER

_SCHEMA = """
CREATE TABLE IF NOT EXISTS worker_credentials (
    public_key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    issued_at REAL NOT NULL,
    revoked_at REAL
);
"""


def worker_identity(owner: str) -> str:
    """The identity a worker connection with ``owner``'s credential gets."""
    return f"{WORKER_PREFIX}{owner}"


def credential_owner(identity: str) -> str | None:
    """``worker:alice`` -> ``alice``; None for anything that is not a worker identity."""
    if identity.startswith(WORKER_PREFIX):
        return identity[len(WORKER_PREFIX):] or None
    return None


@dataclass(frozen=True)
class IssuedCredential:
    """Where an owner's credential file is (hub side only), and its public key."""

    owner: str
    path: Path
    public_key: str


class WorkerCredentials:
    """The worker credentials of one hub, one live pair per owner, revocable."""

    def __init__(self, registry: Registry, directory: Path, hub_key: str,
                 admin: str, admin_pair: KeyPair) -> None:
        self.registry = registry
        self.directory = Path(directory)
        self.hub_key = hub_key  # written into each file: one file is all a worker needs
        self.admin = admin
        self._admin_pair = admin_pair
        self._admin_public = admin_pair.public
        self._lock = threading.Lock()
        with registry.transaction() as db:
            db.executescript(_SCHEMA)
        self._owners: dict[str, str] = {}  # live public key -> owner
        self.reload()

    def __repr__(self) -> str:
        return f"WorkerCredentials(directory={str(self.directory)!r}, admin={self.admin!r})"

    def reload(self) -> None:
        with self.registry.transaction() as db:
            rows = db.execute(
                "SELECT public_key, owner FROM worker_credentials WHERE revoked_at IS NULL"
            ).fetchall()
        owners = {key: owner for key, owner in rows}
        owners[self._admin_public] = self.admin
        self._owners = owners

    def owner_of(self, public_key: str) -> str | None:
        """The owner a connecting worker key serves, or None (unknown or revoked)."""
        return self._owners.get(public_key)

    def path_for(self, owner: str) -> Path:
        """``credentials/OWNER/worker.key``: a folder per owner, so that a container can
        bind an owner's folder and see no other owner's key."""
        return self.directory / _file_name(owner) / "worker.key"

    def issue(self, owner: str) -> IssuedCredential:
        """``owner``'s live credential, made and recorded on first use (thread-safe)."""
        path = self.path_for(owner)
        with self._lock:
            if owner == self.admin:  # the hub's own pair, copied where pilots look for it
                if not path.exists() or load_keypair(path) != self._admin_pair:
                    _private_dirs(path.parent)
                    write_keypair(path, self._admin_pair, f"worker:{owner}",
                                  hub_key=self.hub_key)
                return IssuedCredential(owner, path, self._admin_public)
            if path.exists():
                pair = load_keypair(path)
                if self._owners.get(pair.public) == owner:
                    return IssuedCredential(owner, path, pair.public)
            pair = KeyPair.generate()
            _private_dirs(path.parent)
            write_keypair(path, pair, f"worker:{owner}", hub_key=self.hub_key)
            with self.registry.transaction() as db:
                db.execute("INSERT INTO worker_credentials VALUES (?, ?, ?, NULL)",
                           (pair.public, owner, time.time()))
            self.reload()
        logger.info("issued a worker credential for %s (%s)", owner, pair.public)
        return IssuedCredential(owner, path, pair.public)

    def revoke(self, owner: str) -> int:
        """Revoke every live credential of ``owner``; returns how many were live."""
        if owner == self.admin:
            raise ConfigError(
                f"the admin's worker credential is the hub's own ({self.directory.parent}/"
                "worker.key): to replace it, stop the hub, delete that file and start it")
        with self._lock:
            with self.registry.transaction() as db:
                count = db.execute(
                    "UPDATE worker_credentials SET revoked_at=? "
                    "WHERE owner=? AND revoked_at IS NULL", (time.time(), owner)).rowcount
            self.path_for(owner).unlink(missing_ok=True)
            self.reload()
        logger.warning("revoked %d worker credential(s) of %s", count, owner)
        return int(count)

    def listing(self) -> list[dict[str, object]]:
        with self.registry.transaction() as db:
            rows = db.execute(
                "SELECT owner, public_key, issued_at, revoked_at FROM worker_credentials "
                "ORDER BY owner, issued_at").fetchall()
        return [{"owner": o, "public_key": k, "issued_at": i, "revoked_at": r}
                for o, k, i, r in rows]


def _file_name(owner: str) -> str:
    # Identity names are [A-Za-z0-9_.@-]; keep them readable but never a path.
    return owner.replace("/", "_").lstrip(".") or "_"
