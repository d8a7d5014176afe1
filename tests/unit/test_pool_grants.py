"""Pooling grants: an owner allows other owners' pools to serve a servable.

The grants in the registry, the hub's ``pooling`` operation and gate with two identities,
the broker's pool books (a grant taken back stops the next batch), who a list pool is
started for, the redaction of a list that mixes owners, and the ``pooling`` command.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from dlhub_hpc.broker.pools import credential_owner
from dlhub_hpc.errors import ConfigError, PermissionDenied
from dlhub_hpc.examples import example_dir
from dlhub_hpc.hubops.limits import pool_owner
from dlhub_hpc.hubops.visibility import Viewer
from dlhub_hpc.registry import Registry
from dlhub_hpc.registry.access import AccessControl
from dlhub_hpc.registry.pool_grants import PoolGrants, grant_entry
from dlhub_hpc.security.hub import HubSecurity
from dlhub_hpc.servable.bundle import make_bundle
from dlhub_hpc.servable.pools import PoolSpec
from tests.unit.test_broker_state import batches
from tests.unit.test_pools import PoolHub, info, loads

pytestmark = pytest.mark.usefixtures("keys_dir")  # keys in tmp_path, not the user's


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "registry")
    yield reg
    reg.close()


def publish(registry: Registry, tmp_path: Path, ref: str, visible_to: list[str]) -> str:
    owner, _, name = ref.partition("/")
    root = Path(shutil.copytree(example_dir("add"), tmp_path / "src" / ref,
                                ignore=shutil.ignore_patterns("__pycache__")))
    spec = yaml.safe_load((root / "servable.yaml").read_text())
    spec["dlhub"].update(owner=owner, name=name, visible_to=visible_to)
    (root / "servable.yaml").write_text(yaml.safe_dump(spec))
    return registry.publish(make_bundle(root), publisher=owner).name


class Named:
    def __init__(self, name: str) -> None:
        self.name = name


@pytest.fixture
def hub(tmp_path: Path, registry: Registry) -> tuple[HubSecurity, list[str]]:
    """A hub's security whose admin is root; alice has a private servable and a public one,
    bob one of his; the names it invalidated."""
    publish(registry, tmp_path, "alice/x", [])
    publish(registry, tmp_path, "alice/pub", ["public"])
    publish(registry, tmp_path, "bob/y", [])
    invalidated: list[str] = []
    security = HubSecurity(tmp_path / "home", registry, invalidated.append, admin="root")
    security.setup()
    return security, invalidated


def worker(security: HubSecurity, owner: str) -> str:
    return f"worker:{owner}:{security.worker_credentials.issue(owner).public_key}"


# ---- the registry ------------------------------------------------------------------------

def test_grants_are_stored_kept_across_a_restart_and_read_groups(
        tmp_path: Path, registry: Registry) -> None:
    access = AccessControl(registry, admin="root")
    grants = PoolGrants(registry, access.groups_of)
    assert grants.of("alice/x") == [] and not grants.allows("alice/x", "bob")
    assert grants.change("alice/x", ["bob", "group:lab"], []) == ["group:lab", "user:bob"]
    assert grants.allows("alice/x", "bob") and not grants.allows("alice/x", "carol")
    assert not grants.allows("alice/other", "bob")  # per servable
    access.set_group("lab", ["carol"])
    assert grants.allows("alice/x", "carol")  # a member of a group it allowed
    assert grants.change("alice/x", [], ["user:bob"]) == ["group:lab"]
    again = PoolGrants(registry, access.groups_of)  # a restarted hub reads them back
    assert again.of("alice/x") == ["group:lab"] and not again.allows("alice/x", "bob")


@pytest.mark.parametrize("entry", ["team:lab", "bob smith", "group:a@b", "", "user:"])
def test_a_malformed_entry_says_what_an_entry_is(entry: str) -> None:
    with pytest.raises(ConfigError, match=r"may use letters|pooling entry is"):
        grant_entry(entry)


def test_one_entry_both_allowed_and_denied_is_refused(registry: Registry) -> None:
    grants = PoolGrants(registry, lambda user: ())
    with pytest.raises(ConfigError, match="both allowed and denied"):
        grants.change("alice/x", ["bob"], ["user:bob"])
    assert grants.of("alice/x") == []


# ---- the hub's operation and gate, two identities ----------------------------------------

def test_only_the_owner_or_the_admin_changes_grants_and_the_gate_follows_them(
        hub: tuple[HubSecurity, list[str]]) -> None:
    security, invalidated = hub
    bob_worker = worker(security, "bob")
    alice_x = Named("alice/x")
    assert not security.may_serve(bob_worker, alice_x, pooled=True)
    with pytest.raises(PermissionDenied, match="belongs to 'alice'"):
        security.pooling({"caller": "bob", "servable": "alice/x", "allow": ["bob"]})
    assert security.grants.of("alice/x") == []

    shown = security.pooling({"caller": "alice", "servable": "alice/x@1", "allow": ["bob"]})
    assert shown == {"servable": "alice/x", "owner": "alice", "pooled_by": ["user:bob"]}
    assert invalidated == ["alice/x"]
    assert security.may_serve(bob_worker, alice_x, pooled=True)
    assert security.pool_granted("bob", alice_x) and not security.pool_granted("carol", alice_x)
    # a worker of its own is asked once, at its Hello: a grant never counts for it
    assert not security.may_serve(bob_worker, alice_x)
    # a grant is no visibility: bob still may not see, run or be shown it
    assert not security.may_see("bob", "alice/x")
    with pytest.raises(PermissionDenied, match="may not use alice/x"):
        security.pooling({"caller": "bob", "servable": "alice/x"})
    assert security.pooling({"caller": "root", "servable": "alice/x"})["pooled_by"] == [
        "user:bob"]

    security.pooling({"caller": "root", "servable": "alice/x", "deny": ["bob"]})  # the admin
    assert not security.may_serve(bob_worker, alice_x, pooled=True)
    assert security.may_serve(worker(security, "alice"), alice_x)
    assert security.may_serve(worker(security, "root"), alice_x)


def test_a_grant_names_a_published_servable(hub: tuple[HubSecurity, list[str]]) -> None:
    security, _ = hub
    with pytest.raises(Exception, match="alice/nothing"):
        security.pooling({"caller": "alice", "servable": "alice/nothing", "allow": ["bob"]})
    assert security.grants.of("alice/nothing") == []


def test_the_pooling_command_shows_and_changes_grants_as_its_caller(
        hub: tuple[HubSecurity, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    from dlhub_hpc.cli import cli

    security, _ = hub
    caller = {"name": "alice"}

    class Calls:
        def pooling(self, servable: str, allow: list[str], deny: list[str]) -> Any:
            return security.pooling({"caller": caller["name"], "servable": servable,
                                     "allow": allow, "deny": deny})

    @contextlib.contextmanager
    def client_from(ctx: Any) -> Iterator[Calls]:
        yield Calls()

    monkeypatch.setattr("dlhub_hpc.cli.publication.client_from", client_from)
    runner = CliRunner()
    shown = runner.invoke(cli, ["pooling", "alice/x"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    assert "Only alice's pools serve it" in shown.output
    changed = runner.invoke(cli, ["pooling", "alice/x", "--allow", "bob", "--allow",
                                  "group:lab"], terminal_width=200)
    assert changed.exit_code == 0, changed.output
    assert "bob" in changed.output and "group:lab" in changed.output
    assert security.grants.of("alice/x") == ["group:lab", "user:bob"]
    caller["name"] = "bob"
    refused = runner.invoke(cli, ["pooling", "alice/x", "--deny", "group:lab"])
    assert refused.exit_code != 0 and isinstance(refused.exception, PermissionDenied)
    assert security.grants.of("alice/x") == ["group:lab", "user:bob"]


# ---- who a list pool is started for ------------------------------------------------------

def test_a_list_pool_naming_another_owners_servable_needs_its_grant(
        hub: tuple[HubSecurity, list[str]]) -> None:
    security, _ = hub
    mixed = PoolSpec.parse("bob/y,alice/x")  # a spec may name several owners' servables
    with pytest.raises(PermissionDenied) as refused:
        pool_owner(security, mixed, "bob")
    said = refused.value.message
    assert "alice runs 'dlhub-hpc pooling alice/x --allow bob'" in said and "bob/y" not in (
        said.partition("serve them:")[2])
    security.pooling({"caller": "alice", "servable": "alice/x", "allow": ["bob"]})
    assert pool_owner(security, mixed, "bob") == "bob"
    assert pool_owner(security, PoolSpec.parse("alice/x"), "bob") == "bob"  # hers alone too
    assert pool_owner(security, mixed) == "bob"  # the admin's start: the owner all allow
    assert pool_owner(security, PoolSpec.parse("alice/x,alice/pub")) == "alice"
    with pytest.raises(PermissionDenied, match="pooling alice/pub --allow bob"):
        pool_owner(security, PoolSpec.parse("alice/x,alice/pub"), "bob")


def test_a_refused_list_does_not_say_whether_a_name_it_may_not_see_exists(
        hub: tuple[HubSecurity, list[str]]) -> None:
    security, _ = hub
    said = []
    for name in ("alice/x", "alice/never-published"):  # private, and none at all
        with pytest.raises(PermissionDenied) as refused:
            pool_owner(security, PoolSpec.parse(name), "bob")
        said.append(refused.value.message.replace(name, "NAME"))
    assert said[0] == said[1]


def test_pool_text_redacts_each_owners_hidden_servables(
        hub: tuple[HubSecurity, list[str]]) -> None:
    security, _ = hub
    pool = PoolSpec.parse("bob/y,alice/x,alice/pub")
    assert Viewer(security.access, "carol", False).pool_text(pool) == (
        "alice/pub + 2 hidden servables of alice, bob")
    assert Viewer(security.access, "bob", False).pool_text(pool) == (
        "bob/y,alice/pub + 1 hidden servable of alice")


# ---- the broker's pool books -------------------------------------------------------------

class Granting:
    """The hub's rules over a dict of grants: a credential serves its owner's servables,
    and, pooled, those whose owners allowed its owner; the admin's serves every one."""

    def __init__(self) -> None:
        self.grants: dict[str, set[str]] = {}

    def granted(self, owner: str, i: Any) -> bool:
        return owner in self.grants.get(i.name, set())

    def authorize(self, user: str, i: Any) -> None: ...

    def may_see(self, user: str, name: str) -> bool:
        return True

    def may_serve(self, user: str, i: Any, pooled: bool = False) -> bool:
        owner = credential_owner(user) or ""
        return owner in (i.owner, "admin") or (pooled and self.granted(owner, i))

    def credential_live(self, user: str) -> bool:
        return True


