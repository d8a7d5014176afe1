"""Image records: stored beside the registry's servables, verified before a worker runs."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from dlhub_hpc.container.launch import pick_image, runnable_image
from dlhub_hpc.container.rootfs import run_step
from dlhub_hpc.container.runtimes import IMAGE_PATH, ContainerRuntime, get_runtime, split_bind
from dlhub_hpc.errors import ContainerError, ImageBuildError, ImageDigestMismatch
from dlhub_hpc.pilot.command import Container, worker_command
from dlhub_hpc.registry.images import ImageRecord, ImageStore, file_digest, tree_digest
from dlhub_hpc.security.keys import container_worker_access


def _in_image(runtime: ContainerRuntime, rec: ImageRecord, hub: str, **kwargs: Any) -> list[str]:
    """The production worker command for ``rec``'s servable, verified, under ``runtime``."""
    return worker_command(hub, rec.ref, container=Container(runtime, runnable_image(runtime, rec)),
                          **kwargs).argv


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
        _in_image(get_runtime("bubblewrap", "/bin/true"), rec, "tcp://127.0.0.1:1")


def test_worker_command_picks_the_format_the_runtime_runs(tmp_path: Path) -> None:
    sqfs = tmp_path / "i.sqfs"
    sqfs.write_bytes(b"hsqs")
    images = {"sqfs": _record(sqfs, "sqfs"), "sif": _record(sqfs, "sif")}
    ch = get_runtime("charliecloud", "/bin/true")
    assert pick_image(ch, images).format == "sqfs"
    assert pick_image(get_runtime("apptainer"), images).format == "sif"
    with pytest.raises(ContainerError, match="runs \\['dir'\\] images"):
        pick_image(get_runtime("bubblewrap"), images)
    cmd = _in_image(ch, images["sqfs"], "tcp://10.1.1.1:5001", block="b1")
    assert cmd == [
        "/bin/true", "--private-tmp", "--unset-env=*", "--env-no-expand",
        f"--set-env=PATH={IMAGE_PATH}",
        str(sqfs), "--",
        "python3", "-m", "dlhub_hpc.worker", "--hub", "tcp://10.1.1.1:5001",
        "--servable", "demo/add@1", "--cache-dir", "/opt/dlhub-hpc/bundles", "--block", "b1",
    ]
    host = worker_command("tcp://h:1", "demo/add@1").argv
    assert host[1:] == ["-m", "dlhub_hpc.worker", "--hub", "tcp://h:1", "--servable", "demo/add@1"]
    assert cmd[cmd.index("--") + 1] == "python3"


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


def test_the_hubs_worker_credential_is_bound_into_the_container(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "keys" / "worker.key"
    key.parent.mkdir()
    key.write_text("secret")
    monkeypatch.setenv("DLHUB_HPC_WORKER_KEY", str(key))
    root = tmp_path / "rootfs"
    (root / "opt").mkdir(parents=True)
    rec = _record(root, "dir")
    binds, env = container_worker_access("tcp://h:1")
    (src, dst, _), inside = split_bind(binds[0]), env["DLHUB_HPC_WORKER_KEY"]
    assert src == str(key.parent)
    bwrap = _in_image(get_runtime("bubblewrap", "/bin/true"), rec, "tcp://h:1")
    at = bwrap.index(src)
    assert bwrap[at - 1: at + 2] == ["--ro-bind", src, dst]
    at = bwrap.index("DLHUB_HPC_WORKER_KEY")
    assert bwrap[at - 1: at + 2] == ["--setenv", "DLHUB_HPC_WORKER_KEY", inside]
    ch = _in_image(get_runtime("charliecloud", "/bin/true"), rec, "tcp://h:1")
    assert f"--bind={src}:{dst}" in ch
    assert f"--set-env=DLHUB_HPC_WORKER_KEY={inside}" in ch
    bare = _in_image(get_runtime("charliecloud", "/bin/true"), rec, "tcp://h:1",
                     hub_credential=False)
    assert not any("DLHUB_HPC_WORKER_KEY" in part for part in bare)


def test_the_worker_dependencies_copied_into_images_skip_debians_and_extras() -> None:
    from dlhub_hpc.container.rootfs import worker_distributions

    names = {d.metadata["Name"].lower().replace("_", "-") for d in worker_distributions()}
    assert {"pydantic", "pydantic-core", "pyyaml", "typing-extensions"} <= names
    assert not names & {"numpy", "pyzmq", "msgpack", "email-validator", "parsl"}


def test_image_for_returns_a_verified_path_for_the_runtime(tmp_path: Path) -> None:
    from dlhub_hpc.container.launch import image_for

    sif = tmp_path / "i.sif"
    sif.write_bytes(b"SIF")
    with ImageStore(tmp_path) as store:
        store.record(_record(sif, "sif", version=2))
    assert image_for(tmp_path, "demo/add", 2, "apptainer") == str(sif)
    with pytest.raises(ContainerError, match="dlhub-hpc build demo/add@1"):
        image_for(tmp_path, "demo/add", 1, "apptainer")
    sif.write_bytes(b"SIF!")
    with pytest.raises(ImageDigestMismatch):
        image_for(tmp_path, "demo/add", 2, "singularity")


def test_prune_keeps_the_most_recently_used_images(tmp_path: Path) -> None:
    from dlhub_hpc.container.build import MANIFEST, ImageBuilder
    from dlhub_hpc.container.rootfs import locked

    images = tmp_path / "cache" / "images"
    for i in range(4):
        (images / f"r{i}" / "rootfs").mkdir(parents=True)
        (images / f"r{i}" / MANIFEST).write_text("{}")
        os.utime(images / f"r{i}" / MANIFEST, (1000 + i, 1000 + i))
    (images / "failed").mkdir()  # no manifest, no lock held: a failed build
    (images / "building").mkdir()
    os.utime(images / "r0" / MANIFEST)  # just used
    with locked(images / "building.lock"):  # a build in progress elsewhere
        removed = ImageBuilder(tmp_path, tmp_path / "cache").prune(keep=2)
    assert sorted(p.name for p in removed) == ["failed", "r1", "r2"]
    assert sorted(p.name for p in images.iterdir() if p.is_dir()) == ["building", "r0", "r3"]
