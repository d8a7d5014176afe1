"""Export a servable as a DLHub record that validates against DLHub's published schema
(``dlhub_schemas``: ``servable.json`` or ``pipeline.json`` with the DataCite and dlhub
definitions).

DLHub's blocks hold only what its schema allows: DLHub's argument types (``dlhub_types``),
a ``run`` method (the servable's ``run``, else its first method under that name too),
``publicationYear``, and ``visible_to`` only when public (DLHub's schema takes Globus URNs
only; a restricted servable leaves it out, never widened). ``dlhub.version`` is the
version of the tool that wrote the record, as DLHub's SDK writes its own; the servable's
label is ``datacite.version``. Everything else (batching, ``deterministic``, MPI ``ranks``,
pipeline steps, ``compile_trees``, the exact types, the hub's access rules) is in the
namespaced ``dlhub_hpc`` block, so export then import gives back the same spec.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from dlhub_hpc._version import __version__
from dlhub_hpc.registry.dlhub_json import EXTENSION, SHIM_TO_TYPE
from dlhub_hpc.registry.dlhub_types import arg_out
from dlhub_hpc.servable.spec import MethodSpec, ServableSpec

logger = logging.getLogger(__name__)

TYPE_TO_SHIM = {v: k for k, v in SHIM_TO_TYPE.items()} | {
    "onnx": "dlhub_hpc.OnnxServable",  # no DLHub shim: DLHub cannot run it, the record says so
}
_HUMAN = {"python_function": "Python static method", "python_class_method":
          "Python class method", "sklearn": "Scikit-learn estimator", "torch": "Torch Model",
          "keras": "Keras Model", "tensorflow": "TensorFlow Model", "onnx": "ONNX Model"}
_FILE_KEY = {"python_class_method": "pickle", "sklearn": "model", "torch": "model",
             "keras": "model", "onnx": "model"}
FORMAT = 1


def _creator_out(name: str, affiliations: list[str], orcid: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"creatorName": name, "affiliations": affiliations}
    family, _, given = name.partition(", ")
    if given:
        entry.update(familyName=family, givenName=given)
    if orcid:
        entry["nameIdentifiers"] = [{"nameIdentifier": orcid, "nameIdentifierScheme": "ORCID"}]
    return entry


def datacite_out(spec: ServableSpec, year: int | None = None) -> dict[str, Any]:
    dc = spec.datacite
    out: dict[str, Any] = {
        "identifier": {"identifier": dc.doi or "10.YET/UNASSIGNED", "identifierType": "DOI"},
        "titles": [{"title": dc.title}],
        "creators": [_creator_out(c.name, c.affiliations, c.orcid) for c in dc.creators],
        "publisher": dc.publisher,
        "publicationYear": str(dc.publication_year or year
                               or datetime.now(timezone.utc).year),
        "resourceType": {"resourceTypeGeneral": "InteractiveResource"},
        "descriptions": [{"description": dc.description, "descriptionType": "Abstract"}]
        if dc.description else [],
        "subjects": [{"subject": s} for s in dc.subjects],
        "relatedIdentifiers": [
            {"relatedIdentifier": r.identifier, "relatedIdentifierType": r.identifier_type,
             "relationType": r.relation_type} for r in dc.related_identifiers],
        "rightsList": [{"rights": dc.rights}] if dc.rights else [],
        "fundingReferences": [{"funderName": f.funder, "awardNumber": {"awardNumber": f.award}}
                              for f in dc.funding],
    }
    if spec.dlhub.version:
        out["version"] = spec.dlhub.version
    return out


def _method_out(spec: ServableSpec, m: MethodSpec, name: str) -> dict[str, Any]:
    details: dict[str, Any] = {"method_name": m.function or name}
    if spec.servable.type == "python_function" and m.function:
        module, _, func = m.function.partition(":")
        details = {"module": module, "method_name": func, "autobatch": m.autobatch}
    elif spec.servable.type == "torch":
        details = {"method_name": "__call__" if m.function in (None, "forward") else m.function}
    if m.unpack:
        details["unpack"] = True
    return {"input": arg_out(m.input), "output": arg_out(m.output),
            "parameters": dict(m.parameters), "method_details": details,
            **({"description": m.description} if m.description else {})}


def _dlhub_out(spec: ServableSpec, visible_to: list[str], kind: str) -> dict[str, Any]:
    dl = spec.dlhub
    out: dict[str, Any] = {
        "version": __version__, "owner": dl.owner, "name": dl.name, "domains": dl.domains,
        "type": kind, "dependencies": {"python": dl.dependencies},
    }
    if visible_to == ["public"]:
        out["visible_to"] = ["public"]
    key, model = _FILE_KEY.get(spec.servable.type), spec.servable.model
    named = {key: model} if key and model else {}
    out["files"] = named | {"other": [f for f in dl.files if f != model]}
    return out


def to_dlhub_json(spec: ServableSpec, *, visible_to: list[str] | None = None,
                  year: int | None = None) -> dict[str, Any]:
    """The DLHub record of ``spec``: a servable record, or a pipeline record for a pipeline.

    ``visible_to``: the access rules now (default: the spec's); ``year``: the publication
    year when the spec gives none (default: this year).
    """
    rules = list(visible_to if visible_to is not None else spec.dlhub.visible_to)
    kind = "pipeline" if spec.servable.type == "pipeline" else "servable"
    exact = spec.model_dump(mode="json", exclude_defaults=True)
    exact["dlhub"]["visible_to"] = rules
    out: dict[str, Any] = {"datacite": datacite_out(spec, year),
                           "dlhub": _dlhub_out(spec, rules, kind),
                           EXTENSION: {"format": FORMAT, "spec": exact}}
    if kind == "pipeline":
        out["pipeline"] = _pipeline_out(spec)
    else:
        out["servable"] = _servable_out(spec)
    return out


def _servable_out(spec: ServableSpec) -> dict[str, Any]:
    block = spec.servable
    methods = {n: _method_out(spec, m, n) for n, m in block.methods.items()}
    if "run" not in methods:  # DLHub's schema requires run: the first method, also as run
        methods = {"run": methods[next(iter(methods))]} | methods
    out: dict[str, Any] = {"type": _HUMAN.get(block.type, block.type),
                           "shim": TYPE_TO_SHIM.get(block.type, f"dlhub_hpc.{block.type}"),
                           "methods": methods, "options": dict(block.options)}
    if block.type == "sklearn" and "serialization_method" not in out["options"]:
        joblib = str(block.model).endswith(".joblib")
        out["options"]["serialization_method"] = "joblib" if joblib else "pickle"
    if block.model_summary:
        out["model_summary"] = block.model_summary
    return out


def _pipeline_out(spec: ServableSpec) -> dict[str, Any]:
    steps = []
    for stage in spec.servable.steps or []:
        for member in stage.members:
            author, _, name = member.servable.partition("/")
            steps.append({"author": author, "name": name, "description": member.ref})
    return {"steps": steps}
