"""Search with SQLite FTS5: ranking, filters, DOIs, and only the resolvable version."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from dlhub_hpc.errors import SpecError
from dlhub_hpc.examples import example_dir
from dlhub_hpc.registry import Registry
from dlhub_hpc.registry.search import SearchQuery, match_expression
from dlhub_hpc.servable.bundle import make_bundle


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "registry")
    yield reg
    reg.close()


def publish(registry: Registry, tmp_path: Path, name: str, owner: str = "demo",
            **datacite: Any) -> None:
    root = Path(shutil.copytree(example_dir("add"), tmp_path / f"{owner}-{name}",
                                ignore=shutil.ignore_patterns("__pycache__")))
    spec = yaml.safe_load((root / "servable.yaml").read_text())
    domains = datacite.pop("domains", [])
    spec["dlhub"].update(owner=owner, name=name, domains=domains)
    spec["datacite"].update(datacite)
    (root / "servable.yaml").write_text(yaml.safe_dump(spec))
    registry.publish(make_bundle(root))


@pytest.fixture
def catalogue(registry: Registry, tmp_path: Path) -> Registry:
    publish(registry, tmp_path, "oqmd", owner="ward",
            title="Formation enthalpy from composition",
            description="A random forest trained on OQMD band gap and enthalpy data.",
            creators=[{"name": "Ward, Logan", "affiliations": ["Argonne"]}],
            subjects=["materials", "DFT"], domains=["materials science"],
            related_identifiers=["10.1038/npjcompumats.2016.28"])
    publish(registry, tmp_path, "cifar", owner="chard",
            title="CIFAR-10 image classifier", description="Convolutional network.",
            creators=["Chard, Ryan"], domains=["computer vision"])
    publish(registry, tmp_path, "gaps", owner="ward",
            title="Band gap regressor",
            description="Predicts the band gap; mentions enthalpy once.",
            creators=["Ward, Logan"], domains=["materials science"])
    return registry


def names(registry: Registry, **query: Any) -> list[str]:
    return [r.name for r, _ in registry.search(SearchQuery(**query))]


def test_free_text_is_ranked_title_hits_first(catalogue: Registry) -> None:
    assert names(catalogue, text="enthalpy") == ["ward/oqmd", "ward/gaps"]
    assert names(catalogue, text="band gap") == ["ward/gaps", "ward/oqmd"]


def test_every_word_must_match_somewhere(catalogue: Registry) -> None:
    assert names(catalogue, text="random forest OQMD") == ["ward/oqmd"]
    assert names(catalogue, text="random forest cifar") == []


@pytest.mark.parametrize("text, expected", [
    ("Chard", ["chard/cifar"]),  # creators
    ("Argonne", ["ward/oqmd"]),  # affiliations
    ("DFT", ["ward/oqmd"]),  # subjects
    ("vision", ["chard/cifar"]),  # domains
    ("numbers", ["chard/cifar", "ward/gaps", "ward/oqmd"]),  # method summaries
    ("conv*", ["chard/cifar"]),  # a prefix
])
def test_text_covers_each_field(catalogue: Registry, text: str, expected: list[str]) -> None:
    assert sorted(names(catalogue, text=text)) == expected


def test_filters_narrow_the_results(catalogue: Registry) -> None:
    assert names(catalogue, owner="chard") == ["chard/cifar"]
    assert names(catalogue, domain="Materials Science") == ["ward/gaps", "ward/oqmd"]
    assert names(catalogue, type="sklearn") == []
    assert names(catalogue, type="python_function", text="enthalpy", owner="ward",
                 domain="materials science") == ["ward/oqmd", "ward/gaps"]


def test_a_doi_is_searchable_by_filter_and_by_text(catalogue: Registry) -> None:
    assert names(catalogue, doi="https://doi.org/10.1038/NPJCOMPUMATS.2016.28") == ["ward/oqmd"]
    assert names(catalogue, text="10.1038/npjcompumats.2016.28") == ["ward/oqmd"]
    with pytest.raises(SpecError, match="is not a DOI"):
        names(catalogue, doi="nope")


def test_publication_date_filters(catalogue: Registry) -> None:
    today = date.today()
    assert len(names(catalogue, published_after=today - timedelta(days=1))) == 3
    assert names(catalogue, published_before=today - timedelta(days=1)) == []


def test_only_the_version_the_name_resolves_to_is_found(
    catalogue: Registry, tmp_path: Path
) -> None:
    publish(catalogue, tmp_path / "v2", "cifar", owner="chard", title="CIFAR-100 classifier",
            creators=["Chard, Ryan"])
    assert [(r.name, r.version) for r, _ in catalogue.search(SearchQuery(text="cifar"))] == [
        ("chard/cifar", 2)]
    catalogue.set_status("chard/cifar", 2, "withdrawn", "mislabelled")
    found = catalogue.search(SearchQuery(text="CIFAR"))
    assert [(r.name, r.version) for r, _ in found] == [("chard/cifar", 1)]


def test_punctuation_is_not_fts_syntax() -> None:
    assert match_expression('band "gap" -x AND*') == '"band" """gap""" "-x" "AND"*'
    assert match_expression("   ") == ""
