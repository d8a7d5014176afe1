"""The permission check behind file references: the kernel's rule over stat and ACL facts,
and the walk that applies it to a real path, one descriptor at a time."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dlhub_hpc.errors import (
    NoUnixAccount,
    ReferenceDenied,
    ReferenceFormatError,
    ReferenceNotFound,
)
from dlhub_hpc.security.file_access import (
    ACL_GROUP,
    ACL_GROUP_OBJ,
    ACL_MASK,
    ACL_OTHER,
    ACL_USER,
    ACL_USER_OBJ,
    ACL_XATTR,
    READ,
    SEARCH,
    WRITE,
    Account,
    AclEntry,
    FileFacts,
    account_of,
    may,
    parse_acl,
)
from dlhub_hpc.security.file_walk import check_writable, open_checked, parent_of

ALICE = Account("alice", 1001, 1001, frozenset({1001, 500}))
FILE, DIR = stat.S_IFREG, stat.S_IFDIR
ANY = 0xFFFFFFFF  # the qualifier of entries that have none


def facts(mode: int, uid: int = 2000, gid: int = 2000, kind: int = FILE,
          acl: list[tuple[int, int, int]] | None = None) -> FileFacts:
    entries = None if acl is None else tuple(AclEntry(*e) for e in acl)
    return FileFacts(kind | mode, uid, gid, entries)


@pytest.mark.parametrize(("mode", "uid", "gid", "want", "allowed"), [
    (0o600, 1001, 2000, READ, True),     # her own file
    (0o060, 1001, 500, READ, False),     # the owner class decides for the owner, even if
    (0o640, 2000, 500, READ, True),      # ...a group she is in may read
    (0o604, 2000, 2000, READ, True),     # other
    (0o660, 2000, 2000, READ, False),    # a group she is not in
    (0o640, 2000, 500, WRITE, False),
    (0o444, 1001, 1001, WRITE, False),
])
def test_mode_bits_owner_group_other(mode: int, uid: int, gid: int, want: int,
                                     allowed: bool) -> None:
    assert may(ALICE, facts(mode, uid, gid), want) is allowed


def test_a_folder_needs_search_and_write_for_a_new_file() -> None:
    assert may(ALICE, facts(0o755, kind=DIR), SEARCH)
    assert not may(ALICE, facts(0o754, kind=DIR), SEARCH)
    assert not may(ALICE, facts(0o755, kind=DIR), WRITE | SEARCH)
    assert may(ALICE, facts(0o1777, kind=DIR), WRITE | SEARCH)


def test_root_reads_anything_but_searches_only_folders_or_runnable_files() -> None:
    root = Account("root", 0, 0, frozenset({0}))
    assert may(root, facts(0o000), READ | WRITE)
    assert may(root, facts(0o000, kind=DIR), SEARCH)
    assert not may(root, facts(0o600), SEARCH)


MINIMAL = [(ACL_USER_OBJ, 6, ANY), (ACL_GROUP_OBJ, 0, ANY), (ACL_OTHER, 0, ANY)]


def test_acl_named_user_is_masked() -> None:
    acl = [*MINIMAL, (ACL_USER, 4, 1001), (ACL_MASK, 4, ANY)]
    assert may(ALICE, facts(0o640, acl=acl), READ)
    masked = [*MINIMAL, (ACL_USER, 6, 1001), (ACL_MASK, 0, ANY)]
    assert not may(ALICE, facts(0o600, acl=masked), READ)


def test_acl_named_group_and_no_fall_through_to_other() -> None:
    acl = [*MINIMAL[:2], (ACL_OTHER, 4, ANY), (ACL_GROUP, 0, 500), (ACL_MASK, 7, ANY)]
    # She is in group 500, whose entry grants nothing: "other" does not apply to her.
    assert not may(ALICE, facts(0o604, acl=acl), READ)
    granted = [*MINIMAL, (ACL_GROUP, 4, 500), (ACL_MASK, 7, ANY)]
    assert may(ALICE, facts(0o640, acl=granted), READ)


def test_acl_group_class_needs_one_entry_granting_all_that_is_asked() -> None:
    acl = [*MINIMAL, (ACL_GROUP, 4, 500), (ACL_GROUP, 2, 1001), (ACL_MASK, 7, ANY)]
    assert may(ALICE, facts(0o670, acl=acl), READ)
    assert not may(ALICE, facts(0o670, acl=acl), READ | WRITE)


def test_parse_acl_reads_linux_xattr_form_and_refuses_others() -> None:
    raw = struct.pack("<I", 2) + struct.pack("<HHI", ACL_USER, 4, 1001)
    assert parse_acl(raw) == (AclEntry(ACL_USER, 4, 1001),)
    with pytest.raises(ValueError):
        parse_acl(struct.pack("<I", 1) + struct.pack("<HHI", ACL_USER, 4, 1001))
    with pytest.raises(ValueError):
        parse_acl(raw[:-1])


def test_an_identity_with_no_unix_account_is_refused() -> None:
    with pytest.raises(NoUnixAccount, match="user_map"):
        account_of("no-such-user-here", "admin", {})
    assert account_of("", "admin", {}).uid == os.getuid()  # the hub's own callers
    assert account_of("someone", "admin", {"someone": "nobody"}).name == "nobody"


# -- the walk, on real files: the hub opens them, the check is for another account --

OTHER = Account("other", 65534, 65534, frozenset({65534}))


@pytest.fixture
def tree() -> Iterator[Path]:
    """A world-searchable folder in /tmp (pytest's own tmp_path is private to its user)."""
    root = Path(tempfile.mkdtemp(prefix="dlhub-refs-"))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root)


