"""Bearer tokens: stored hashed, made and revoked by the admin, looked up per request."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlhub_hpc.errors import ConfigError, PermissionDenied, TokenRefused
from dlhub_hpc.protocol import Control, Request, decode, encode
from dlhub_hpc.registry.access import AccessControl
from dlhub_hpc.registry.store import Registry
from dlhub_hpc.security.keys import KeyPair
from dlhub_hpc.security.tokens import TokenStore, token_hash


@pytest.fixture
def store(tmp_path: Path) -> TokenStore:
    registry = Registry(tmp_path)
    access = AccessControl(registry, "admin")
    access.add_identity("alice", KeyPair.generate().public)
    return TokenStore(registry, access)


def test_a_token_acts_as_its_identity_and_only_its_hash_is_stored(
        store: TokenStore, tmp_path: Path) -> None:
    made = store.create("alice", note="laptop")
    token = made["token"]
    assert store.identity_of(token) == "alice"
    assert (tmp_path / "registry.sqlite").read_bytes().find(token.encode()) == -1
    with store.registry.transaction() as db:
        assert db.execute("SELECT sha256 FROM tokens").fetchone()[0] == token_hash(token)
    assert [r["note"] for r in store.listing()] == ["laptop"]
    assert "token" not in store.listing()[0]


def test_unknown_revoked_and_orphaned_tokens_are_refused(store: TokenStore) -> None:
    with pytest.raises(TokenRefused, match="unknown or revoked"):
        store.identity_of("dlh_nothing")
    first, second = store.create("alice"), store.create("alice")
    assert store.revoke(first["id"]) == 1
    with pytest.raises(TokenRefused):
        store.identity_of(first["token"])
    assert store.identity_of(second["token"]) == "alice"
    store.access.remove_identity("alice")  # a removed identity's tokens stop with it
    with pytest.raises(TokenRefused):
        store.identity_of(second["token"])
    with pytest.raises(ConfigError, match="no identity named 'alice'"):
        store.create("alice")
    with pytest.raises(ConfigError, match="no live token"):
        store.revoke(first["id"])


def test_a_store_reopened_knows_its_tokens(store: TokenStore) -> None:
    made = store.create("admin")
    again = TokenStore(store.registry, store.access)
    assert again.identity_of(made["token"]) == "admin"


def test_the_acting_user_is_the_tokens_for_requests_and_controls(store: TokenStore) -> None:
    token = store.create("alice")["token"]
    request = Request("r1", "a/b", None, "", [1], token=token)
    assert store.acting_user("gateway", request) == "alice"
    assert store.acting_user("gateway", Request("r2", "a/b", None, "", [1])) == "gateway"
    control = Control("c1", "describe", {"servable": "a/b", "token": token})
    assert store.acting_user("gateway", control) == "alice"
    assert "token" not in control.args  # handlers never see it
    with pytest.raises(TokenRefused):
        store.acting_user("admin", Request("r3", "a/b", None, "", [1], token="dlh_forged"))


def test_only_the_admin_runs_the_token_operations(store: TokenStore) -> None:
    def require_admin(args: dict[str, object], what: str) -> None:
        if args.get("caller") != "admin":
            raise PermissionDenied(f"only the hub's admin may {what}")

    tokens = store.operations(require_admin)["tokens"]
    with pytest.raises(PermissionDenied, match="create bearer tokens"):
        tokens({"action": "create", "identity": "alice", "caller": "alice"})
    made = tokens({"action": "create", "identity": "alice", "caller": "admin"})
    assert tokens({"action": "revoke", "id": made["id"], "caller": "admin"}) == {"revoked": 1}
    with pytest.raises(ConfigError, match="unknown token action"):
        tokens({"action": "steal", "caller": "admin"})


def test_a_token_travels_in_a_request_and_an_unset_one_costs_nothing() -> None:
    request = Request("r1", "a/b", 2, "run", [1.0], token="dlh_x")
    assert decode(encode(request)) == request
    plain = Request("r1", "a/b", 2, "run", [1.0])
    # Trailing unset fields are left off the wire, as before the token existed.
    assert len(encode(plain)[0]) < len(encode(request)[0]) - len("dlh_x")
    assert decode(encode(plain)) == plain
