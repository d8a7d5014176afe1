"""DLHub-shaped search results from this hub's records, and the search filters DLHub's
client offered (``dlhub.owner:x AND servable.type:"Keras Model"``, authors, DOIs).

A DLHub search hit is the servable's whole ``dlhub.json`` record with the fields DLHub's
service added on ingest (``dlhub.owner``, ``shorthand_name``, ``publication_date`` in
milliseconds, ``id``); here that is the hub's export of the version, plus those fields.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from dlhub_hpc.errors import InvalidInput, MethodNotFound, ServableNotFound

logger = logging.getLogger(__name__)

# Fields an advanced query may name, as DLHub's index spelled them.
QUERY_FIELDS = ("dlhub.owner", "dlhub.name", "dlhub.shorthand_name", "dlhub.domains",
                "dlhub.publication_date", "dlhub.version", "servable.type", "servable.shim",
                "datacite.titles.title", "datacite.creators.familyName",
                "datacite.creators.givenName", "datacite.relatedIdentifiers.relatedIdentifier",
                "datacite.identifier.identifier")


class NoSuchServable(ServableNotFound, AttributeError):
    """No servable of that name: DLHub's client raised ``AttributeError`` here."""


class NoSuchMethod(MethodNotFound, ValueError):
    """No method of that name: DLHub's client raised ``ValueError`` here."""


class BadQuery(InvalidInput, ValueError):
    """A search this hub cannot answer: DLHub's client raised ``ValueError`` for its own."""


def dlhub_record(exported: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """The hub's export of one version, with the fields DLHub's index added on ingest."""
    record = dict(exported)
    dl = dict(record.get("dlhub", {}))
    dl.update({
        "owner": summary["owner"], "shorthand_name": summary["name"],
        "publication_date": int(float(summary["published_at"]) * 1000),
        "id": summary.get("ref") or f"{summary['name']}@{summary['version']}",
        "type": dl.get("type", "servable"),
    })
    record["dlhub"] = dl
    return record


def method_details(record: dict[str, Any], method: str | None = None) -> dict[str, Any]:
    """DLHub's ``get_method_details``: the methods block without ``method_details``, or
    one method of it."""
    methods = {name: {k: v for k, v in m.items() if k != "method_details"}
               for name, m in record.get("servable", {}).get("methods", {}).items()}
    if method is None:
        return methods
    if method not in methods:
        raise NoSuchMethod(f"No such method: {method}; the servable has "
                           f"{', '.join(sorted(methods)) or 'none'}", method=method,
                           methods=sorted(methods))
    return methods[method]


def values_at(record: Any, path: str) -> list[Any]:
    """Every value at the dotted ``path`` in ``record``, lists walked through."""
    found = [record]
    for key in path.split("."):
        step: list[Any] = []
        for node in found:
            for item in node if isinstance(node, list) else [node]:
                if isinstance(item, dict) and key in item:
                    value = item[key]
                    step.extend(value if isinstance(value, list) else [value])
        found = step
    return found


def _matches(record: dict[str, Any], field: str, value: str) -> bool:
    want = value.strip().strip('"').lower()
    return any(str(v).lower() == want for v in values_at(record, field))


_TERM = re.compile(r'(?:([\w.]+):\s*)?("[^"]*"|[^\s"]+)')


def parse_advanced(query: str) -> tuple[str, list[tuple[str, str]]]:
    """``field:value AND ...`` as (free text, [(field, value)]); other syntax is refused."""
    text, terms = [], []
    for field, value in _TERM.findall(query):
        if value.upper() in ("OR", "NOT") or value.startswith(("-", "(")):
            raise BadQuery(f"{value!r} is not supported here: join terms with AND; fields: "
                           f"{', '.join(QUERY_FIELDS)}", path="query")
        if not field and value.upper() == "AND":
            continue
        if not field or "." not in field:
            text.append(f"{field}:{value}".strip('":') if field else value.strip('"'))
        elif field not in QUERY_FIELDS:
            raise BadQuery(f"field {field!r} cannot be searched here; use one of "
                           f"{', '.join(QUERY_FIELDS)}", path="query")
        else:
            terms.append((field, value))
    return " ".join(text), terms


def keep(records: Iterable[dict[str, Any]], terms: list[tuple[str, str]]
         ) -> list[dict[str, Any]]:
    return [r for r in records if all(_matches(r, f, v) for f, v in terms)]


def by_authors(records: Iterable[dict[str, Any]], authors: str | list[str],
               match_all: bool = True) -> list[dict[str, Any]]:
    """DLHub's ``match_authors``: "Family, Given" names; the given name (its first word
    here, so a middle initial does not matter) is matched only when given."""
    names = [authors] if isinstance(authors, str) else list(authors)
    if not names:
        return list(records)

    def has(record: dict[str, Any], author: str) -> bool:
        family, _, given = (p.strip().lower() for p in author.partition(","))
        for c in record.get("datacite", {}).get("creators", []):
            fam = str(c.get("familyName", "")).lower()
            giv = str(c.get("givenName", "")).lower().split()
            if fam == family and (not given or (giv and giv[0] == given.split()[0])):
                return True
        return False

    test = all if match_all else any
    return [r for r in records if test(has(r, a) for a in names)]


def latest(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """DLHub's ``filter_latest``: the most recently published record of each servable."""
    best: dict[str, dict[str, Any]] = {}
    for r in records:
        name = r["dlhub"]["shorthand_name"]
        if name not in best or best[name]["dlhub"]["publication_date"] < \
                r["dlhub"]["publication_date"]:
            best[name] = r
    return list(best.values())


def split_name(name: str) -> tuple[str, str]:
    """``owner/servable`` as DLHub's client required it (``AttributeError`` otherwise)."""
    owner, sep, short = str(name).partition("/")
    if not (sep and owner and short) or re.search(r"\s", name):
        raise NoSuchServable(f"Please enter name in the form <user>/<servable_name>, not "
                             f"{name!r}", servable=name)
    return owner, short
