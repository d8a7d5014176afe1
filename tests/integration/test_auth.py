"""CurveZMQ identities against one real hub: who gets in, and who may see which servable."""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
import zmq
from zmq.utils.monitor import recv_monitor_message

from dlhub_hpc import Client, Hub
from dlhub_hpc.errors import AuthenticationError, PermissionDenied, ServableNotFound
from dlhub_hpc.examples import example_dir
from dlhub_hpc.protocol import Control, encode
from dlhub_hpc.security.keys import KeyPair, write_keypair

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq was built without CURVE")


def servable_copy(tmp_path: Path, owner: str, name: str, visible_to: list[str]) -> Path:
    """The example ``add`` servable under another owner/name and visibility."""
    root = Path(shutil.copytree(example_dir("add"), tmp_path / f"{owner}-{name}",
                                ignore=shutil.ignore_patterns("__pycache__")))
    spec = yaml.safe_load((root / "servable.yaml").read_text())
    spec["dlhub"].update(owner=owner, name=name, visible_to=visible_to)
    spec["datacite"]["title"] = f"Private adder of {owner}"
    (root / "servable.yaml").write_text(yaml.safe_dump(spec))
    return root


def test_the_default_client_is_the_unix_user_who_started_the_hub(client: Client) -> None:
    me = client.whoami()
    assert me == {"identity": getpass.getuser(), "admin": True, "groups": []}


