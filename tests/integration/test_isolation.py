"""Two users on one hub: a publisher's code cannot read the hub's secrets, nor serve or
watch another owner's servables, nor become anyone else."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import zmq

from dlhub_hpc import Client, Hub
from dlhub_hpc.errors import IsolationUnavailable, PermissionDenied
from dlhub_hpc.security.keys import key_dir, load_keypair
from tests.integration.conftest import wait_for
from tests.integration.test_auth import servable_copy

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq was built without CURVE")
SNOOP = Path(__file__).parent / "servables" / "snoop"
needs_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None and os.environ.get("CI") != "true",
    reason="bubblewrap is not installed ('apt-get install bubblewrap')")


def _secrets(hub: Hub) -> list[str]:
    """Every file a servable must not read: the hub's keys, registry and credentials, the
    admin's own key pair, the hub process's environment."""
    home = hub.config.home
    paths = [home / "hub.key", home / "worker.key", home / "registry.sqlite",
             key_dir() / "id.key", home / "hub.json"]
    paths += sorted((home / "credentials").rglob("worker.key"))
    paths += sorted((key_dir() / "hubs").glob("*"))
    assert all(p.exists() for p in paths), [p for p in paths if not p.exists()]
    return [*map(str, paths), f"/proc/{os.getpid()}/environ"]


@needs_bwrap
def test_a_publishers_code_reads_none_of_the_hubs_secrets(
    hub: Hub, people: dict[str, Client], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DLHUB_HPC_TEST_SECRET", "a token the hub's user holds")
    alice = people["alice"]
    alice.publish(SNOOP)
    alice.start_workers("alice/snoop", 1)
    alice.wait_for_workers("alice/snoop", 1, timeout=60)
    # The admin's own servable serves too, so the admin's credential file exists.
    people["admin"].publish(servable_copy(hub.config.home.parent, people["admin"].whoami()[
        "identity"], "adder", ["public"]))
    found = alice.run("alice/snoop", _secrets(hub))
    assert found["readable"] and not any(found["readable"].values()), found["readable"]
    assert "DLHUB_HPC_TEST_SECRET" not in found["env"]
    assert not any(k.startswith("DLHUB_HPC_") for k in found["env"]), found["env"]
    assert found["fd3"] == ""  # the credential's descriptor was closed before loading
    # status gives the sandbox's pid as this node sees it, not the pid inside the sandbox
    pid = next(w["pid"] for w in alice.status()["workers"] if "alice/snoop" in w["servable"])
    sandbox = psutil.Process(pid)
    assert sandbox.name() == "bwrap", sandbox.cmdline()
    assert any("dlhub_hpc.worker" in " ".join(p.cmdline())
               for p in sandbox.children(recursive=True))


def test_a_worker_credential_serves_only_its_owners_servables(
    tmp_path: Path, hub: Hub, people: dict[str, Client],
) -> None:
    bob = people["bob"]
    bob.publish(servable_copy(tmp_path, "bob", "adder", ["public"]))
    people["alice"].publish(servable_copy(tmp_path, "alice", "adder", ["public"]))
    alice_cred = hub.security.worker_credentials.issue("alice").path
    hostile = subprocess.run(
        [sys.executable, "-m", "dlhub_hpc.worker", "--hub", hub.worker_address,
         "--servable", "bob/adder", "--credential", str(alice_cred),
         "--heartbeat-interval", "0.2", "--hub-timeout", "20"],
        capture_output=True, text=True, timeout=120)
    assert "may not serve bob/adder" in hostile.stderr
    assert bob.status()["stats"]["workers_refused"] == 1
    assert not [w for w in bob.status()["workers"] if w["servable"].startswith("bob/")]
    # The same credential does serve its own owner's servable.
    with subprocess.Popen(
        [sys.executable, "-m", "dlhub_hpc.worker", "--hub", hub.worker_address,
         "--servable", "alice/adder", "--credential", str(alice_cred),
         "--heartbeat-interval", "0.2", "--hub-timeout", "20"]) as own:
        try:
            people["alice"].wait_for_workers("alice/adder", 1, timeout=60)
            assert people["alice"].run("alice/adder", [1.0, 2.0]) == 3.0
        finally:
            own.terminate()


def test_a_revoked_credential_is_refused_and_its_workers_dropped(
    tmp_path: Path, hub: Hub, people: dict[str, Client],
) -> None:
    admin, alice = people["admin"], people["alice"]
    alice.publish(servable_copy(tmp_path, "alice", "adder", ["public"]))
    cred = hub.security.worker_credentials.issue("alice").path
    kept = tmp_path / "alice-old.key"
    shutil.copy(cred, kept)
    os.chmod(kept, 0o600)
    argv = [sys.executable, "-m", "dlhub_hpc.worker", "--hub", hub.worker_address,
            "--servable", "alice/adder", "--credential", str(kept),
            "--heartbeat-interval", "0.2", "--hub-timeout", "5"]
    with subprocess.Popen(argv) as worker:
        alice.wait_for_workers("alice/adder", 1, timeout=60)
        assert admin.control("revoke_workers", owner="alice") == {"owner": "alice",
                                                                   "revoked": 1}
        wait_for(lambda: not admin.status()["workers"], what="the revoked worker dropped")
        worker.terminate()
    assert not cred.exists()
    again = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert "no word from the hub" in again.stderr  # its handshake is refused: it gives up
    assert "loaded alice/adder" not in again.stderr
    assert not admin.status()["workers"]
    # The next start issues a new credential, which serves.
    alice.start_workers("alice/adder", 1)
    alice.wait_for_workers("alice/adder", 1, timeout=60)
    assert load_keypair(cred).public != load_keypair(kept).public
    assert alice.run("alice/adder", [1.0, 1.0]) == 2.0


def test_a_hub_that_cannot_isolate_refuses_other_owners_workers_unless_opted_out(
    tmp_path: Path, hub: Hub, people: dict[str, Client],
) -> None:
    alice = people["alice"]
    alice.publish(servable_copy(tmp_path, "alice", "adder", ["public"]))
    hub.security.isolation.bwrap = None  # as on a login node without bubblewrap
    hub.security.isolation.can_switch = False
    with pytest.raises(IsolationUnavailable, match="worker_isolation: off"):
        alice.start_workers("alice/adder", 1)
    assert not hub.pilots.worker_blocks()
    hub.security.isolation.mode = "off"  # the admin accepts the risk, in the hub's config
    alice.start_workers("alice/adder", 1)
    alice.wait_for_workers("alice/adder", 1, timeout=60)
    assert alice.run("alice/adder", [2.0, 2.0]) == 4.0


def test_the_admin_lists_and_revokes_worker_credentials_from_the_cli(
    tmp_path: Path, hub: Hub, people: dict[str, Client],
) -> None:
    people["alice"].publish(servable_copy(tmp_path, "alice", "adder", ["public"]))
    issued = hub.security.worker_credentials.issue("alice")
    cli = [sys.executable, "-m", "dlhub_hpc.cli", "--hub", hub.client_address, "keys"]
    env = {**os.environ, "COLUMNS": "200"}
    listed = subprocess.run([*cli, "workers"], capture_output=True, text=True, env=env,
                            timeout=120, check=True).stdout
    assert "alice" in listed and issued.public_key in listed
    done = subprocess.run([*cli, "revoke-workers", "alice"], capture_output=True, text=True,
                          env=env, timeout=120, check=True).stdout
    assert "revoked 1 worker credential(s) of alice" in done
    assert hub.security.worker_credentials.owner_of(issued.public_key) is None


@needs_bwrap
def test_a_publishers_pilot_runs_sandboxed_and_may_not_bring_its_own_profile(
    tmp_path: Path, hub: Hub, people: dict[str, Client],
) -> None:
    alice = people["alice"]
    alice.publish(SNOOP)
    hostile = {"name": "mine", "description": "runs a command as the hub's user",
               "provider": {"type": "LocalProvider", "worker_init": "cat ~/.ssh/id_rsa"}}
    with pytest.raises(PermissionDenied, match="only the hub's admin"):
        alice.start_pilot("alice/snoop", profile=hostile)
    (tmp_path / "mine.yaml").write_text("provider: {type: LocalProvider}\n")
    with pytest.raises(PermissionDenied, match="name one of the site profiles"):
        alice.start_pilot("alice/snoop", profile=str(tmp_path / "mine.yaml"))
    pilot = alice.start_pilot("alice/snoop", profile="local")
    try:
        alice.wait_for_workers("alice/snoop", 1, timeout=60)
        found = alice.run("alice/snoop", _secrets(hub))
        assert not any(found["readable"].values()), found["readable"]
        assert found["fd3"] == ""
    finally:
        alice.stop_pilot([pilot["pilot_id"]])
