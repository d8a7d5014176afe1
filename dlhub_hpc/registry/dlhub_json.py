"""Import DLHub ``dlhub.json`` records (as the DLHub SDK's ``to_dict()`` writes them, and as
found in public repositories) as our ``ServableSpec``; ``to_dlhub_json`` (in
``dlhub_export``) writes one back.

Rules, so that nothing is silently widened or renamed:

- owner: ``owner=`` (the CLI's ``--owner``), else the record's ``dlhub.owner``; DLHub took it
  from the Globus login, so SDK records have none and need ``--owner``.
- ``visible_to``: ``public`` stays public; ``urn:globus:groups:id:ID`` becomes
  ``group:NAME`` for ``--map-group ID=NAME``; ``urn:globus:auth:identity:ID`` becomes
  ``user:NAME`` for ``--map-user ID=NAME``; an unmapped one is refused, never dropped.
- version: ``datacite.version`` (the author's); ``dlhub.version`` is the SDK's, not used.
- DOI: the SDK's placeholders (``10.YET/UNASSIGNED``, ``10.datacite/placeholder``) mean
  "no DOI yet", also as ``doi:`` or ``https://doi.org/`` forms; ``DOI: 10.x/y`` and
  ``https://doi.org/10.x/y`` are read as ``10.x/y``; an identifier given as a bare string
  is read as a DOI.
- ``autobatch`` and ``unpack``: JSON booleans only (``"false"`` is refused, not true).
- scikit-learn methods: ``_predict_proba`` / ``_predict`` (what older SDKs wrote, the
  names of DLHub's own shim) are called as the estimator's ``predict_proba`` / ``predict``.
- name: lower-cased, other characters than ``a-z 0-9 _ . -`` become ``-``.
- files: ``./`` dropped; absolute paths made relative to their common folder (the SDK's
  ``simplify_paths``).
- a record with a ``dlhub_hpc`` block (written by our export) is imported from that block,
  losslessly; owner and visibility options still apply. Where DLHub's part restricts
  ``visible_to``, the block may not be wider (it is refused, naming both fields).

Every refusal is a ``RecordError`` naming the field path and the fix; nothing is written
unless the whole record converts.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import PurePosixPath
from typing import Any

from dlhub_hpc.errors import RecordError, SpecError
from dlhub_hpc.registry.dlhub_types import arg_in, record_error
from dlhub_hpc.servable.datacite import normalize_doi
from dlhub_hpc.servable.spec import ServableSpec

logger = logging.getLogger(__name__)

EXTENSION = "dlhub_hpc"  # our namespaced block in an exported record
SKLEARN_METHODS = {"_predict_proba": "predict_proba", "_predict": "predict"}
SHIM_TO_TYPE = {
    "python.PythonStaticMethodServable": "python_function",
    "python.PythonClassMethodServable": "python_class_method",
    "sklearn.ScikitLearnServable": "sklearn",
    "torch.TorchServable": "torch",
    "keras.KerasServable": "keras",
    "tensorflow.TensorFlowServable": "tensorflow",
}
PLACEHOLDER_DOIS = ("10.yet/unassigned", "10.datacite/placeholder")
_GLOBUS_GROUP = "urn:globus:groups:id:"
_GLOBUS_USER = "urn:globus:auth:identity:"
_FILE_KEY = {"python_class_method": "pickle", "sklearn": "model", "torch": "model",
             "keras": "model"}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_.-]", "-", text.lower()).strip("-.")[:63]


def _block(record: dict[str, Any], key: str) -> dict[str, Any]:
    value = record.get(key)
    if not isinstance(value, dict):
        raise record_error(key, "missing or not an object",
                           "a dlhub.json record has datacite, dlhub and servable blocks")
    return value


def _text(block: dict[str, Any], key: str, path: str, default: str = "") -> str:
    value = block.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise record_error(f"{path}.{key}", f"should be text, got {type(value).__name__}",
                           "give a string")
    return str(value)


_RESOLVER = re.compile(r"^(doi:\s*|https?://(dx\.)?doi\.org/)", re.IGNORECASE)


def _doi(dc: dict[str, Any]) -> str | None:
    ident = dc.get("identifier") or {}
    path = "datacite.identifier"
    if isinstance(ident, str):  # a bare DOI string, not DataCite's object
        raw = ident.strip()
    elif isinstance(ident, dict):
        if not ident.get("identifier"):
            return None
        raw, path = str(ident["identifier"]).strip(), f"{path}.identifier"
    else:
        raise record_error(path, f"should be an object, got {type(ident).__name__}",
                           'give {"identifier": "10.1234/abc", "identifierType": "DOI"}')
    text = _RESOLVER.sub("", raw).strip()
    if text.lower() in PLACEHOLDER_DOIS:
        return None  # the SDK's "no DOI yet"
    try:
        return normalize_doi(text)
    except ValueError:
        raise record_error(path, f"{raw!r} is not a DOI",
                           "give a DOI like 10.1234/abc, or 10.YET/UNASSIGNED for none"
                           ) from None


def _creator_in(c: Any, path: str) -> dict[str, Any]:
    if not isinstance(c, dict):
        raise record_error(path, "a creator should be an object", 'give {"creatorName": '
                           '"Family, Given"}')
    name = c.get("creatorName") or ", ".join(
        str(p) for p in (c.get("familyName"), c.get("givenName")) if p)
    if not name:
        raise record_error(path, "a creator without a name",
                           "give creatorName, or familyName and givenName")
    ids = c.get("nameIdentifiers") or []
    orcid = next((i.get("nameIdentifier") for i in ids if isinstance(i, dict)
                  and str(i.get("nameIdentifierScheme", "")).upper() == "ORCID"), None)
    affiliations = c.get("affiliations") or []
    if isinstance(affiliations, str):
        affiliations = [affiliations]  # one affiliation, not its letters
    elif not isinstance(affiliations, list):
        raise record_error(f"{path}.affiliations", "should be a list of names",
                           'give ["Argonne National Laboratory"]')
    return {"name": str(name), "affiliations": [str(a) for a in affiliations], "orcid": orcid}


def _year(dc: dict[str, Any]) -> int | None:
    year = dc.get("publicationYear")
    if year in (None, ""):
        return None
    if not str(year).isdigit():
        raise record_error("datacite.publicationYear", f"{year!r} is not a year",
                           'give four digits, e.g. "2021", or ""')
    return int(str(year))


def _datacite_in(dc: dict[str, Any]) -> dict[str, Any]:
    titles = [t.get("title") for t in _items(dc, "titles", "datacite") if isinstance(t, dict)]
    if not any(titles):
        raise record_error("datacite.titles", "no title", 'give [{"title": "..."}]')
    return {
        "title": str(next(t for t in titles if t)),
        "creators": [_creator_in(c, f"datacite.creators[{i}]")
                     for i, c in enumerate(_items(dc, "creators", "datacite"))],
        "description": " ".join(str(d.get("description", "")) for d in
                                _items(dc, "descriptions", "datacite") if isinstance(d, dict)),
        "publisher": _text(dc, "publisher", "datacite", "DLHub") or "DLHub",
        "publication_year": _year(dc),
        "subjects": [str(s["subject"]) for s in _items(dc, "subjects", "datacite")
                     if isinstance(s, dict) and s.get("subject")],
        "related_identifiers": [
            {"identifier": str(r["relatedIdentifier"]),
             "identifier_type": str(r.get("relatedIdentifierType", "DOI")),
             "relation_type": str(r.get("relationType", "IsDescribedBy"))}
            for r in _items(dc, "relatedIdentifiers", "datacite")
            if isinstance(r, dict) and r.get("relatedIdentifier")],
        "rights": "; ".join(str(r.get("rights", "")) for r in
                            _items(dc, "rightsList", "datacite") if isinstance(r, dict)),
        "funding": [{"funder": str(f.get("funderName", "")),
                     "award": str((f.get("awardNumber") or {}).get("awardNumber", ""))}
                    for f in _items(dc, "fundingReferences", "datacite") if isinstance(f, dict)],
        "doi": _doi(dc),
    }


def _items(block: dict[str, Any], key: str, path: str) -> list[Any]:
    value = block.get(key) or []
    if not isinstance(value, list):
        raise record_error(f"{path}.{key}", f"should be a list, got {type(value).__name__}",
                           "give a JSON array")
    return value


def visibility_in(values: Any, group_map: dict[str, str],
                  user_map: dict[str, str]) -> list[str]:
    """Our access rules of DLHub's ``visible_to`` (the mapping rules in the module doc)."""
    if values is None:
        return ["public"]  # DLHub's default
    if not isinstance(values, list) or not values:
        raise record_error("dlhub.visible_to", "should be a non-empty list",
                           'give ["public"] or Globus URNs')
    out = []
    for i, v in enumerate(values):
        path = f"dlhub.visible_to[{i}]"
        text = str(v)
        if text == "public":
            out.append("public")
        elif text.startswith(_GLOBUS_GROUP):
            gid = text.removeprefix(_GLOBUS_GROUP)
            if gid not in group_map:
                raise record_error(path, f"Globus group {gid} has no hub group",
                                   f"pass --map-group {gid}=GROUP (a hub group: "
                                   "'dlhub-hpc groups')")
            out.append(f"group:{group_map[gid]}")
        elif text.startswith(_GLOBUS_USER):
            uid = text.removeprefix(_GLOBUS_USER)
            if uid not in user_map:
                raise record_error(path, f"Globus identity {uid} has no hub user",
                                   f"pass --map-user {uid}=USER (a user of this hub)")
            out.append(f"user:{user_map[uid]}")
        else:
            raise record_error(path, f"{text!r} is neither 'public' nor a Globus URN",
                               "use 'public' or urn:globus:groups:id:ID / "
                               "urn:globus:auth:identity:ID")
    return out