class CredentialedHub(PoolHub):
    """A ``PoolHub`` whose workers send every message with the credential they joined with."""

    users: dict[str, str]

    def send(self, wid: str, msg: Any, user: str = "") -> list[Any]:
        self.__dict__.setdefault("users", {})
        user = self.users.setdefault(wid, user)
        return super().send(wid, msg, user)


def granting_hub(*names: str) -> tuple[PoolHub, Granting]:
    gate = Granting()
    pools = CredentialedHub(*(info(n, public=True) for n in names), gate=gate)
    pools.state.pools.granted = gate.granted
    return pools, gate


def test_bobs_pool_takes_alices_servable_only_while_she_allows_it() -> None:
    pools, gate = granting_hub("alice/a", "bob/b")
    pools.join("wb", "owner:bob", user="worker:bob:K")
    assert loads(pools.request("r1", "alice/a")) == []  # not named without her grant
    assert pools.state.view().pools["own_workers"] == {}  # nor said to be refused: unnamed
    gate.grants["alice/a"] = {"bob"}
    assert loads(pools.request("r2", "alice/a")) == [(b"wb", "alice/a")]
    (who, batch), = batches(pools.ready("wb", "alice/a@1", 10))
    assert who == b"wb" and batch.servable == "alice/a@1"
    pools.finish("wb", batch)  # r1 and r2: one batch
    gate.grants["alice/a"] = set()  # taken back: the next request is not sent there
    out = pools.request("r3", "alice/a")
    assert batches(out) == [] and loads(out) == []
    member = pools.state.pools.members[b"wb"]
    assert "alice/a" in {k[0] for k in member.holds}  # it still holds it, and gets none
    assert pools.state.pools.refusal(member, info("alice/a", public=True)) == (
        "pool owner:bob does not name it")


