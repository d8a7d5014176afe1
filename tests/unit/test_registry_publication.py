"""Publication in the store: identifiers, immutable versions, deprecation and withdrawal,
content-addressed bundles checked on load, and dlhub.json import and export."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dlhub_hpc.errors import BundleDigestMismatch, ServableWithdrawn, SpecError
from dlhub_hpc.examples import example_dir
from dlhub_hpc.registry import Registry
from dlhub_hpc.registry.dlhub_json import from_dlhub_json, to_dlhub_json
from dlhub_hpc.registry.identifiers import parse_identifier
from dlhub_hpc.servable.bundle import Bundle, make_bundle
from dlhub_hpc.servable.spec import ServableSpec


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "registry")
    yield reg
    reg.close()


def add_version(tmp_path: Path, n: int) -> Bundle:
    root = Path(shutil.copytree(example_dir("add"), tmp_path / f"add{n}",
                                ignore=shutil.ignore_patterns("__pycache__")))
    (root / "arith.py").write_text(f"def add(numbers):\n    return float(sum(numbers)) + {n}\n")
    return make_bundle(root)


def test_a_version_has_a_persistent_identifier_with_its_digest(
    registry: Registry, tmp_path: Path
) -> None:
    record = registry.publish(add_version(tmp_path, 0), publisher="ada")
    assert record.pid == f"demo/add@1#sha256:{record.digest}"
    assert (record.owner, record.publisher, record.status) == ("ada", "ada", "active")
    ident = parse_identifier(record.pid)
    assert (ident.name, ident.version, ident.digest) == ("demo/add", 1, record.digest)
    assert str(ident) == record.pid


@pytest.mark.parametrize("text, words", [
    ("demo/add#sha256:" + "a" * 64, "needs a version"),
    ("demo/add@1#sha256:xyz", "64 hex digits"),
    ("add@1", "owner/name"),
])
def test_bad_identifiers_say_what_they_should_look_like(text: str, words: str) -> None:
    with pytest.raises(SpecError, match=words):
        parse_identifier(text)


def test_the_name_resolves_to_the_latest_version_not_withdrawn(
    registry: Registry, tmp_path: Path
) -> None:
    for n in range(3):
        registry.publish(add_version(tmp_path, n))
    registry.set_status("demo/add", 3, "withdrawn", "wrong answers", "demo/add@2")
    assert registry.get("demo/add").version == 2
    withdrawn = registry.get("demo/add", 3)  # still resolvable, and it says why
    assert (withdrawn.status, withdrawn.reason, withdrawn.replacement) == (
        "withdrawn", "wrong answers", "demo/add@2")
    with pytest.raises(ServableWithdrawn, match=r"demo/add@3 was withdrawn: wrong answers; "
                                                r"use demo/add@2 instead") as info:
        registry.resolve("demo/add", 3)
    assert info.value.details["replacement"] == "demo/add@2"


def test_a_deprecated_version_still_resolves_for_running(
    registry: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry.publish(add_version(tmp_path, 0))
    registry.set_status("demo/add", 1, "deprecated", "use the faster one")
    assert registry.resolve("demo/add").status == "deprecated"
    assert "deprecated: use the faster one" in caplog.text


def test_a_status_change_needs_a_reason(registry: Registry, tmp_path: Path) -> None:
    registry.publish(add_version(tmp_path, 0))
    with pytest.raises(SpecError, match="give a reason"):
        registry.set_status("demo/add", 1, "withdrawn", " ")


def test_versions_are_immutable_a_change_is_a_new_version(
    registry: Registry, tmp_path: Path
) -> None:
    first = registry.publish(add_version(tmp_path, 0))
    second = registry.publish(add_version(tmp_path, 1))
    assert second.version == 2 and second.digest != first.digest
    assert registry.get("demo/add", 1).digest == first.digest
    assert registry.bundle_bytes(first.digest) == add_version(tmp_path / "again", 0).data


def test_a_bundle_changed_on_disk_is_refused_on_load(registry: Registry, tmp_path: Path) -> None:
    record = registry.publish(add_version(tmp_path, 0))
    path = registry.root / "bundles" / f"{record.digest}.tar"
    path.write_bytes(path.read_bytes()[:-1] + b"X")
    with pytest.raises(BundleDigestMismatch, match="changed or corrupted") as info:
        registry.bundle_bytes(record.digest)
    assert info.value.details["expected"] == record.digest


def test_an_old_store_gains_the_new_columns(tmp_path: Path) -> None:
    import sqlite3

    root = tmp_path / "old"
    (root / "bundles").mkdir(parents=True)
    db = sqlite3.connect(root / "registry.sqlite")
    db.execute("CREATE TABLE servables (name TEXT NOT NULL, version INTEGER NOT NULL, "
               "digest TEXT NOT NULL, spec TEXT NOT NULL, published_at REAL NOT NULL, "
               "PRIMARY KEY (name, version))")
    spec = make_bundle(example_dir("add")).spec
    db.execute("INSERT INTO servables VALUES ('demo/add', 1, 'd', ?, 0)",
               (spec.model_dump_json(),))
    db.commit()
    db.close()
    reg = Registry(root)
    try:
        assert reg.get("demo/add").status == "active"
    finally:
        reg.close()


DLHUB_RECORD = {
    "datacite": {
        "titles": [{"title": "Formation enthalpy of crystalline materials"}],
        "creators": [{"creatorName": "Ward, Logan", "affiliations": ["Argonne"],
                      "nameIdentifiers": [{"nameIdentifier": "0000-0002-1825-0097",
                                           "nameIdentifierScheme": "ORCID"}]}],
        "publisher": "DLHub", "publicationYear": "2019",
        "descriptions": [{"description": "Random forest on OQMD.",
                          "descriptionType": "Abstract"}],
        "subjects": [{"subject": "materials"}],
        "relatedIdentifiers": [{"relatedIdentifier": "10.1038/npjcompumats.2016.28",
                                "relatedIdentifierType": "DOI",
                                "relationType": "IsDescribedBy"}],
        "identifier": {"identifier": "10.YET/UNASSIGNED", "identifierType": "DOI"},
        "rightsList": [{"rights": "CC-BY 4.0"}],
        "fundingReferences": [{"funderName": "DOE", "awardNumber": {"awardNumber": "X1"}}],
    },
    "dlhub": {"owner": "LoganW", "name": "oqmd_model", "version": "0.1", "domains": ["materials"],
              "visible_to": ["public"], "files": {"model": "model.pkl", "other": []},
              "dependencies": {"python": {"scikit-learn": "0.21.3"}}},
    "servable": {
        "type": "Scikit-learn estimator", "shim": "sklearn.ScikitLearnServable",
        "model_summary": "RandomForestRegressor(n_estimators=100)",
        "methods": {"run": {
            "input": {"type": "ndarray", "shape": [None, 145], "description": "features"},
            "output": {"type": "ndarray", "shape": [None], "description": "eV/atom"},
            "parameters": {}, "method_details": {"method_name": "predict"}}},
    },
}


def test_a_dlhub_record_is_imported_and_exported_again() -> None:
    spec = from_dlhub_json(json.loads(json.dumps(DLHUB_RECORD)))
    dc = spec.datacite
    assert spec.full_name == "loganw/oqmd_model"
    assert dc.creators[0].orcid == "0000-0002-1825-0097"
    assert dc.dois() == ["10.1038/npjcompumats.2016.28"] and dc.doi is None
    assert spec.servable.methods["run"].input.shape == [None, 145]
    assert spec.servable.methods["run"].function == "predict"
    assert spec.dlhub.dependencies == {"scikit-learn": "0.21.3"}
    out = to_dlhub_json(spec)
    assert out["datacite"]["titles"] == DLHUB_RECORD["datacite"]["titles"]
    assert out["datacite"]["creators"][0]["nameIdentifiers"][0]["nameIdentifier"] == (
        "0000-0002-1825-0097")
    assert out["servable"]["shim"] == "sklearn.ScikitLearnServable"
    assert from_dlhub_json(out) == spec  # a round trip loses nothing we model


def test_an_unsupported_dlhub_shim_names_the_supported_ones() -> None:
    record = json.loads(json.dumps(DLHUB_RECORD))
    record["servable"]["shim"] = "r.RServable"
    with pytest.raises(SpecError, match=r"cannot be imported; supported shims: .*sklearn"):
        from_dlhub_json(record)


def test_hand_written_short_forms_are_accepted() -> None:
    data = yaml.safe_load((example_dir("add") / "servable.yaml").read_text())
    data["datacite"].update(related_identifiers=["https://doi.org/10.1000/ABC",
                                                 "https://example.org/code"],
                            doi="doi:10.5555/self")
    dc = ServableSpec.from_data(data).datacite
    assert dc.creators[0].name == "Demo, Ada"
    assert [r.identifier_type for r in dc.related_identifiers] == ["DOI", "URL"]
    assert dc.dois() == ["10.5555/self", "10.1000/abc"]


@pytest.mark.parametrize("field, value, words", [
    ("doi", "not-a-doi", "is not a DOI"),
    ("creators", [{"name": "X", "orcid": "123"}], "String should match pattern"),
])
def test_bad_citation_fields_are_spec_errors(field: str, value: object, words: str) -> None:
    data = yaml.safe_load((example_dir("add") / "servable.yaml").read_text())
    data["datacite"][field] = value
    with pytest.raises(SpecError, match=words):
        ServableSpec.from_data(data)
