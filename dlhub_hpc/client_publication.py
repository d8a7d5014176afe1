"""The hub operations a client offers beyond serving, defined once for both clients.

Each call is a control operation: its name, its arguments and how long to wait. The hub
applies the caller's identity (from its CurveZMQ key), so each caller sees only what it may.
``Client`` mixes these in with ``R = Any`` (a call returns the answer); ``AsyncClient``
with ``R = Awaitable[Any]`` (a call returns something to await).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

R = TypeVar("R")


class _Calls(Generic[R]):
    def control(self, op: str, timeout: float = 30.0, **args: Any) -> R:
        raise NotImplementedError


class AdminCalls(_Calls[R]):
    """Workers, pilots, the hub itself, identities and groups."""

    def status(self, timeout: float = 10.0) -> R:
        """Servables, queues, workers, blocks and counters, as the hub sees them now."""
        return self.control("status", timeout=timeout)

    def start_workers(self, servable: str, workers: int = 1) -> R:
        return self.control("start_workers", timeout=120.0, servable=servable, workers=workers)

    def stop_workers(self, servable: str | None = None, blocks: list[str] | None = None) -> R:
        return self.control("stop_workers", timeout=120.0, servable=servable, blocks=blocks)

    def start_pilot(self, servable: str, profile: str | Path | Mapping[str, Any] = "local",
                    nodes: int | None = None) -> R:
        """Start a pilot for ``servable`` from a site profile (a name, a YAML path, or data)."""
        if hasattr(profile, "model_dump"):
            profile = profile.model_dump(mode="json")
        sent = dict(profile) if isinstance(profile, Mapping) else str(profile)
        return self.control("pilot_start", timeout=180.0, servable=servable, profile=sent,
                            nodes=nodes)

    def pilot_status(self) -> R:
        """Every pilot: profile, servable, limits, and its blocks with their states."""
        return self.control("pilot_status", timeout=60.0)

    def stop_pilot(self, pilots: list[str] | None = None, servable: str | None = None) -> R:
        """Stop the named pilots, or those of ``servable``, or (with neither) all."""
        return self.control("pilot_stop", timeout=120.0, pilots=pilots, servable=servable)

    def shutdown_hub(self) -> R:
        return self.control("shutdown")

    def groups(self) -> R:
        return self.control("groups")

    def set_group(self, group: str, members: list[str]) -> R:
        """Define ``group`` as exactly ``members`` (the hub's admin only)."""
        return self.control("groups", group=group, members=members)

    def identities(self) -> R:
        return self.control("identities")

    def add_identity(self, name: str, public_key: str) -> R:
        """Let the holder of ``public_key`` in as ``name`` (the hub's admin only)."""
        return self.control("identities", action="add", name=name, public_key=public_key)

    def remove_identity(self, name: str) -> R:
        return self.control("identities", action="remove", name=name)


class PublicationCalls(_Calls[R]):
    """Search, records, versions' status and access rules."""

    def search(
        self, text: str = "", *, owner: str | None = None, domain: str | None = None,
        type: str | None = None, doi: str | None = None,
        published_after: date | str | None = None, published_before: date | str | None = None,
        limit: int = 20,
    ) -> R:
        """Servables this caller may see matching ``text`` (ranked) and the filters."""
        return self.control(
            "search", text=text, owner=owner, domain=domain, type=type, doi=doi,
            published_after=None if published_after is None else str(published_after),
            published_before=None if published_before is None else str(published_before),
            limit=limit,
        )

    def describe(self, servable: str) -> R:
        """The full record of ``owner/name[@version]``: spec, identifier, status, versions."""
        return self.control("describe", servable=servable)

    def export_dlhub(self, servable: str) -> R:
        """The servable's record in DLHub's ``dlhub.json`` schema."""
        return self.control("export", servable=servable)

    def deprecate(self, servable: str, reason: str, replacement: str | None = None) -> R:
        """Mark ``owner/name@version`` deprecated: it still runs; its record says why."""
        return self.control("set_status", servable=servable, status="deprecated",
                            reason=reason, replacement=replacement)

    def withdraw(self, servable: str, reason: str, replacement: str | None = None) -> R:
        """Withdraw ``owner/name@version``: it stays resolvable but no longer runs."""
        return self.control("set_status", servable=servable, status="withdrawn",
                            reason=reason, replacement=replacement)

    def set_visibility(self, servable: str, *, public: bool = False,
                       users: list[str] | None = None, groups: list[str] | None = None) -> R:
        """Who may run, describe and find ``owner/name`` (its owner only may change it)."""
        visible = (["public"] if public else []) + [f"user:{u}" for u in users or []]
        visible += [f"group:{g}" for g in groups or []]
        return self.control("set_visibility", servable=servable, visible_to=visible)

    def pooling(self, servable: str, *, allow: list[str] | None = None,
                deny: list[str] | None = None) -> R:
        """Which owners' pools may serve ``owner/name`` besides its owner's: ``allow`` and
        ``deny`` owners (``bob``) or groups (``group:lab``), its owner or the admin only;
        neither shows them. Allowing bob lets bob's worker processes run its code, hold its
        model and see the inputs of every caller of it; who may run it stays as it is."""
        return self.control("pooling", servable=servable, allow=list(allow or []),
                            deny=list(deny or []))

    def whoami(self) -> R:
        """The identity the hub knows this client's key as, and its groups."""
        return self.control("whoami")