def _readable(path: Path, account: Account = OTHER) -> bytes:
    fd = open_checked(str(path), account)
    with open(fd, "rb") as f:
        return f.read()


def test_a_readable_file_is_opened_and_a_private_one_is_refused(tree: Path) -> None:
    (tree / "open.bin").write_bytes(b"data")
    os.chmod(tree / "open.bin", 0o644)
    assert _readable(tree / "open.bin") == b"data"
    (tree / "private.bin").write_bytes(b"secret")
    os.chmod(tree / "private.bin", 0o600)
    with pytest.raises(ReferenceDenied) as err:
        _readable(tree / "private.bin")
    assert err.value.details["component"] == str(tree / "private.bin")


def test_an_unsearchable_folder_is_named(tree: Path) -> None:
    closed = tree / "closed"
    closed.mkdir(mode=0o700)
    (closed / "f.bin").write_bytes(b"x")
    os.chmod(closed / "f.bin", 0o644)
    with pytest.raises(ReferenceDenied) as err:
        _readable(closed / "f.bin")
    assert err.value.details["component"] == str(closed)


def test_a_symlink_is_judged_on_its_target(tree: Path) -> None:
    (tree / "private.bin").write_bytes(b"secret")
    os.chmod(tree / "private.bin", 0o600)
    os.symlink(tree / "private.bin", tree / "link.npy")
    os.symlink("private.bin", tree / "relative-link")
    for link in ("link.npy", "relative-link"):
        with pytest.raises(ReferenceDenied) as err:
            _readable(tree / link)
        assert err.value.details["component"] == str(tree / "private.bin")
    os.chmod(tree / "private.bin", 0o644)
    assert _readable(tree / "link.npy") == b"secret"


def test_a_link_through_an_unsearchable_folder_is_refused(tree: Path) -> None:
    closed = tree / "closed"
    closed.mkdir(mode=0o700)
    (closed / "f.bin").write_bytes(b"x")
    os.chmod(closed / "f.bin", 0o644)
    os.symlink(closed / "f.bin", tree / "via")
    with pytest.raises(ReferenceDenied):
        _readable(tree / "via")


def test_missing_components_loops_and_non_files(tree: Path) -> None:
    with pytest.raises(ReferenceNotFound) as err:
        _readable(tree / "nope" / "f.bin")
    assert err.value.details["component"] == str(tree / "nope")
    os.symlink("loop", tree / "loop")
    with pytest.raises(ReferenceFormatError, match="symbolic links"):
        _readable(tree / "loop")
    with pytest.raises(ReferenceFormatError, match="not a regular file"):
        _readable(tree)
    with pytest.raises(ReferenceFormatError):
        _readable(Path("relative.bin"))


def test_an_acl_on_the_real_file_is_read(tree: Path) -> None:
    target = tree / "shared.bin"
    target.write_bytes(b"for other")
    os.chmod(target, 0o600)
    raw = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in [
        (ACL_USER_OBJ, 6, ANY), (ACL_USER, 4, OTHER.uid), (ACL_GROUP_OBJ, 0, ANY),
        (ACL_MASK, 4, ANY), (ACL_OTHER, 0, ANY)])
    try:
        os.setxattr(target, ACL_XATTR, raw)
    except OSError as exc:  # pragma: no cover - a filesystem without POSIX ACLs
        pytest.skip(f"no POSIX ACLs on {tree}: {exc}")
    assert _readable(target) == b"for other"
    assert not may(Account("third", 4242, 4242, frozenset({4242})),
                   FileFacts.of(target.stat(), parse_acl(os.getxattr(target, ACL_XATTR))), READ)


def test_writing_needs_the_folder_and_never_replaces_anothers_file(tree: Path) -> None:
    with parent_of(str(tree / "out.npy"), OTHER) as (walk, name), \
            pytest.raises(ReferenceDenied, match="may not write"):
        check_writable(walk, name, OTHER)
    os.chmod(tree, 0o777)
    (tree / "theirs.npy").write_bytes(b"x")
    with parent_of(str(tree / "theirs.npy"), OTHER) as (walk, name), \
            pytest.raises(ReferenceDenied, match="belongs to"):
        check_writable(walk, name, OTHER)
    with parent_of(str(tree / "new.npy"), OTHER) as (walk, name):
        check_writable(walk, name, OTHER)

