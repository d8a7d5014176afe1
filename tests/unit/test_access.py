"""Identities, groups and visibility rules, on a registry in tmp_path."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dlhub_hpc.errors import ConfigError, PermissionDenied
from dlhub_hpc.examples import example_dir
from dlhub_hpc.registry import Registry
from dlhub_hpc.registry.access import AccessControl
from dlhub_hpc.security.keys import KeyPair
from dlhub_hpc.servable.bundle import make_bundle


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "registry")
    yield reg
    reg.close()


@pytest.fixture
def access(registry: Registry) -> AccessControl:
    return AccessControl(registry, admin="root")


def publish(registry: Registry, tmp_path: Path, visible_to: list[str], by: str) -> str:
    root = Path(shutil.copytree(example_dir("add"), tmp_path / f"add-{len(visible_to)}-{by}",
                                ignore=shutil.ignore_patterns("__pycache__")))
    spec = yaml.safe_load((root / "servable.yaml").read_text())
    spec["dlhub"]["visible_to"] = visible_to
    (root / "servable.yaml").write_text(yaml.safe_dump(spec))
    return registry.publish(make_bundle(root), publisher=by).name


def test_keys_map_to_identities_one_key_one_identity(access: AccessControl) -> None:
    alice, bob = KeyPair.generate(), KeyPair.generate()
    access.add_identity("alice", alice.public)
    assert access.identity_for_key(alice.public) == "alice"
    assert access.identity_for_key(bob.public) is None
    with pytest.raises(ConfigError, match="already belongs to 'alice'"):
        access.add_identity("bob", alice.public)
    with pytest.raises(ConfigError, match="not a CurveZMQ public key"):
        access.add_identity("bob", "short")
    access.remove_identity("alice")
    assert access.identity_for_key(alice.public) is None
    with pytest.raises(ConfigError, match="no identity named"):
        access.remove_identity("alice")


def test_identities_survive_a_restart(registry: Registry, access: AccessControl) -> None:
    pair = KeyPair.generate()
    access.add_identity("alice", pair.public)
    access.set_group("chem", ["alice"])
    again = AccessControl(registry, admin="root")
    assert again.identity_for_key(pair.public) == "alice"
    assert again.groups() == {"chem": ["alice"]}


@pytest.mark.parametrize("visible_to, bob_sees", [
    (["public"], True),
    ([], False),
    (["user:bob"], True),
    (["user:carol"], False),
    (["group:chem"], True),
    (["group:bio"], False),
])
def test_each_rule_decides_who_sees_it(
    registry: Registry, access: AccessControl, tmp_path: Path,
    visible_to: list[str], bob_sees: bool,
) -> None:
    access.set_group("chem", ["bob"])
    name = publish(registry, tmp_path, visible_to, by="alice")
    access.rules_changed()
    assert access.can_see("bob", name) is bob_sees
    assert access.can_see("alice", name) and access.can_see("root", name)  # owner, admin
    if not bob_sees:
        with pytest.raises(PermissionDenied, match="'bob' may not use demo/add"):
            access.check_see("bob", name)


def test_only_the_owner_or_admin_manage_a_servable(
    registry: Registry, access: AccessControl, tmp_path: Path
) -> None:
    name = publish(registry, tmp_path, ["public"], by="alice")
    access.rules_changed()
    access.check_manage("alice", name)
    access.check_manage("root", name)
    with pytest.raises(PermissionDenied, match="belongs to 'alice'; 'bob' may not change it"):
        access.check_manage("bob", name)
    access.check_manage("bob", "bob/new-one")  # a new name: the first publisher owns it


def test_the_owner_changes_visibility_and_it_holds(
    registry: Registry, access: AccessControl, tmp_path: Path
) -> None:
    name = publish(registry, tmp_path, [], by="alice")
    access.rules_changed()
    assert not access.can_see("bob", name)
    registry.set_visibility(name, ["user:bob"])
    access.rules_changed()
    assert access.can_see("bob", name)
    assert registry.get(name).visible_to == ["user:bob"]
