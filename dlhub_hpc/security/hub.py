"""What a hub needs for identities: its keys, the access rules, and the publication operations.

On start the hub loads (or makes) its server and worker key pairs in its home, trusts the
key pair of the Unix user who started it (made on first use in that user's key directory)
as its admin, and records its public key and worker credential under the user's key
directory so that the user's clients and workers connect with nothing but the address.
"""

from __future__ import annotations

import getpass
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from dlhub_hpc.errors import ConfigError, PermissionDenied
from dlhub_hpc.registry.access import AccessControl
from dlhub_hpc.registry.identifiers import parse_identifier
from dlhub_hpc.registry.pool_grants import PoolGrants
from dlhub_hpc.registry.service import PublicationService
from dlhub_hpc.registry.store import Registry
from dlhub_hpc.security.credentials import WorkerCredentials, credential_owner, worker_identity
from dlhub_hpc.security.isolation import IsolationMode, IsolationPolicy, WorkerLaunch
from dlhub_hpc.security.keys import forget_hub, key_dir, record_hub, user_keypair
from dlhub_hpc.security.zap import CLIENT_DOMAIN, WORKER_DOMAIN, HubCredentials, ServerAuth

logger = logging.getLogger(__name__)


class Named(Protocol):
    """What access checks need of a servable (the broker's ``ServableInfo`` is one)."""

    @property
    def name(self) -> str: ...