def _files_in(files: Any) -> tuple[list[str], dict[str, str]]:
    """(all files, the named ones such as model/pickle), relative to the bundle."""
    if files is None:
        return [], {}
    if isinstance(files, list):
        named: dict[str, str] = {}
        listed = [str(f) for f in files]
    elif isinstance(files, dict):
        named = {str(k): str(v) for k, v in files.items() if k != "other" and isinstance(v, str)}
        listed = [str(f) for f in _items(files, "other", "dlhub.files")] + list(named.values())
    else:
        raise record_error("dlhub.files", "should be an object or a list of paths",
                           'give {"model": FILE, "other": [FILES]}')
    absolute = [f for f in listed if f.startswith("/")]
    base = os.path.commonpath([os.path.dirname(f) for f in absolute]) if absolute else ""

    def rel(f: str) -> str:
        p = os.path.relpath(f, base) if f.startswith("/") else os.path.normpath(f)
        if p.startswith("..") or PurePosixPath(p).is_absolute():
            raise record_error("dlhub.files", f"{f!r} points outside the servable's folder",
                               "list files inside it")
        return p

    return list(dict.fromkeys(rel(f) for f in listed)), {k: rel(v) for k, v in named.items()}


def _method_in(kind: str, name: str, m: Any) -> dict[str, Any]:
    path = f"servable.methods.{name}"
    if not isinstance(m, dict):
        raise record_error(path, "a method should be an object", "give input, output, "
                           "parameters and method_details")
    details = m.get("method_details") or {}
    params = m.get("parameters") or {}
    if not isinstance(details, dict) or not isinstance(params, dict):
        raise record_error(path, "method_details and parameters should be objects",
                           "give JSON objects")
    out: dict[str, Any] = {
        "input": arg_in(m.get("input", {"type": "python object"}), f"{path}.input"),
        "output": arg_in(m.get("output", {"type": "python object"}), f"{path}.output"),
        "parameters": dict(params),
        "autobatch": _flag(details, "autobatch", f"{path}.method_details"),
        "unpack": _flag(details, "unpack", f"{path}.method_details"),
    }
    method_name = details.get("method_name")
    if kind == "python_function":
        module = details.get("module")
        if not (isinstance(module, str) and module and isinstance(method_name, str)
                and method_name):
            raise record_error(f"{path}.method_details", "needs 'module' and 'method_name'",
                               "name the function, e.g. module numpy, method_name max")
        out["function"] = f"{module}:{method_name}"
    elif kind == "torch":
        out["unpack"] = out["input"]["type"] == "tuple"  # DLHub passes a tuple as *inputs
    elif kind == "tensorflow":
        out["unpack"] = out["input"]["type"] == "tuple"
    elif kind == "sklearn" and method_name in SKLEARN_METHODS:
        out["function"] = SKLEARN_METHODS[str(method_name)]  # DLHub's shim called these
    elif isinstance(method_name, str) and method_name not in (name, "__call__"):
        out["function"] = method_name
    return out


