"""How the hub starts a worker for a servable's owner, so that the owner's code cannot
read the hub's secrets nor act as anyone else.

=====================  ========================================================
the owner is           the worker runs
=====================  ========================================================
the hub's admin        as the hub's own user (it is the admin's own code)
anyone else            as the owner's Unix user, when the hub runs as root and
                       the identity maps to a (non-root) account ("user");
                       else inside bubblewrap ("sandbox");
                       inside the pilot's container runtime, when the profile
                       names one (the image is the sandbox);
                       else not at all: ``IsolationUnavailable``, unless the
                       admin set ``worker_isolation: off`` (logged as a warning)
=====================  ========================================================

Every worker gets its owner's credential (``credentials.py``) on file descriptor 3 of its
shell (``3<FILE``), read once at start and closed; a container gets its owner's credential
folder bound on ``/mnt`` instead.
"""

from __future__ import annotations

import logging
import os
import pwd
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dlhub_hpc.errors import IsolationUnavailable

logger = logging.getLogger(__name__)

IsolationMode = Literal["auto", "user", "sandbox", "off"]
Kind = Literal["bare", "user", "sandbox", "container"]
CONFINE = "dlhub_hpc.security.confine"
CREDENTIAL_FD = 3
CONTAINER_KEY_DIR = "/mnt"  # every image has it; runtimes cannot make mount points


@dataclass(frozen=True)
class Confinement:
    """How one owner's worker is started: ``wrap`` its argv, ``credential_*`` its key."""

    owner: str
    kind: Kind
    unix_user: str | None = None
    hide: tuple[str, ...] = ()

    def wrap(self, argv: list[str], python: str) -> list[str]:
        """``argv`` (the worker's command) as this confinement runs it, on the node."""
        if self.kind == "user":
            assert self.unix_user is not None
            return [python, "-m", CONFINE, "--user", self.unix_user, "--", *argv]
        if self.kind == "sandbox":
            hide = [a for path in self.hide for a in ("--hide", path)]
            return [python, "-m", CONFINE, "--sandbox", *hide, "--", *argv]
        return argv


def credential_flags(kind: Kind) -> list[str]:
    """The worker flags that point it at its credential."""
    if kind == "container":
        return ["--credential", f"{CONTAINER_KEY_DIR}/worker.key"]
    return ["--credential", f"/dev/fd/{CREDENTIAL_FD}"]


def credential_redirect(path: Path) -> str:
    """Shell text after the command: the credential file opened on descriptor 3, by the
    job's shell (as the hub's user) before any confinement, so the worker needs no path."""
    return f" {CREDENTIAL_FD}<{shlex.quote(str(path))}"


def container_binds(path: Path, runtime: str) -> list[str]:
    """The owner's credential folder on ``/mnt`` (ch-run binds are read-write only)."""
    mode = "" if runtime == "charliecloud" else ":ro"
    return [f"{path.parent}:{CONTAINER_KEY_DIR}{mode}"]


class IsolationPolicy:
    """Decides each owner's confinement from the hub's ``worker_isolation`` setting."""

    def __init__(self, mode: IsolationMode, admin: str, hide: list[Path],
                 user_map: dict[str, str] | None = None, *, can_switch: bool | None = None,
                 bwrap: str | Literal[False] | None = False) -> None:
        self.mode = mode
        self.admin = admin
        self.hide = tuple(str(p) for p in hide)
        self.user_map = dict(user_map or {})
        self.can_switch = os.geteuid() == 0 if can_switch is None else can_switch
        self.bwrap = shutil.which("bwrap") if bwrap is False else bwrap
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"IsolationPolicy(mode={self.mode!r}, admin={self.admin!r})"

    def confinement(self, owner: str, *, container: bool = False) -> Confinement:
        """How ``owner``'s workers start; ``IsolationUnavailable`` if they may not."""
        if container:  # the image is the sandbox; its credential comes bound, not on fd 3
            return Confinement(owner, "container")
        if owner == self.admin:
            return Confinement(owner, "bare")
        if self.mode == "off":
            if owner not in self._warned:
                self._warned.add(owner)
                logger.warning("worker_isolation is off: %s's servable code runs as the "
                               "hub's own user and can read its keys and registry", owner)
            return Confinement(owner, "bare")
        account = self._account(owner) if self.mode in ("auto", "user") else None
        if account is not None:
            return Confinement(owner, "user", unix_user=account)
        if self.mode in ("auto", "sandbox") and self.bwrap:
            return Confinement(owner, "sandbox", hide=self.hide)
        raise IsolationUnavailable(self._why_not(owner), owner=owner, mode=self.mode)

    def _account(self, owner: str) -> str | None:
        """The Unix user ``owner``'s workers may switch to, or None."""
        if not self.can_switch:
            return None
        name = self.user_map.get(owner, owner)
        try:
            account = pwd.getpwnam(name)
        except KeyError:
            return None
        if account.pw_uid in (0, os.geteuid()):
            return None  # never root, never the hub itself: that is no isolation
        return name

    def _why_not(self, owner: str) -> str:
        if self.mode == "user":
            how = ("the hub does not run as root" if not self.can_switch else
                   f"no Unix account matches {owner!r} (map it in the hub's user_map)")
            return (f"cannot start {owner}'s workers as {owner}'s Unix user: {how}; or set "
                    "worker_isolation to auto or sandbox with bubblewrap installed")
        return (f"cannot start {owner}'s workers isolated from the hub: bubblewrap (bwrap) is "
                "not installed and the hub cannot switch to their Unix user. Install "
                "bubblewrap ('apt-get install bubblewrap'), run their servable in a pilot "
                "with a container runtime, or (accepting that their code can read the hub's "
                "keys) have the admin set worker_isolation: off in the hub's config")


@dataclass(frozen=True)
class WorkerLaunch:
    """What a pilot needs to start one owner's workers: their confinement and credential
    (None on a hub without CurveZMQ)."""

    confinement: Confinement
    credential: Path | None = None

    @property
    def owner(self) -> str:
        return self.confinement.owner

    def flags(self) -> list[str]:
        """The worker flags that point it at its credential."""
        return [] if self.credential is None else credential_flags(self.confinement.kind)

    def container_binds(self, runtime: str) -> list[str]:
        return [] if self.credential is None else container_binds(self.credential, runtime)