class HubSecurity:
    """Keys, identities and access rules of one hub; ``setup()`` loads the keys.

    It is the broker state's gate (``dlhub_hpc.broker.gate.Gate``: ``authorize``,
    ``may_see``, ``may_serve``, ``credential_live``) from construction on: the access rules
    are read from the registry when it is made; until ``setup()`` has loaded the worker
    credentials, no worker credential is live.
    """

    def __init__(self, home: Path, registry: Registry, invalidate: Callable[[str], None],
                 admin: str | None = None, *, isolation: IsolationMode = "auto",
                 user_map: dict[str, str] | None = None) -> None:
        self.home = Path(home)
        self.registry = registry
        self.admin = admin or getpass.getuser()
        self.credentials: HubCredentials | None = None
        self.isolation = IsolationPolicy(isolation, self.admin, [self.home, key_dir()],
                                         user_map)
        self._workers: WorkerCredentials | None = None
        self.access = AccessControl(self.registry, self.admin)
        self.grants = PoolGrants(self.registry, self.access.groups_of)  # who may pool what
        self._invalidate = invalidate
        self.publication = PublicationService(self.registry, self.access, invalidate)
        self._recorded: list[Path] = []
        self.server_auth_on = False  # identities are only known once CurveZMQ is on

    def __repr__(self) -> str:
        return f"HubSecurity(home={str(self.home)!r}, admin={self.admin!r})"

    def setup(self) -> ServerAuth:
        """Load or make the keys; trust the admin's key; return what the broker needs."""
        self.credentials = HubCredentials.in_home(self.home)
        admin_key = user_keypair().public
        if self.access.identity_for_key(admin_key) != self.admin:
            self.access.add_identity(self.admin, admin_key)
        self._workers = WorkerCredentials(
            self.registry, self.home / "credentials", self.credentials.server.public,
            self.admin, self.credentials.worker)
        self.server_auth_on = True
        return ServerAuth(self.credentials, self.lookup, local_user=self.admin)

    def setup_without_curve(self) -> tuple[str, str]:
        """Loopback benchmarks only: keys and credentials as ``setup`` makes them, but no
        CurveZMQ. Returns the identities that every caller and every worker then get (the
        admin, and a worker with the admin's credential); workers start without a key file.
        """
        auth = self.setup()
        self.server_auth_on = False
        admin_worker = self.worker_credentials.issue(self.admin).public_key
        return auth.local_user, f"{worker_identity(self.admin)}:{admin_worker}"

    def lookup(self, domain: str, public_key: str) -> str | None:
        """The identity of a connecting key (ZAP, in the broker's thread), or None: refuse."""
        assert self.credentials is not None
        if domain == WORKER_DOMAIN:
            owner = self.worker_credentials.owner_of(public_key)
            return f"{worker_identity(owner)}:{public_key}" if owner else None
        if domain == CLIENT_DOMAIN:
            return self.access.identity_for_key(public_key)
        return None

    @property
    def worker_credentials(self) -> WorkerCredentials:
        if self._workers is None:
            raise ConfigError("the hub has not started: no worker credentials yet")
        return self._workers

    def may_serve(self, user: str, info: Named, pooled: bool = False) -> bool:
        """May a worker connected as ``user`` (worker:OWNER:KEY) serve ``info``? Its owner's
        servables; the admin's credential serves every servable; a pooled worker also those
        whose owners allow OWNER's pools (asked per dispatch: a grant taken back stops the
        next batch). A worker of its own is asked once, so grants never count for it."""
        owner = self._live_owner(user)
        if owner is None:
            return False
        return (owner in (self.admin, self.access.owner(info.name))
                or (pooled and self.grants.allows(info.name, owner)))

    def pool_granted(self, owner: str, info: Named) -> bool:
        """Has ``info``'s owner allowed ``owner``'s pools to serve it?"""
        return self.grants.allows(info.name, owner)

    def credential_live(self, user: str) -> bool:
        return self._live_owner(user) is not None

    def may_see(self, user: str, name: str) -> bool:
        """May ``user`` know that servable ``name`` exists?"""
        return self.access.can_see(user, name)

    def _live_owner(self, user: str) -> str | None:
        owner_key = credential_owner(user)
        if owner_key is None or ":" not in owner_key or self._workers is None:
            return None  # before setup() no credential is loaded, so none is live
        owner, _, key = owner_key.partition(":")
        return owner if self.worker_credentials.owner_of(key) == owner else None

    def worker_launch(self, name: str, container: bool = False,
                      owner: str | None = None) -> WorkerLaunch:
        """How the workers of servable ``name`` (or of a pool of ``owner``'s) start:
        confined as its owner's policy says, with its owner's credential.
        ``IsolationUnavailable`` when they may not start."""
        owner = owner or self.access.owner(name) or self.admin
        confinement = self.isolation.confinement(owner, container=container)
        if not self.server_auth_on:
            return WorkerLaunch(confinement)
        return WorkerLaunch(confinement, self.worker_credentials.issue(owner).path)

    def check_profile_source(self, caller: str, given: object) -> None:
        """A site profile holds shell commands (``worker_init``, launcher overrides, the
        worker's ``python``) that a job runs as the hub's user before any confinement: only
        the admin may send one as data or name a YAML file; others name an installed one."""
        if caller == self.admin or not self.server_auth_on:
            return
        if isinstance(given, dict) or Path(str(given)).suffix in (".yaml", ".yml"):
            raise PermissionDenied(
                f"only the hub's admin ({self.admin}) may start pilots from a profile sent as "
                "data or a file: its commands run as the hub's user; name one of the site "
                "profiles installed on the hub ('dlhub-hpc profiles list') or ask the admin "
                "to install yours", identity=caller)

    def pooling(self, args: dict[str, Any]) -> dict[str, Any]:
        """Show, or change (``allow``, ``deny``: its owner or the admin), which owners'
        pools may serve a servable (``registry/pool_grants.py``)."""
        caller = str(args.get("caller", ""))
        name = parse_identifier(str(args.get("servable", ""))).name
        allow = [str(e) for e in args.get("allow") or []]
        deny = [str(e) for e in args.get("deny") or []]
        if allow or deny:
            self.access.check_manage(caller, name)
        else:  # before the lookup, which would tell who may not see it that it exists
            self.access.check_see(caller, name)
        record = self.registry.get(name)
        entries = self.grants.change(name, allow, deny) if allow or deny else self.grants.of(name)
        if allow or deny:
            self._invalidate(name)  # cached lookups and reasons are the broker's to redo
        return {"servable": name, "owner": record.owner, "pooled_by": entries}

    def revoke_workers(self, args: dict[str, Any]) -> dict[str, Any]:
        """Admin: revoke an owner's worker credential; its workers are dropped."""
        self.require_admin(args, "revoke worker credentials")
        owner = str(args.get("owner", ""))
        return {"owner": owner, "revoked": self.worker_credentials.revoke(owner)}

    def worker_credential_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        self.require_admin(args, "list worker credentials")
        return self.worker_credentials.listing()

    def authorize(self, user: str, info: Named) -> None:
        """May ``user`` run this servable? Raises ``PermissionDenied`` if not."""
        self.access.check_see(user, info.name)

    def require_admin(self, args: dict[str, Any], what: str) -> None:
        """Hub-wide operations (shutdown) are the admin's; ``PermissionDenied`` otherwise."""
        caller = str(args.get("caller", ""))
        if self.server_auth_on and caller != self.admin:
            raise PermissionDenied(f"only the hub's admin ({self.admin}) may {what}; you are "
                                   f"{caller!r}", identity=caller)

    def record(self, client_endpoint: str, worker_endpoint: str) -> None:
        """Tell this user's clients and workers the hub's key for its addresses."""
        assert self.credentials is not None
        self._recorded = record_hub(client_endpoint, self.credentials.server)
        self._recorded += record_hub(worker_endpoint, self.credentials.server,
                                     self.credentials.worker)

    def forget(self) -> None:
        forget_hub(self._recorded)
        self._recorded = []

    def operation(self, name: str) -> Callable[[dict[str, Any]], Any]:
        """A control handler that calls the publication service's ``name`` once it exists."""
        return lambda args: getattr(self.publication, name)(args)

    def operations(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        names = ("search", "describe", "export", "set_status", "set_visibility", "groups",
                 "identities", "whoami")
        return {**{n: self.operation(n) for n in names},
                "pooling": self.pooling, "revoke_workers": self.revoke_workers,
                "worker_credentials": self.worker_credential_list}