def _flag(details: dict[str, Any], key: str, path: str) -> bool:
    value = details.get(key, False)
    if not isinstance(value, bool):
        raise record_error(f"{path}.{key}", f"should be true or false, got {value!r}",
                           "give a JSON boolean (not a string or number)")
    return value


def _model_of(kind: str, files: list[str], named: dict[str, str],
              sv: dict[str, Any]) -> str | None:
    if kind == "tensorflow":
        pb = [f for f in files if PurePosixPath(f).name == "saved_model.pb"]
        if not pb:
            raise record_error("dlhub.files.other", "no saved_model.pb listed",
                               "list the SavedModel directory's files")
        return str(PurePosixPath(pb[0]).parent)
    if kind == "keras" and "arch" in named:
        raise record_error("dlhub.files.arch", "a separate architecture file is not loaded "
                           "here", "save the model as one .keras or .h5 file and list it "
                           "as files.model")
    if kind == "keras" and (sv.get("options") or {}).get("custom_objects"):
        raise record_error("servable.options.custom_objects", "custom Keras layers are not "
                           "loaded here", "register them with keras.saving in the model's "
                           "module, or save a model without them")
    key = _FILE_KEY.get(kind)
    if key is None:
        return None
    if key not in named:
        raise record_error(f"dlhub.files.{key}", f"a {kind} servable names its file here",
                           f'give "{key}": FILE')
    return named[key]


