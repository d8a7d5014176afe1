"""``Client`` methods for publication: search, describe, versions' status, access rules.

Every call goes to the hub as a control operation; the hub applies the caller's identity
(from its CurveZMQ key), so each caller sees only what it may.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

logger = logging.getLogger(__name__)


class PublicationMixin:
    """Mixed into ``Client``: needs its ``control(op, timeout, **args)``."""

    def control(self, op: str, timeout: float = 30.0, **args: Any) -> Any:
        raise NotImplementedError

    def search(
        self, text: str = "", *, owner: str | None = None, domain: str | None = None,
        type: str | None = None, doi: str | None = None,
        published_after: date | str | None = None, published_before: date | str | None = None,
        limit: int = 20,
    ) -> list[dict[str, Any]]:
        """Servables this caller may see matching ``text`` (ranked) and the filters."""
        result: list[dict[str, Any]] = self.control(
            "search", text=text, owner=owner, domain=domain, type=type, doi=doi,
            published_after=None if published_after is None else str(published_after),
            published_before=None if published_before is None else str(published_before),
            limit=limit,
        )
        return result

    def describe(self, servable: str) -> dict[str, Any]:
        """The full record of ``owner/name[@version]``: spec, identifier, status, versions."""
        result: dict[str, Any] = self.control("describe", servable=servable)
        return result

    def export_dlhub(self, servable: str) -> dict[str, Any]:
        """The servable's record in DLHub's ``dlhub.json`` schema."""
        result: dict[str, Any] = self.control("export", servable=servable)
        return result

    def deprecate(self, servable: str, reason: str, replacement: str | None = None
                  ) -> dict[str, Any]:
        """Mark ``owner/name@version`` deprecated: it still runs; its record says why."""
        result: dict[str, Any] = self.control(
            "set_status", servable=servable, status="deprecated", reason=reason,
            replacement=replacement)
        return result

    def withdraw(self, servable: str, reason: str, replacement: str | None = None
                 ) -> dict[str, Any]:
        """Withdraw ``owner/name@version``: it stays resolvable but no longer runs."""
        result: dict[str, Any] = self.control(
            "set_status", servable=servable, status="withdrawn", reason=reason,
            replacement=replacement)
        return result

    def set_visibility(self, servable: str, *, public: bool = False,
                       users: list[str] | None = None, groups: list[str] | None = None
                       ) -> dict[str, Any]:
        """Who may run, describe and find ``owner/name`` (its owner only may change it)."""
        visible = (["public"] if public else []) + [f"user:{u}" for u in users or []]
        visible += [f"group:{g}" for g in groups or []]
        result: dict[str, Any] = self.control(
            "set_visibility", servable=servable, visible_to=visible)
        return result

    def groups(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = self.control("groups")
        return result

    def set_group(self, group: str, members: list[str]) -> dict[str, list[str]]:
        """Define ``group`` as exactly ``members`` (the hub's admin only)."""
        result: dict[str, list[str]] = self.control("groups", group=group, members=members)
        return result

    def identities(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.control("identities")
        return result

    def add_identity(self, name: str, public_key: str) -> list[dict[str, Any]]:
        """Let the holder of ``public_key`` in as ``name`` (the hub's admin only)."""
        result: list[dict[str, Any]] = self.control(
            "identities", action="add", name=name, public_key=public_key)
        return result

    def remove_identity(self, name: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.control("identities", action="remove", name=name)
        return result

    def whoami(self) -> dict[str, Any]:
        """The identity the hub knows this client's key as, and its groups."""
        result: dict[str, Any] = self.control("whoami")
        return result
