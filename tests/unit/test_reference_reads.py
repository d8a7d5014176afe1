"""How the hub reads a caller's file: once, into its own memory, capped, data files only."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest

from dlhub_hpc.broker.references import References, ReferenceSettings
from dlhub_hpc.errors import ReferenceDenied, ReferenceTooLarge
from dlhub_hpc.references import FileRef


def _refs(max_bytes: int = 1 << 20) -> References:
    return References(ReferenceSettings(admin="admin", user_map={}, max_bytes=max_bytes))


def _truncate_then_touch(path: str) -> None:
    array = _refs(8 << 20).resolve(FileRef(path), "", None)
    os.truncate(path, 128)  # the caller truncates its file while the request waits
    os._exit(0 if float(array.sum()) == float(array.size) else 3)


def test_truncating_the_file_after_it_was_resolved_cannot_crash_the_reader(
        tmp_path: Path) -> None:
    path = tmp_path / "big.npy"
    np.save(path, np.ones(1 << 19))
    child = multiprocessing.get_context("fork").Process(
        target=_truncate_then_touch, args=(str(path),))
    child.start()
    child.join()
    assert child.exitcode == 0  # a shared mapping dies of SIGBUS (-7) here


def test_rewriting_the_file_after_it_was_resolved_does_not_change_the_input(
        tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.ones(1 << 12))
    array = _refs().resolve(FileRef(str(path)), "", None)
    with open(path, "r+b") as file:  # rewritten in place: the same inode, new bytes
        file.seek(-8 * (1 << 12), os.SEEK_END)
        file.write(np.full(1 << 12, 1e6).tobytes())
    assert np.array_equal(array, np.ones(1 << 12))
    assert not array.flags.writeable


@pytest.mark.parametrize("path", ["/proc/self/maps", "/proc/self/status",
                                  "/sys/kernel/mm/transparent_hugepage/enabled"])
def test_pseudo_filesystems_are_refused(path: str) -> None:
    if not os.path.exists(path):
        path = "/proc/self/maps"
    with pytest.raises(ReferenceDenied, match="filesystem"):
        _refs().resolve(FileRef(path), "", None)


def test_a_file_larger_than_the_cap_is_refused_and_bytes_come_whole(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"x" * 1000)
    assert _refs(1000).resolve(FileRef(str(path)), "", None) == b"x" * 1000
    with pytest.raises(ReferenceTooLarge):
        _refs(999).resolve(FileRef(str(path)), "", None)
    with pytest.raises(ReferenceTooLarge):  # all references of a request share the cap
        _refs(1500).resolve([FileRef(str(path)), FileRef(str(path))], "", None)