def _dependencies(dl: dict[str, Any], sv: dict[str, Any]) -> dict[str, str]:
    deps = dl.get("dependencies") or sv.get("dependencies") or {}
    python = deps.get("python", {}) if isinstance(deps, dict) else None
    if not isinstance(python, dict):
        raise record_error("dlhub.dependencies.python", "should be an object",
                           'give {"package": "version"}')
    return {str(k): "" if v in (None, "latest", "detect") else str(v)
            for k, v in python.items()}


def _owner(dl: dict[str, Any], owner: str | None) -> str:
    name = slug(owner or _text(dl, "owner", "dlhub"))
    if not name:
        raise record_error("dlhub.owner", "the record names no owner (DLHub took it from "
                           "the Globus login)", "pass --owner NAME (your name on this hub)")
    return name


def _servable_in(sv: dict[str, Any], files: list[str], named: dict[str, str]
                 ) -> dict[str, Any]:
    shim = sv.get("shim")
    kind = SHIM_TO_TYPE.get(str(shim))
    if kind is None:
        raise record_error("servable.shim", f"{shim!r} cannot be imported",
                           f"supported shims: {', '.join(sorted(SHIM_TO_TYPE))}")
    methods = sv.get("methods")
    if not isinstance(methods, dict) or not methods:
        raise record_error("servable.methods", "no methods", 'give at least "run"')
    options = sv.get("options") or {}
    if not isinstance(options, dict):
        raise record_error("servable.options", "should be an object", "give a JSON object")
    return {
        "type": kind, "model": _model_of(kind, files, named, sv),
        "model_summary": _text(sv, "model_summary", "servable"), "options": options,
        "methods": {str(n): _method_in(kind, str(n), m) for n, m in methods.items()},
    }