def test_a_list_pool_names_it_and_status_says_the_owner_has_not_allowed_it() -> None:
    pools, gate = granting_hub("alice/a", "bob/b")
    pools.join("wb", "bob/b,alice/a", user="worker:bob:K")
    assert loads(pools.request("r1", "alice/a")) == []
    why = pools.state.view().pools["own_workers"]["alice/a@1"]
    assert why == ("alice has not allowed bob's pools to serve it (alice may run "
                   "'dlhub-hpc pooling alice/a --allow bob')")
    gate.grants["alice/a"] = {"bob"}
    assert loads(pools.request("r2", "alice/a")) == [(b"wb", "alice/a")]
    (_, batch), = batches(pools.ready("wb", "alice/a@1", 10))
    assert len(batch.payloads) == 2
    assert "alice/a@1" not in pools.state.view().pools["own_workers"]  # loaded: said no more


def test_the_admins_public_pool_takes_another_owners_public_servable_only_if_allowed() -> None:
    pools, gate = granting_hub("alice/a", "admin/p")
    pools.join("wz", "public", user="worker:admin:K")
    assert loads(pools.request("r1", "alice/a")) == []
    assert "alice has not allowed admin's pools" in (
        pools.state.view().pools["own_workers"]["alice/a@1"])
    gate.grants["alice/a"] = {"admin"}
    assert loads(pools.request("r2", "alice/a")) == [(b"wz", "alice/a")]


def test_a_grant_to_the_pools_owner_is_not_one_to_another_credential() -> None:
    pools, gate = granting_hub("alice/a")
    gate.grants["alice/a"] = {"bob"}
    pools.join("wc", "owner:bob", user="worker:carol:K")  # names bob; carol's credential
    assert loads(pools.request("r1", "alice/a")) == []
    member = pools.state.pools.members[b"wc"]
    assert "alice has not allowed carol's pools" in (
        pools.state.pools.refusal(member, info("alice/a", public=True)) or "")


def test_without_grants_a_pool_book_serves_its_owner_only() -> None:
    pools = PoolHub(info("alice/a"), info("bob/b"))  # OpenGate, no granted: the default
    pools.join("wb", "bob/b,alice/a", user="worker:bob:K")
    assert loads(pools.request("r1", "alice/a")) == []
    assert loads(pools.request("r2", "bob/b")) == [(b"wb", "bob/b")]
