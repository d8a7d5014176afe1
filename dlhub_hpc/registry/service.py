"""The hub's publication operations: search, describe, status, visibility, groups, identities.

Each operation takes the control message's arguments, with ``caller`` set by the broker
from the connection's CurveZMQ identity, and returns plain data for the reply. Visibility is
checked here for describe and search, as the broker checks it for runs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import date, datetime, timezone
from typing import Any

from dlhub_hpc.errors import ConfigError, PermissionDenied, SpecError
from dlhub_hpc.registry.access import AccessControl, check_public_key
from dlhub_hpc.registry.dlhub_json import to_dlhub_json
from dlhub_hpc.registry.identifiers import parse_identifier
from dlhub_hpc.registry.search import SearchQuery
from dlhub_hpc.registry.store import Registry, ServableRecord
from dlhub_hpc.servable.bundle import Bundle
from dlhub_hpc.servable.spec import VISIBILITY_PATTERN

logger = logging.getLogger(__name__)

Operation = Callable[[dict[str, Any]], Any]
_SEARCH_FIELDS = ("text", "owner", "domain", "type", "doi", "limit")


def summary(record: ServableRecord, rank: float | None = None) -> dict[str, Any]:
    """One line of search output."""
    dc = record.spec.datacite
    out = {
        "name": record.name, "version": record.version, "ref": record.ref,
        "title": dc.title, "creators": [c.name for c in dc.creators],
        "owner": record.owner, "type": record.spec.servable.type,
        "domains": record.spec.dlhub.domains, "dois": dc.dois(), "status": record.status,
        "published_at": record.published_at, "visible_to": record.visible_to,
    }
    if rank is not None:
        out["rank"] = rank
    return out


class PublicationService:
    """Publication operations over one registry and its access rules."""

    def __init__(self, registry: Registry, access: AccessControl,
                 invalidate: Callable[[str], None]) -> None:
        self.registry = registry
        self.access = access
        self._invalidate = invalidate

    def __repr__(self) -> str:
        return f"PublicationService({self.registry!r}, {self.access!r})"

    def ops(self) -> dict[str, Operation]:
        return {
            "search": self.search, "describe": self.describe, "export": self.export,
            "set_status": self.set_status, "set_visibility": self.set_visibility,
            "groups": self.groups, "identities": self.identities, "whoami": self.whoami,
        }

    # -- used by the hub's own publish and status --

    def publish(self, bundle: Bundle, caller: str) -> ServableRecord:
        self.access.check_manage(caller, bundle.spec.full_name)
        record = self.registry.publish(bundle, publisher=caller)
        self.access.rules_changed()
        self._invalidate(record.name)
        return record

    def visible(self, caller: str, records: list[ServableRecord]) -> list[ServableRecord]:
        return self.access.visible(caller, records)

    # -- operations --

    def search(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        caller = str(args.get("caller", ""))
        fields = {k: args[k] for k in _SEARCH_FIELDS if args.get(k) is not None}
        for key in ("published_after", "published_before"):
            if args.get(key):
                try:
                    fields[key] = date.fromisoformat(str(args[key]))
                except ValueError:
                    raise SpecError(f"{key} should be a date like 2024-05-31, "
                                    f"not {args[key]!r}") from None
        try:
            query = SearchQuery(**fields)
        except ValueError as exc:
            raise SpecError(f"invalid search: {exc}") from None
        hits = [(r, rank) for r, rank in self.registry.search(query)
                if self.access.can_see(caller, r.name)]
        return [summary(r, rank) for r, rank in hits[: query.limit]]

    def _record(self, args: dict[str, Any]) -> ServableRecord:
        ident = parse_identifier(str(args.get("servable", "")))
        # Before the lookup: a missing version's error lists the versions there are.
        self.access.check_see(str(args.get("caller", "")), ident.name)
        record = self.registry.get(ident.name, ident.version)
        if ident.digest and ident.digest != record.digest:
            raise SpecError(
                f"{ident} does not match: {record.ref} has sha256 {record.digest}",
                servable=record.name, version=record.version, digest=record.digest,
            )
        return record

    def describe(self, args: dict[str, Any]) -> dict[str, Any]:
        record = self._record(args)
        out = record.to_dict()
        out["versions"] = [
            {"version": r.version, "status": r.status, "reason": r.reason,
             "digest": r.digest, "published_at": r.published_at}
            for r in self.registry.versions(record.name)
        ]
        return out

    def export(self, args: dict[str, Any]) -> dict[str, Any]:
        record = self._record(args)
        # the rules now, not those at publish
        return to_dlhub_json(record.spec, visible_to=list(record.visible_to),
                             year=_year_of(record.published_at))

    def set_status(self, args: dict[str, Any]) -> dict[str, Any]:
        ident = parse_identifier(str(args.get("servable", "")))
        if ident.version is None:
            raise SpecError(f"name the version to change: {ident.name}@N")
        status = str(args.get("status", ""))
        if status not in ("active", "deprecated", "withdrawn"):
            raise SpecError(f"status should be active, deprecated or withdrawn, not {status!r}")
        self.access.check_manage(str(args.get("caller", "")), ident.name)
        replacement = args.get("replacement") or None
        if replacement:
            parse_identifier(str(replacement))
        record = self.registry.set_status(
            ident.name, ident.version, status, str(args.get("reason", "")),  # type: ignore[arg-type]
            replacement,
        )
        self._invalidate(record.name)
        return record.to_dict()

    def set_visibility(self, args: dict[str, Any]) -> dict[str, Any]:
        name = parse_identifier(str(args.get("servable", ""))).name
        self.access.check_manage(str(args.get("caller", "")), name)
        visible = [str(v) for v in args.get("visible_to") or []]
        bad = [v for v in visible if not re.match(VISIBILITY_PATTERN, v)]
        if bad:  # an empty list is allowed: only the owner (and the admin) see it
            raise SpecError(f"visibility entries should be public, user:NAME or group:NAME; "
                            f"got {bad}")
        self.registry.set_visibility(name, visible)
        self.access.rules_changed()
        self._invalidate(name)
        return summary(self.registry.get(name))

    def _admin_only(self, args: dict[str, Any], what: str) -> None:
        caller = str(args.get("caller", ""))
        if caller != self.access.admin:
            raise PermissionDenied(f"only the hub's admin ({self.access.admin}) may {what}; "
                                   f"you are {caller!r}", identity=caller)

    def groups(self, args: dict[str, Any]) -> dict[str, list[str]]:
        if args.get("group"):
            self._admin_only(args, "define groups")
            self.access.set_group(str(args["group"]), [str(m) for m in args.get("members", [])])
        return self.access.groups()

    def identities(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        self._admin_only(args, "manage identities")
        action = args.get("action", "list")
        if action == "add":
            key = check_public_key(str(args.get("public_key", "")))
            self.access.add_identity(str(args.get("name", "")), key)
        elif action == "remove":
            self.access.remove_identity(str(args.get("name", "")))
        elif action != "list":
            raise ConfigError(f"identities: action should be list, add or remove, not {action!r}")
        return self.access.identities()

    def whoami(self, args: dict[str, Any]) -> dict[str, Any]:
        caller = str(args.get("caller", ""))
        groups = sorted(g for g, members in self.access.groups().items() if caller in members)
        return {"identity": caller, "admin": caller == self.access.admin, "groups": groups}


def _year_of(timestamp: float) -> int:
    return datetime.fromtimestamp(timestamp, timezone.utc).year
