"""A built image that changed after its build is refused before any block runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlhub_hpc.container.launch import check_recorded
from dlhub_hpc.errors import ImageDigestMismatch
from dlhub_hpc.pilot.pilots import Pilot
from dlhub_hpc.pilot.profiles import load_profile
from dlhub_hpc.registry.images import ImageRecord, ImageStore, file_digest


class _Provider:
    label = "recording"
    script_dir = ""
    launcher = None
    nodes_per_block = 1

    def __init__(self) -> None:
        self.commands: list[str] = []

    def submit(self, command: str, tasks_per_node: int, job_name: str = "") -> str:
        self.commands.append(command)
        return f"job{len(self.commands)}"


def _recorded_image(root: Path) -> Path:
    image = root / "demo_add.sqfs"
    image.write_bytes(b"squashfs bytes")
    with ImageStore(root) as store:
        store.record(ImageRecord("demo/add", 1, "b" * 64, "r" * 64, "sqfs", str(image),
                                 file_digest(image), 0.0))
    return image


def test_a_recorded_image_is_checked_and_a_changed_one_refused(tmp_path: Path) -> None:
    image = _recorded_image(tmp_path)
    check_recorded(tmp_path, "demo/add", 1, str(image))  # unchanged: passes
    check_recorded(tmp_path, "demo/add", 1, str(tmp_path / "site.sif"))  # not ours: passes
    image.write_bytes(b"squashfs bytes, changed")
    with pytest.raises(ImageDigestMismatch):
        check_recorded(tmp_path, "demo/add", 1, str(image))


def test_every_block_checks_the_profile_s_image_before_it_is_submitted(tmp_path: Path) -> None:
    image = _recorded_image(tmp_path)
    profile = load_profile("local").model_copy(update={
        "container": load_profile("local").container.model_copy(
            update={"runtime": "bubblewrap", "image": str(image)}),
    })
    provider = _Provider()
    pilot = Pilot(profile, "demo/add@1", "tcp://127.0.0.1:5000", tmp_path / "run",
                  provider=provider,  # type: ignore[arg-type]
                  check_image=lambda path: check_recorded(tmp_path, "demo/add", 1, path))
    pilot.submit_block()
    assert str(image) in provider.commands[0]
    image.write_bytes(b"replaced after the pilot started")
    with pytest.raises(ImageDigestMismatch):
        pilot.submit_block("walltime replacement")
    assert len(provider.commands) == 1, "the changed image was never submitted"
