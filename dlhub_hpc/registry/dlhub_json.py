"""Import and export DLHub ``dlhub.json`` records (DLHub's public servable schema).

A DLHub record has three blocks: ``datacite`` in DataCite's JSON spelling (``titles``,
``creators`` with ``creatorName``/``affiliations``/``nameIdentifiers``, ``publicationYear``,
``relatedIdentifiers``...), ``dlhub`` (owner, name, version, domains, visible_to, files,
dependencies) and ``servable`` (``shim`` such as ``sklearn.ScikitLearnServable`` or
``python.PythonStaticMethodServable``, and ``methods`` with typed input, output,
``parameters`` and ``method_details``). ``from_dlhub_json`` makes our ``ServableSpec`` of
one; ``to_dlhub_json`` writes one back.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from dlhub_hpc.errors import SpecError
from dlhub_hpc.servable.spec import ServableSpec
from dlhub_hpc.servable.types import ArgType

logger = logging.getLogger(__name__)

_SHIM_TO_TYPE = {
    "sklearn.ScikitLearnServable": "sklearn",
    "python.PythonStaticMethodServable": "python_function",
}
_TYPE_TO_SHIM = {v: k for k, v in _SHIM_TO_TYPE.items()}
_ARG_KEYS = set(ArgType.model_fields)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_.-]", "-", text.lower()).strip("-") or "unnamed"


def _arg(data: Any) -> dict[str, Any]:
    """A DLHub type declaration without the keys we do not model (kept loose on import)."""
    if not isinstance(data, dict):
        return {"type": "any"}
    out = {k: v for k, v in data.items() if k in _ARG_KEYS}
    for key in ("item_type",):
        if key in out:
            out[key] = _arg(out[key])
    if "element_types" in out:
        out["element_types"] = [_arg(e) for e in out["element_types"]]
    if "properties" in out:
        out["properties"] = {k: _arg(v) for k, v in out["properties"].items()}
    if out.get("type") == "python object" and "python_type" not in out:
        out["python_type"] = data.get("python_type")
    return out


def _creator_in(c: dict[str, Any]) -> dict[str, Any]:
    name = c.get("creatorName") or ", ".join(
        p for p in (c.get("familyName"), c.get("givenName")) if p
    )
    orcid = next((i.get("nameIdentifier") for i in c.get("nameIdentifiers", [])
                  if str(i.get("nameIdentifierScheme", "")).upper() == "ORCID"), None)
    return {"name": name or "unknown", "affiliations": list(c.get("affiliations", [])),
            "orcid": orcid}


def _datacite_in(dc: dict[str, Any]) -> dict[str, Any]:
    ident = dc.get("identifier") or {}
    doi = ident.get("identifier") if ident.get("identifierType") == "DOI" else None
    if doi and "YET" in doi.upper():  # DLHub's placeholder "10.YET/UNASSIGNED"
        doi = None
    year = dc.get("publicationYear")
    return {
        "title": next((t["title"] for t in dc.get("titles", []) if t.get("title")), "untitled"),
        "creators": [_creator_in(c) for c in dc.get("creators", [])],
        "description": " ".join(d.get("description", "") for d in dc.get("descriptions", [])),
        "publisher": dc.get("publisher", "DLHub"),
        "publication_year": int(year) if year else None,
        "subjects": [s["subject"] for s in dc.get("subjects", []) if s.get("subject")],
        "related_identifiers": [
            {"identifier": r["relatedIdentifier"],
             "identifier_type": r.get("relatedIdentifierType", "DOI"),
             "relation_type": r.get("relationType", "IsDescribedBy")}
            for r in dc.get("relatedIdentifiers", []) if r.get("relatedIdentifier")
        ],
        "rights": "; ".join(r.get("rights", "") for r in dc.get("rightsList", [])),
        "funding": [
            {"funder": f.get("funderName", ""),
             "award": str((f.get("awardNumber") or {}).get("awardNumber", ""))}
            for f in dc.get("fundingReferences", [])
        ],
        "doi": doi,
    }


def _files_in(files: Any) -> tuple[list[str], str | None]:
    if isinstance(files, list):
        return [str(f) for f in files], None
    if isinstance(files, dict):
        model = files.get("model")
        listed = [str(f) for f in files.get("other", [])] + ([model] if model else [])
        return listed, model
    return [], None


def _method_in(kind: str, name: str, m: dict[str, Any]) -> dict[str, Any]:
    details = m.get("method_details", {})
    out: dict[str, Any] = {
        "input": _arg(m.get("input")), "output": _arg(m.get("output")),
        "description": m.get("description", ""), "parameters": dict(m.get("parameters", {})),
    }
    if kind == "python_function":
        module, func = details.get("module"), details.get("method_name")
        if not (module and func):
            raise SpecError(f"method {name!r}: method_details needs 'module' and 'method_name'")
        out["function"] = f"{module}:{func}"
        out["takes_batch"] = bool(details.get("batch", False))  # the function takes a list
    elif details.get("method_name") and details["method_name"] != name:
        out["function"] = details["method_name"]
    return out


def from_dlhub_json(record: dict[str, Any]) -> ServableSpec:
    """Our spec of a DLHub record; unsupported shims are a ``SpecError`` naming the supported."""
    try:
        dc, dl, sv = record["datacite"], record["dlhub"], record["servable"]
    except (KeyError, TypeError) as exc:
        raise SpecError(
            f"a dlhub.json record needs datacite, dlhub and servable blocks: no {exc}"
        ) from None
    try:
        return _spec_of(dc, dl, sv)
    except (AttributeError, TypeError, ValueError, KeyError) as exc:  # a block of a wrong shape
        raise SpecError(f"this dlhub.json record does not follow DLHub's schema: "
                        f"{type(exc).__name__}: {exc}") from None


def _spec_of(dc: Any, dl: Any, sv: Any) -> ServableSpec:
    shim = sv.get("shim", "")
    kind = _SHIM_TO_TYPE.get(shim)
    if kind is None:
        raise SpecError(f"shim {shim!r} cannot be imported; supported: {sorted(_SHIM_TO_TYPE)}")
    files, model = _files_in(dl.get("files"))
    deps = dl.get("dependencies", {})
    deps = deps.get("python", deps) if isinstance(deps, dict) else {}
    data = {
        "datacite": _datacite_in(dc),
        "dlhub": {
            "owner": _slug(dl.get("owner", "unknown")), "name": _slug(dl.get("name", "")),
            "version": str(dl.get("version", "")), "domains": list(dl.get("domains", [])),
            "visible_to": [v if v == "public" or ":" in v else f"user:{v}"
                           for v in dl.get("visible_to", ["public"])
                           if not str(v).startswith("urn:")] or ["public"],
            "dependencies": {str(k): str(v) for k, v in deps.items()},
            "files": files,
        },
        "servable": {
            "type": kind, "model": model, "model_summary": sv.get("model_summary", ""),
            "methods": {n: _method_in(kind, n, m) for n, m in sv.get("methods", {}).items()},
        },
    }
    return ServableSpec.from_data(data, "dlhub.json")


def _datacite_out(spec: ServableSpec) -> dict[str, Any]:
    dc = spec.datacite
    creators = []
    for c in dc.creators:
        entry: dict[str, Any] = {"creatorName": c.name, "affiliations": c.affiliations}
        family, _, given = c.name.partition(", ")
        if given:
            entry.update(familyName=family, givenName=given)
        if c.orcid:
            entry["nameIdentifiers"] = [{"nameIdentifier": c.orcid,
                                         "nameIdentifierScheme": "ORCID"}]
        creators.append(entry)
    out: dict[str, Any] = {
        "titles": [{"title": dc.title}],
        "creators": creators,
        "publisher": dc.publisher,
        "resourceType": {"resourceTypeGeneral": "InteractiveResource"},
        "descriptions": [{"description": dc.description, "descriptionType": "Abstract"}]
        if dc.description else [],
        "subjects": [{"subject": s} for s in dc.subjects],
        "relatedIdentifiers": [
            {"relatedIdentifier": r.identifier, "relatedIdentifierType": r.identifier_type,
             "relationType": r.relation_type} for r in dc.related_identifiers
        ],
        "rightsList": [{"rights": dc.rights}] if dc.rights else [],
        "fundingReferences": [
            {"funderName": f.funder, "awardNumber": {"awardNumber": f.award}}
            for f in dc.funding
        ],
        "identifier": {"identifier": dc.doi or "10.YET/UNASSIGNED", "identifierType": "DOI"},
    }
    if dc.publication_year:
        out["publicationYear"] = str(dc.publication_year)
    return out


def _method_out(spec: ServableSpec, name: str) -> dict[str, Any]:
    m = spec.servable.methods[name]
    details: dict[str, Any] = {"method_name": m.function or name}
    if spec.servable.type == "python_function" and m.function:
        module, _, func = m.function.partition(":")
        details = {"module": module, "method_name": func, "autobatch": False,
                   "batch": m.takes_batch}
    return {
        "input": m.input.model_dump(exclude_defaults=True),
        "output": m.output.model_dump(exclude_defaults=True),
        "parameters": m.parameters, "method_details": details,
        **({"description": m.description} if m.description else {}),
    }


def to_dlhub_json(spec: ServableSpec) -> dict[str, Any]:
    """The DLHub record of a spec (sklearn and python-function servables)."""
    shim = _TYPE_TO_SHIM.get(spec.servable.type)
    if shim is None:
        raise SpecError(f"DLHub's schema has no shim for type {spec.servable.type!r}; "
                        f"exportable: {sorted(_TYPE_TO_SHIM)}")
    dl = spec.dlhub
    model = spec.servable.model
    return {
        "datacite": _datacite_out(spec),
        "dlhub": {
            "owner": dl.owner, "name": dl.name, "shorthand_name": spec.full_name,
            "version": dl.version, "domains": dl.domains, "visible_to": dl.visible_to,
            "type": "servable",
            "files": {"model": model, "other": [f for f in dl.files if f != model]}
            if model else {"other": dl.files},
            "dependencies": {"python": dl.dependencies},
        },
        "servable": {
            "type": "Scikit-learn estimator" if spec.servable.type == "sklearn"
            else "Python static method",
            "shim": shim, "language": "python",
            "model_summary": spec.servable.model_summary,
            "methods": {n: _method_out(spec, n) for n in spec.servable.methods},
        },
    }