def test_an_unknown_key_is_refused_with_an_authentication_error_not_a_hang(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    stranger = KeyPair.generate()
    # A generous timeout: a client left waiting would end in Timeout, not these errors.
    with Client(hub.client_address, timeout=60, keys=stranger) as c:
        with pytest.raises(AuthenticationError, match="refused this client's key") as refused:
            c.whoami()
        assert refused.value.details["public_key"] == stranger.public
        with pytest.raises(AuthenticationError, match="does not know it"):
            c.run("demo/add", [1.0])
    assert any("refused a clients connection" in r.getMessage() and stranger.public
               in r.getMessage() for r in caplog.records), "the hub records the refusal"


def test_a_connection_without_curve_gets_nothing(hub: Hub) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
    sock.connect(hub.client_address)
    try:
        sock.send_multipart(encode(Control("r1", "status", {})))
        assert monitor.poll(30_000), "the hub never refused the plain connection"
        event = recv_monitor_message(monitor)
        assert event["value"] == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
        assert sock.poll(0) == 0
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
        ctx.term()


def test_a_removed_identity_is_refused_from_then_on(hub: Hub, client: Client) -> None:
    pair = KeyPair.generate()
    client.add_identity("carol", pair.public)
    with Client(hub.client_address, timeout=20, keys=pair) as carol:
        assert carol.whoami()["identity"] == "carol"
    client.remove_identity("carol")
    with Client(hub.client_address, timeout=20, keys=pair) as carol, \
            pytest.raises(AuthenticationError):
        carol.whoami()


def test_only_the_admin_manages_identities_and_groups(people: dict[str, Client]) -> None:
    with pytest.raises(PermissionDenied, match="only the hub's admin"):
        people["alice"].add_identity("mallory", KeyPair.generate().public)
    with pytest.raises(PermissionDenied, match="only the hub's admin"):
        people["bob"].set_group("chem", ["bob"])
    assert people["admin"].set_group("chem", ["alice"]) == {"chem": ["alice"]}
    assert people["alice"].whoami()["groups"] == ["chem"]


def _sees(c: Client, name: str) -> bool:
    return name in [r["name"] for r in c.search("adder")]


@pytest.mark.slow
def test_each_visibility_rule_holds_on_run_describe_and_search(
    tmp_path: Path, people: dict[str, Client], serve: Callable[..., str],
) -> None:
    admin, alice, bob = people["admin"], people["alice"], people["bob"]
    alice.publish(servable_copy(tmp_path, "alice", "adder", []))  # alice's: only hers
    name = "alice/adder"
    alice.start_workers(name, 1)
    alice.wait_for_workers(name, 1, timeout=60)
    assert alice.run(name, [1.0, 2.0]) == 3.0

    def bob_may(allowed: bool) -> None:
        if allowed:
            assert bob.run(name, [2.0, 2.0]) == 4.0
            assert bob.describe(name)["owner"] == "alice"
        else:
            with pytest.raises(PermissionDenied, match="'bob' may not use alice/adder"):
                bob.run(name, [2.0, 2.0])
            with pytest.raises(PermissionDenied):
                bob.describe(name)
        assert _sees(bob, name) is allowed
        assert _sees(alice, name) and _sees(admin, name)  # owner and admin always

    bob_may(False)  # owner only
    alice.set_visibility(name, users=["bob"])
    bob_may(True)  # a listed user
    alice.set_visibility(name, groups=["chem"])
    bob_may(False)  # a group bob is not in
    admin.set_group("chem", ["bob"])
    bob_may(True)  # ... and then is
    admin.set_group("chem", [])
    bob_may(False)
    alice.set_visibility(name, public=True)
    bob_may(True)  # public

    with pytest.raises(PermissionDenied, match="belongs to 'alice'"):
        bob.set_visibility(name)
    with pytest.raises(PermissionDenied, match="belongs to 'alice'"):
        bob.publish(servable_copy(tmp_path / "b", "alice", "adder", ["public"]))
    with pytest.raises(PermissionDenied, match="belongs to 'alice'"):
        bob.deprecate(f"{name}@1", "not mine to deprecate")


@pytest.mark.slow
def test_a_worker_without_the_hubs_worker_credential_is_refused(
    hub: Hub, tmp_path: Path, client: Client, caplog: pytest.LogCaptureFixture,
) -> None:
    client.publish(example_dir("add"))
    forged = tmp_path / "forged.worker"
    pair = KeyPair.generate()
    write_keypair(forged, pair, "forged")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dlhub_hpc.worker", "--hub", hub.worker_address,
         "--servable", "demo/add", "--heartbeat-interval", "0.1", "--hub-timeout", "3"],
        env={**os.environ, "DLHUB_HPC_WORKER_KEY": str(forged)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        # Refused, it hears nothing, gives up after --hub-timeout and exits: no hang.
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert any("refused a workers connection" in r.getMessage() and pair.public
               in r.getMessage() for r in caplog.records), "the hub records the refusal"
    assert client.status()["workers"] == []
    assert client.status()["stats"].get("workers_registered", 0) == 0, "it never showed up"


def test_the_keys_commands_manage_identities(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from dlhub_hpc.cli import cli
    from dlhub_hpc.cli.common import console
    from dlhub_hpc.security.keys import user_keypair

    monkeypatch.setattr(console, "width", 200)
    runner = CliRunner()

    def dlhub(*args: str) -> str:
        result = runner.invoke(cli, ["--hub", hub.client_address, *args],
                               catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    assert dlhub("keys", "show").strip() == user_keypair().public
    dave = KeyPair.generate()
    pub = tmp_path / "dave.pub"
    write_keypair(tmp_path / "dave.key", dave, "dave")
    dlhub("keys", "add", "dave", str(pub))
    assert dave.public in dlhub("keys", "list")
    assert f"{getpass.getuser()} (admin)" in dlhub("keys", "whoami")
    address, key = dlhub("keys", "hub-key", "--home", str(hub.config.home)).split()
    assert address == hub.client_address and len(key) == 40
    with monkeypatch.context() as as_daves_login:
        as_daves_login.setenv("DLHUB_HPC_KEYS", str(tmp_path / "daves-keys"))
        dlhub("keys", "trust", address, key)  # what dave does with what the admin gave him
        with Client(address, timeout=20, keys=dave) as as_dave:
            assert as_dave.whoami()["identity"] == "dave"
    dlhub("keys", "remove", "dave")
    assert dave.public not in dlhub("keys", "list")


def test_only_the_admin_shuts_the_hub_down(people: dict[str, Client]) -> None:
    with pytest.raises(PermissionDenied, match="may shut the hub down"):
        people["alice"].shutdown_hub()
    assert people["admin"].whoami()["admin"]  # still up


def test_names_workers_and_status_belong_to_their_owner(
    tmp_path: Path, people: dict[str, Client], serve: Callable[..., str],
) -> None:
    admin, alice, bob = people["admin"], people["alice"], people["bob"]
    with pytest.raises(PermissionDenied, match="may not publish as 'alice'"):
        bob.publish(servable_copy(tmp_path / "b", "alice", "first", ["public"]))
    name = alice.publish(servable_copy(tmp_path, "alice", "private", []))["name"]
    public = alice.publish(servable_copy(tmp_path / "p", "alice", "shared", ["public"]))["name"]
    alice.start_workers(name, 1)
    alice.wait_for_workers(name, 1, timeout=60)
    # Workers run on the hub's allocation: not for bob to start or stop, even when public.
    with pytest.raises(PermissionDenied, match="belongs to 'alice'"):
        bob.start_workers(public, 1)
    with pytest.raises(PermissionDenied, match="belongs to 'alice'"):
        bob.stop_workers(servable=name)
    with pytest.raises(PermissionDenied, match="only the hub's admin"):
        bob.stop_workers()
    # bob's status shows nothing of alice's private servable; alice's and the admin's do.
    assert not [w for w in bob.status()["workers"] if w["servable"].startswith(name)]
    assert [w for w in alice.status()["workers"] if w["servable"].startswith(name)]
    assert [w for w in admin.status()["workers"] if w["servable"].startswith(name)]
    # A hidden servable's versions are not told to bob by a lookup error either.
    with pytest.raises(ServableNotFound) as missing:
        bob.run(f"{name}@99", [1.0])
    assert "published" not in missing.value.message and "[1]" not in missing.value.message
    with pytest.raises(ServableNotFound, match="published versions"):
        alice.run(f"{name}@99", [1.0])
    alice.stop_workers(servable=name)
