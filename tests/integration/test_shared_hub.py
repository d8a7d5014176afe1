"""A hub many users share: its home is private, one owner cannot take every worker or
node, and status tells nobody about servables they may not see."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from dlhub_hpc import Client, Hub
from dlhub_hpc.errors import PermissionDenied
from tests.integration.conftest import FAST, people_on
from tests.integration.test_auth import servable_copy

needs_curve = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq was built without CURVE")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may enter, as a home's parent often is."""
    path = Path(tempfile.mkdtemp(prefix="dlhub-home-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_home_and_its_missing_parents_are_private(
    open_dir: Path, make_hub: Callable[..., Hub]
) -> None:
    hub = make_hub(home=open_dir / "site" / "hub")
    assert _mode(open_dir / "site") == 0o700
    assert _mode(hub.config.home) == 0o700
    if os.getuid() == 0 and shutil.which("runuser"):
        read = subprocess.run(["runuser", "-u", "nobody", "--", "cat",
                               str(hub.config.home / "registry.sqlite")],
                              capture_output=True, check=False)
        assert read.returncode != 0 and not read.stdout


def test_an_open_home_is_tightened_with_a_warning(
    open_dir: Path, make_hub: Callable[..., Hub], caplog: pytest.LogCaptureFixture
) -> None:
    home = open_dir / "hub"
    home.mkdir()
    os.chmod(home, 0o755)
    with caplog.at_level(logging.WARNING, logger="dlhub_hpc.security.home"):
        hub = make_hub(home=home)
    assert _mode(hub.config.home) == 0o700
    assert any(str(home) in r.getMessage() and "0700" in r.getMessage()
               for r in caplog.records)


@pytest.fixture
def shared(make_hub: Callable[..., Hub]) -> Iterator[dict[str, Client]]:
    """admin, alice and bob on a hub that lets an owner run one worker, and pilots of two
    nodes."""
    hub = make_hub(max_workers_per_owner=1, max_nodes_per_pilot=2, **FAST)
    with people_on(hub) as clients:
        yield clients


@needs_curve
def test_an_owner_cannot_take_every_worker_or_node(
    tmp_path: Path, shared: dict[str, Client]
) -> None:
    admin, alice = shared["admin"], shared["alice"]
    name = alice.publish(servable_copy(tmp_path, "alice", "adder", ["public"]))["name"]
    with pytest.raises(PermissionDenied, match="max_workers_per_owner") as refused:
        alice.start_workers(name, 2)
    assert refused.value.details["limit"] == 1
    alice.start_workers(name, 1)
    with pytest.raises(PermissionDenied, match=r"runs 1 workers.*max_workers_per_owner"):
        alice.start_workers(name, 1)
    with pytest.raises(PermissionDenied, match="max_nodes_per_pilot"):
        alice.start_pilot(name, "local", nodes=3)
    admin.start_workers(name, 1)  # the admin decides for the hub: not limited
    blocks = [b for b in admin.status()["blocks"] if b["servable"].startswith(name)]
    assert len(blocks) == 2
    admin.stop_workers(servable=name)


@needs_curve
def test_status_and_pilots_hide_servables_the_caller_may_not_see(
    tmp_path: Path, people: dict[str, Client]
) -> None:
    admin, alice, bob = people["admin"], people["alice"], people["bob"]
    name = bob.publish(servable_copy(tmp_path, "bob", "secret", []))["name"]
    bob.start_workers(name, 1)
    bob.start_pilot(name, "local")

    def mine(blocks: list[dict[str, object]]) -> list[dict[str, object]]:
        return [b for b in blocks if str(b["servable"]).split("@")[0] == name]

    assert len(mine(bob.status()["blocks"])) == 2
    assert mine(admin.status()["blocks"])
    assert not mine(alice.status()["blocks"])
    assert mine(bob.pilot_status()) and mine(admin.pilot_status())
    assert not mine(alice.pilot_status())
    bob.stop_pilot(servable=name)
    bob.stop_workers(servable=name)
