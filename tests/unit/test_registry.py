"""The publication store: versions, lookups and bundles, in a SQLite file under tmp_path."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from dlhub_hpc.broker.state import ServableInfo
from dlhub_hpc.errors import ServableNotFound, SpecError
from dlhub_hpc.examples import example_dir
from dlhub_hpc.registry import Registry
from dlhub_hpc.servable.bundle import Bundle, make_bundle


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "registry")
    yield reg
    reg.close()


@pytest.fixture
def add_v1() -> Bundle:
    return make_bundle(example_dir("add"))


@pytest.fixture
def add_v2(tmp_path: Path) -> Bundle:
    root = Path(shutil.copytree(example_dir("add"), tmp_path / "add",
                                ignore=shutil.ignore_patterns("__pycache__")))
    (root / "arith.py").write_text("def add(numbers):\n    return float(sum(numbers)) + 0.0\n")
    return make_bundle(root)


def test_versions_count_up_from_one_per_name(
    registry: Registry, add_v1: Bundle, add_v2: Bundle,
) -> None:
    first = registry.publish(add_v1)
    assert (first.name, first.version, first.ref) == ("demo/add", 1, "demo/add@1")
    assert registry.publish(make_bundle(example_dir("noop"))).version == 1
    second = registry.publish(add_v2)
    assert (second.version, second.digest) == (2, add_v2.digest)
    assert second.digest != first.digest


def test_republishing_the_latest_bundle_keeps_its_version(
    registry: Registry, add_v1: Bundle,
) -> None:
    first = registry.publish(add_v1)
    again = registry.publish(make_bundle(example_dir("add")))
    assert again == first


def test_republishing_an_older_bundle_makes_a_new_version(
    registry: Registry, add_v1: Bundle, add_v2: Bundle,
) -> None:
    registry.publish(add_v1)
    registry.publish(add_v2)
    back = registry.publish(add_v1)
    assert (back.version, back.digest) == (3, add_v1.digest)


def test_get_returns_the_latest_or_the_version_asked_for(
    registry: Registry, add_v1: Bundle, add_v2: Bundle,
) -> None:
    registry.publish(add_v1)
    registry.publish(add_v2)
    assert registry.get("demo/add").version == 2
    old = registry.get("demo/add", 1)
    assert (old.version, old.digest, old.spec) == (1, add_v1.digest, add_v1.spec)


def test_a_missing_version_lists_the_published_ones(
    registry: Registry, add_v1: Bundle, add_v2: Bundle,
) -> None:
    registry.publish(add_v1)
    registry.publish(add_v2)
    with pytest.raises(ServableNotFound) as info:
        registry.get("demo/add", 7)
    assert info.value.message == "demo/add has no version 7; published versions: [1, 2]"
    assert info.value.details == {"servable": "demo/add", "version": 7, "versions": [1, 2]}


def test_an_unknown_name_says_how_to_publish(registry: Registry) -> None:
    with pytest.raises(ServableNotFound, match="no servable named 'demo/none' is published; "
                       "publish it with 'dlhub-hpc publish DIR'"):
        registry.get("demo/none")


def test_list_gives_the_latest_version_of_each_name_sorted(
    registry: Registry, add_v1: Bundle, add_v2: Bundle,
) -> None:
    assert registry.list() == []
    registry.publish(make_bundle(example_dir("noop")))
    registry.publish(add_v1)
    registry.publish(add_v2)
    assert [r.ref for r in registry.list()] == ["demo/add@2", "demo/noop@1"]


def test_bundles_are_stored_by_digest(registry: Registry, add_v1: Bundle) -> None:
    record = registry.publish(add_v1)
    assert registry.bundle_bytes(record.digest) == add_v1.data
    with pytest.raises(SpecError, match=r"bundle 0+ is missing"):
        registry.bundle_bytes("0" * 64)


def test_publications_survive_reopening(tmp_path: Path, add_v1: Bundle) -> None:
    first = Registry(tmp_path / "reg")
    published = first.publish(add_v1)
    first.close()
    second = Registry(tmp_path / "reg")
    try:
        assert second.get("demo/add") == published
        assert second.bundle_bytes(published.digest) == add_v1.data
    finally:
        second.close()


def test_records_feed_the_broker(registry: Registry, add_v1: Bundle) -> None:
    info = ServableInfo.from_record(registry.publish(add_v1))
    assert (info.key, info.digest, info.default_method) == (
        ("demo/add", 1), add_v1.digest, "run")


def test_repr_names_the_root(tmp_path: Path) -> None:
    assert repr(Registry(tmp_path)) == f"Registry(root={str(tmp_path)!r})"
