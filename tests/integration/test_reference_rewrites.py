"""A caller who changes its own file while its request waits, through a real hub: the
hub keeps serving, and what the worker gets (and the memo keeps) is what the hub read.

alice is mapped to the Unix user ``nobody``; the hub runs as root (as CI does).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
import zmq

from dlhub_hpc import Client, FileRef, Hub
from tests.integration.conftest import people_on, wait_for
from tests.integration.test_references import NOBODY, REFDATA, share  # noqa: F401

pytestmark = [
    pytest.mark.skipif(not zmq.has("curve"), reason="libzmq was built without CURVE"),
    pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                       reason="needs root, to make files of a second Unix user (CI runs as root)"),
]


@pytest.fixture
def idle_site(make_hub: Callable[..., Hub], tmp_path: Path) -> Iterator[dict[str, Any]]:
    """refdata published, public, memoized, with no worker yet: requests wait."""
    hub = make_hub(user_map={"alice": "nobody"}, max_reference_bytes=64 << 20)
    with people_on(hub) as people:
        admin = people["admin"]
        folder = Path(shutil.copytree(REFDATA, tmp_path / "refdata"))
        spec = yaml.safe_load((folder / "servable.yaml").read_text())
        spec["dlhub"]["owner"] = admin.whoami()["identity"]
        (folder / "servable.yaml").write_text(yaml.safe_dump(spec))
        yield {"hub": hub, "name": str(admin.publish(folder)["name"]), **people}


def _queued(admin: Client) -> int:
    def walk(value: Any) -> int:
        if isinstance(value, dict):
            return int(value.get("queued", 0) or 0) + sum(
                walk(v) for k, v in value.items() if k != "queued")
        if isinstance(value, list):
            return sum(walk(v) for v in value)
        return 0
    return walk(admin.status())


def _alices(folder: Path, name: str, array: np.ndarray) -> Path:
    path = folder / "alice" / name
    np.save(path, array)
    os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    return path


def test_truncating_a_queued_file_leaves_the_hub_serving(
        idle_site: dict[str, Any], share: Path) -> None:  # noqa: F811
    admin, alice = idle_site["admin"], idle_site["alice"]
    path = _alices(share, "big.npy", np.ones(1 << 19))
    waiting = alice.submit(idle_site["name"], FileRef(str(path)))
    wait_for(lambda: _queued(admin) >= 1, what="the request queued, its file read")
    os.truncate(path, 128)
    admin.start_workers(idle_site["name"], 1)
    assert waiting.result(timeout=120)["sum"] == float(1 << 19)
    assert admin.run(idle_site["name"], [1.0, 2.0], method="double").tolist() == [2.0, 4.0]


def test_rewriting_a_queued_file_cannot_poison_the_memo(
        idle_site: dict[str, Any], share: Path) -> None:  # noqa: F811
    admin, alice, bob = idle_site["admin"], idle_site["alice"], idle_site["bob"]
    path = _alices(share, "x.npy", np.ones(1 << 16))
    waiting = alice.submit(idle_site["name"], FileRef(str(path)), method="double")
    wait_for(lambda: _queued(admin) >= 1, what="the request queued, its file read")
    with open(path, "r+b") as file:  # rewritten in place after the hub read it
        file.seek(-8 * (1 << 16), os.SEEK_END)
        file.write(np.full(1 << 16, 1e6).tobytes())
    admin.start_workers(idle_site["name"], 1)
    assert np.array_equal(waiting.result(timeout=120), np.full(1 << 16, 2.0))
    assert np.array_equal(bob.run(idle_site["name"], np.ones(1 << 16), method="double"),
                          np.full(1 << 16, 2.0))
