"""A confined worker's TMPDIR is its user's own: one planted by another user is not used."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dlhub_hpc.errors import PilotError
from dlhub_hpc.pilot.pilots import fixed_profile
from dlhub_hpc.security.confine import private_tmp


def _private_and_mine(path: Path) -> bool:
    st = path.lstat()
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() \
        and not stat.S_IMODE(st.st_mode) & 0o077


def test_a_missing_directory_is_made_private(tmp_path: Path) -> None:
    got = private_tmp(tmp_path, os.getuid())
    assert got == tmp_path / f"dlhub-hpc-{os.getuid()}"
    assert _private_and_mine(got)
    assert private_tmp(tmp_path, os.getuid()) == got  # the next worker reuses it


def test_one_open_to_others_is_not_used(tmp_path: Path) -> None:
    planted = tmp_path / f"dlhub-hpc-{os.getuid()}"
    planted.mkdir(mode=0o777)
    os.chmod(planted, 0o777)
    got = private_tmp(tmp_path, os.getuid())
    assert got != planted and _private_and_mine(got)


def test_a_symlink_planted_there_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (tmp_path / f"dlhub-hpc-{os.getuid()}").symlink_to(target)
    got = private_tmp(tmp_path, os.getuid())
    assert got.parent == tmp_path and not got.is_symlink() and _private_and_mine(got)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a directory to another user")
def test_one_another_user_made_is_not_used(tmp_path: Path) -> None:
    planted = tmp_path / f"dlhub-hpc-{os.getuid()}"
    planted.mkdir(mode=0o700)
    os.chown(planted, 65534, 65534)
    got = private_tmp(tmp_path, os.getuid())
    assert got != planted and _private_and_mine(got)


def test_a_block_of_absurdly_many_workers_is_refused() -> None:
    with pytest.raises(PilotError, match="at most 4096 workers"):
        fixed_profile(100_000)
    assert fixed_profile(4096).workers_per_node == 4096