def from_dlhub_json(record: Any, *, owner: str | None = None,
                    group_map: dict[str, str] | None = None,
                    user_map: dict[str, str] | None = None) -> ServableSpec:
    """Our spec of a DLHub record (the rules in the module doc), or ``RecordError``."""
    if not isinstance(record, dict):
        raise record_error("(record)", "not a JSON object", "pass one dlhub.json record")
    groups, users = group_map or {}, user_map or {}
    if isinstance(record.get(EXTENSION), dict):
        return _from_extension(record, owner, groups, users)
    dl = _block(record, "dlhub")
    kind = dl.get("type", "servable")
    if kind != "servable" or "servable" not in record:
        raise record_error("dlhub.type", f"a {kind} record, not a servable",
                           "import servable records; a pipeline needs its dlhub_hpc block")
    dc, sv = _block(record, "datacite"), _block(record, "servable")
    name = slug(_text(dl, "name", "dlhub"))
    if not name:
        raise record_error("dlhub.name", "missing", "give the servable's short name")
    files, named = _files_in(dl.get("files"))
    data = {
        "datacite": _datacite_in(dc),
        "dlhub": {"owner": _owner(dl, owner), "name": name,
                  "version": _text(dc, "version", "datacite"),
                  "domains": [str(d) for d in _items(dl, "domains", "dlhub")],
                  "visible_to": visibility_in(dl.get("visible_to"), groups, users),
                  "dependencies": _dependencies(dl, sv), "files": files},
        "servable": _servable_in(sv, files, named),
    }
    return _valid(data)


def _valid(data: dict[str, Any]) -> ServableSpec:
    try:
        return ServableSpec.from_data(data, "the imported dlhub.json record")
    except SpecError as exc:
        raise RecordError(f"{exc}; fix the record's matching field", field="(spec)") from None


def _from_extension(record: dict[str, Any], owner: str | None, groups: dict[str, str],
                    users: dict[str, str]) -> ServableSpec:
    """A record our export wrote: its ``dlhub_hpc.spec`` is the spec, exactly."""
    ext = record[EXTENSION]
    spec = ext.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("dlhub"), dict):
        raise record_error(f"{EXTENSION}.spec", "missing or not a servable spec",
                           f"remove the {EXTENSION} block to import the DLHub part alone")
    data = dict(spec) | {"dlhub": dict(spec["dlhub"])}
    if owner:
        data["dlhub"]["owner"] = slug(owner)
    rules = data["dlhub"].get("visible_to", ["public"])
    if groups or users:  # rules written as Globus URNs by hand may still be mapped
        rules = [r if not str(r).startswith("urn:") else visibility_in([r], groups, users)[0]
                 for r in rules]
    data["dlhub"]["visible_to"] = _not_wider(record, rules, groups, users)
    return _valid(data)


def _not_wider(record: dict[str, Any], rules: list[Any], groups: dict[str, str],
               users: dict[str, str]) -> list[Any]:
    """``rules`` (the block's), refused where DLHub's own part is restricted and they are
    wider: the block must never make a restricted servable more visible."""
    dl = record.get("dlhub")
    own = dl.get("visible_to") if isinstance(dl, dict) else None
    if own is None or own == ["public"] or (isinstance(own, list) and "public" in own):
        return rules  # DLHub's part is public (or silent: our export leaves restricted out)
    allowed = visibility_in(own, groups, users)  # the mapping rules apply to it too
    wider = [r for r in rules if r not in allowed]
    if wider:
        raise record_error(f"{EXTENSION}.spec.dlhub.visible_to",
                           f"{wider} is wider than dlhub.visible_to {own} (read as {allowed})",
                           f"make {EXTENSION}.spec.dlhub.visible_to a subset of "
                           "dlhub.visible_to, or remove the block")
    return rules


def to_dlhub_json(spec: ServableSpec, **options: Any) -> dict[str, Any]:
    """The DLHub record of ``spec`` (``dlhub_export.to_dlhub_json``)."""
    from dlhub_hpc.registry.dlhub_export import to_dlhub_json as export

    return export(spec, **options)
