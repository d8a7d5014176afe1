"""What one caller may see of the hub's servables, pools, workers, blocks and pilots.

``status``, ``pilot status`` and their errors list everyone's pooled workers, pool blocks
and pool pilots (capacity the callers share), but a list pool's text names its servables:
``alice/secret1,alice/secret2``. A caller who may not see every servable a list names gets
it redacted: the names it may see and a count of the hidden ones, ``alice/pub + 2 hidden
servables of alice``. Its owner and the admin see it as written, so they tell their pools
apart. ``owner:NAME``, ``tag:TAG`` and ``public`` pools are shown as written: they name an
owner, whom each pooled worker's ``owner`` (and every ``owner/name`` servable) shows
anyway, or a tag the admin chose, and no servable.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Protocol

from dlhub_hpc.hubops.limits import is_admin
from dlhub_hpc.hubops.parts import HubParts
from dlhub_hpc.servable.pools import DEFAULT_BUDGET, POOL_PREFIX, PoolSpec, pool_of

logger = logging.getLogger(__name__)

POOLED = "pool: "  # how the broker's worker list names what a pooled worker runs
HIDDEN = "hidden"  # in place of a servable the caller may not see
_REF = re.compile(r"[a-z0-9][a-z0-9_.-]*/[a-z0-9][a-z0-9_.-]*@[0-9]+")


class Access(Protocol):
    """The visibility rules (``registry.access.AccessControl``)."""

    def can_see(self, user: str, name: str) -> bool: ...

    def owner(self, name: str) -> str: ...


class Viewer:
    """One caller's view: what it may see, and how what it may not is shown to it."""

    def __init__(self, access: Access, caller: str, admin: bool) -> None:
        self.access = access
        self.caller = caller
        self.admin = admin  # sees everything as written

    def __repr__(self) -> str:
        return f"Viewer({self.access!r}, {self.caller!r}, admin={self.admin})"

    def sees(self, ref: str) -> bool:
        """May the caller see the servable ``ref`` (``owner/name[@version]``) names?"""
        return self.admin or self.access.can_see(self.caller, ref.split("@")[0])

    def sees_name(self, name: str) -> bool:
        """A name a list pool gives: visible if published and the caller may see it; one
        not yet published only to whoever would own it (a later private one is a secret)."""
        if self.admin:
            return True
        if not self.access.owner(name):
            return name.partition("/")[0] == self.caller
        return self.access.can_see(self.caller, name)

    def pool_text(self, pool: PoolSpec) -> str:
        """The pool as the caller may see it: as written, or redacted."""
        if pool.kind != "names":
            return pool.text()
        shown = [n for n in pool.names if self.sees_name(n)]
        hidden = len(pool.names) - len(shown)
        if not hidden:
            return pool.text()
        # a list may mix owners who allowed its owner's pools: say whose the hidden ones are
        owners = sorted({n.partition("/")[0] for n in pool.names if not self.sees_name(n)})
        count = f"{hidden} {HIDDEN} servable{'' if hidden == 1 else 's'} of {', '.join(owners)}"
        return f"{','.join(shown)} + {count}" if shown else count

    def pool_spec_text(self, text: str) -> str:
        """``pool_text`` of a pool's command-line form (a pooled worker's ``pool``)."""
        return self.pool_text(PoolSpec.parse(text))

    def ref(self, ref: str) -> str:
        """A pilot's or block's ``servable``: a servable ref as is, a pool's redacted."""
        pool = pool_of(ref)
        if pool is None:
            return ref
        budget = "" if pool.budget == DEFAULT_BUDGET else f",budget={pool.budget}"
        return f"{POOL_PREFIX}{self.pool_text(pool)}{budget}"

    def lists(self, ref: str) -> bool:
        """Is a block or pilot of ``ref`` listed? A pool's is (redacted: it is capacity
        every caller shares); a servable's only to whoever may see the servable."""
        return pool_of(ref) is not None or self.sees(ref)

    def block(self, block: dict[str, Any]) -> dict[str, Any]:
        return {**block, "servable": self.ref(str(block.get("servable", "")))}

    def pilot(self, pilot: dict[str, Any]) -> dict[str, Any]:
        return {**pilot, "servable": self.ref(str(pilot.get("servable", ""))),
                "blocks": [self.block(b) for b in pilot.get("blocks", [])]}

    def worker(self, worker: dict[str, Any]) -> dict[str, Any] | None:
        """An entry of the broker's worker list; None when the caller may not see it. A
        pooled worker is listed (as the pools part lists it), what it runs only if visible."""
        serving = str(worker.get("servable", ""))
        if not serving.startswith(POOLED):
            return worker if self.sees(serving) else None
        ref = serving[len(POOLED):]
        return worker if not ref or self.sees(ref) else {**worker, "servable": POOLED + HIDDEN}

    def reason(self, text: str) -> str:
        """A reason that may name other servables (``it pins numpy 1 but alice/x@1,
        already loaded there, ...``), with those the caller may not see left unnamed."""
        return _REF.sub(lambda m: m[0] if self.sees(m[0]) else "another servable", text)


def viewer_of(parts: HubParts, caller: str) -> Viewer:
    """``caller``'s view of the hub ``parts`` make up (the admin, or anyone on a hub
    without identities, sees everything)."""
    return Viewer(parts.security.access, caller, is_admin(parts, caller))
