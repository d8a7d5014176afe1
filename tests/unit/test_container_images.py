"""Image records: stored beside the registry's servables, verified before a worker runs."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from dlhub_hpc.container.launch import pick_image, worker_argv, worker_command
from dlhub_hpc.container.rootfs import run_step
from dlhub_hpc.container.runtimes import IMAGE_PATH, get_runtime
from dlhub_hpc.errors import ContainerError, ImageBuildError, ImageDigestMismatch
from dlhub_hpc.registry.images import ImageRecord, ImageStore, file_digest, tree_digest


def _record(path: Path, fmt: str = "sif", version: int = 1) -> ImageRecord:
    sha = tree_digest(path) if fmt == "dir" else file_digest(path)
    return ImageRecord(servable="demo/add", version=version, bundle_digest="b" * 64,
                       recipe_digest="r" * 64, format=fmt, path=str(path), sha256=sha,
                       built_at=1.0)


def test_records_live_in_their_own_table_of_the_registry_file(tmp_path: Path) -> None:
    image = tmp_path / "i.sif"
    image.write_bytes(b"SIF" * 100)
    with ImageStore(tmp_path) as store:
        store.record(_record(image))
        assert store.get("demo/add", 1, "sif").sha256 == file_digest(image)
        assert [r.format for r in store.by_recipe("r" * 64)] == ["sif"]
        with pytest.raises(ContainerError, match=r"there are: \['sif'\].*dlhub-hpc build"):
            store.get("demo/add", 1, "sqfs")
    tables = sqlite3.connect(tmp_path / "registry.sqlite").execute(
        "SELECT name FROM sqlite_master WHERE type='table'"
    ).fetchall()
    assert ("images",) in tables


def test_a_changed_image_file_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "i.sif"
    image.write_bytes(b"x" * 4096)
    rec = _record(image)
    assert rec.verify() == str(image)
    image.write_bytes(b"x" * 4095 + b"y")
    with pytest.raises(ImageDigestMismatch, match="will not be run") as err:
        rec.verify()
    assert err.value.details["expected"] == rec.sha256
    image.unlink()
    with pytest.raises(ContainerError, match="is gone"):
        rec.verify()


def test_a_changed_root_filesystem_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "python3").write_text("real")
    os.symlink("python3", root / "usr" / "bin" / "python")
    rec = _record(root, "dir")
    assert rec.verify() == str(root)
    os.remove(root / "usr" / "bin" / "python")
    os.symlink("/tmp/evil", root / "usr" / "bin" / "python")
    with pytest.raises(ImageDigestMismatch):
        rec.verify()
    # ... and a worker is never started from it.
    with pytest.raises(ImageDigestMismatch):
        worker_command(get_runtime("bubblewrap", "/bin/true"), rec, "tcp://127.0.0.1:1")


def test_worker_command_picks_the_format_the_runtime_runs(tmp_path: Path) -> None:
    sqfs = tmp_path / "i.sqfs"
    sqfs.write_bytes(b"hsqs")
    images = {"sqfs": _record(sqfs, "sqfs"), "sif": _record(sqfs, "sif")}
    ch = get_runtime("charliecloud", "/bin/true")
    assert pick_image(ch, images).format == "sqfs"
    assert pick_image(get_runtime("apptainer"), images).format == "sif"
    with pytest.raises(ContainerError, match="runs \\['dir'\\] images"):
        pick_image(get_runtime("bubblewrap"), images)
    cmd = worker_command(ch, images["sqfs"], "tcp://10.1.1.1:5001", extra=["--block", "b1"])
    assert cmd == [
        "/bin/true", "--unset-env=*", f"--set-env=PATH={IMAGE_PATH}", str(sqfs), "--",
        "python3", "-m", "dlhub_hpc.worker", "--hub", "tcp://10.1.1.1:5001",
        "--servable", "demo/add@1", "--cache-dir", "/opt/dlhub-hpc/bundles", "--block", "b1",
    ]
    host = worker_command("none", None, "tcp://h:1", servable="demo/add@1")
    assert host[1:] == ["-m", "dlhub_hpc.worker", "--hub", "tcp://h:1", "--servable", "demo/add@1"]
    assert worker_argv("tcp://h:1", "a/b")[0] == "python3"


def test_a_failing_build_step_names_the_step_and_shows_the_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    script = "for i in $(seq 1 40); do echo line $i; done; echo 'E: no such package' >&2; exit 3"
    with pytest.raises(ImageBuildError) as err:
        run_step("base", ["sh", "-c", script], log)
    message = str(err.value)
    assert "step 'base' failed (exit status 3)" in message
    assert "E: no such package" in message
    assert "line 40" in message
    assert "line 5\n" not in message  # only the tail
    assert err.value.details["step"] == "base"


def test_mounts_inside_a_tree_are_found_before_it_is_removed(tmp_path: Path) -> None:
    from dlhub_hpc.container.rootfs import mounts_under, remove_tree

    assert "/proc" in mounts_under(Path("/"))
    assert mounts_under(tmp_path) == []
    (tmp_path / "t" / "a").mkdir(parents=True)
    remove_tree(tmp_path / "t")
    assert not (tmp_path / "t").exists()
