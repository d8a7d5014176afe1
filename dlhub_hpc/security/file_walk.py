"""Open a file for a caller, as the hub, only if the caller's Unix account could.

The path is walked one component at a time from ``/`` on ``O_PATH`` descriptors, the way
the kernel resolves it: each folder passed must be searchable by the account, symbolic
links are followed by reading them (so a link is judged on its target, and on the folders
on the way there), and every check is made on ``fstat`` of the descriptor that is then
used. Nothing is looked up twice by name, so nothing can be swapped in between the check
and the read (a component replaced meanwhile fails the walk). The file itself is opened
for reading through its checked descriptor (``/proc/self/fd``), never by name again.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from dlhub_hpc.errors import ReferenceDenied, ReferenceFormatError, ReferenceNotFound
from dlhub_hpc.security.file_access import (
    ACL_OTHER,
    ACL_XATTR,
    READ,
    SEARCH,
    WRITE,
    Account,
    AclEntry,
    FileFacts,
    may,
    parse_acl,
)

logger = logging.getLogger(__name__)

MAX_LINKS = 40  # as Linux's own limit on links followed in one lookup
_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_WORDS = {READ: "read", WRITE: "write to", SEARCH: "search", WRITE | SEARCH: "write to"}


@dataclass
class Walk:
    """Where a walk stands: a descriptor of the folder reached, and its path for messages."""

    fd: int
    shown: str
    reference: str  # the path as the caller gave it
    links: int = 0

    def close(self) -> None:
        os.close(self.fd)


def facts_of(fd: int) -> FileFacts:
    """The mode, owner and ACL of an open descriptor (``O_PATH`` ones too)."""
    st = os.fstat(fd)
    return FileFacts.of(st, acl_of(fd))


def acl_of(fd: int) -> tuple[AclEntry, ...] | None:
    try:
        raw = os.getxattr(f"/proc/self/fd/{fd}", ACL_XATTR)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None  # no ACL, or a filesystem without them: the mode bits decide
        raise
    try:
        return parse_acl(raw)
    except ValueError:
        logger.warning("an ACL in no form the hub reads: only the owner may use the file")
        return (AclEntry(ACL_OTHER, 0, 0),)  # no group entries: others get "other", nothing


def _denied(account: Account, what: int, component: str, reference: str) -> ReferenceDenied:
    return ReferenceDenied(
        f"Unix user {account.name} may not {_WORDS.get(what, 'use')} {component}, so the hub "
        f"will not use {reference} for you; ask its owner for access (chmod or setfacl), "
        "or send the data itself", reference=reference, component=component,
        unix_user=account.name)


def _missing(component: str, reference: str) -> ReferenceNotFound:
    return ReferenceNotFound(f"{component} does not exist (looking up {reference}); check the "
                             "path, and that the hub's node mounts that filesystem",
                             reference=reference, component=component)


@contextlib.contextmanager
def parent_of(path: str, account: Account) -> Iterator[tuple[Walk, str]]:
    """The checked folder holding ``path``'s last component (every folder on the way
    searchable by ``account``, links followed), and that last name, not looked up yet."""
    if not path.startswith("/"):
        raise ReferenceFormatError(f"{path!r} is not an absolute path", reference=path)
    walk = Walk(os.open("/", _PATH | os.O_DIRECTORY), "/", path)
    try:
        yield walk, _walk_to_last(walk, [p for p in path.split("/") if p], account)
    finally:
        walk.close()


def _walk_to_last(walk: Walk, parts: list[str], account: Account) -> str:
    """Walk ``parts`` but the last (which it returns); a link met on the way is replaced
    by its target's parts, and a final one too (``open_checked`` follows what it names)."""
    _check(walk, walk.fd, SEARCH, account)
    while True:
        while parts and parts[0] == ".":
            parts.pop(0)
        if not parts:
            raise ReferenceFormatError(f"{walk.reference} names a folder, not a file",
                                       reference=walk.reference)
        name = parts.pop(0)
        if not parts and name != "..":
            if not _follow_if_link(walk, name, parts):
                return name
            continue
        if _follow_if_link(walk, name, parts):
            continue
        _enter(walk, name, account)


def _follow_if_link(walk: Walk, name: str, parts: list[str]) -> bool:
    """If ``name`` in the current folder is a link, put its target in front of ``parts``
    (restarting from ``/`` for an absolute one) and say so."""
    if name == "..":
        return False
    try:
        target = os.readlink(name, dir_fd=walk.fd)
    except FileNotFoundError:
        return False  # missing: the caller's next step says where
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # not a link
            return False
        raise
    walk.links += 1
    if walk.links > MAX_LINKS:
        raise ReferenceFormatError(f"{walk.reference} passes more than {MAX_LINKS} symbolic "
                                   "links (a loop?)", reference=walk.reference)
    if target.startswith("/"):
        root = os.open("/", _PATH | os.O_DIRECTORY)
        walk.close()
        walk.fd, walk.shown = root, "/"
    parts[:0] = [p for p in target.split("/") if p]
    return True


def _enter(walk: Walk, name: str, account: Account) -> None:
    """Step into folder ``name`` (or up, for ``..``), checking it may be searched."""
    shown = _join(walk.shown, name)
    try:
        fd = os.open(name, _PATH | os.O_DIRECTORY, dir_fd=walk.fd)
    except FileNotFoundError:
        raise _missing(shown, walk.reference) from None
    except NotADirectoryError:
        raise ReferenceNotFound(f"{shown} is not a folder (looking up {walk.reference})",
                                reference=walk.reference, component=shown) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # it became a link after we looked: refuse the race
            raise ReferenceDenied(f"{shown} changed while the hub checked it; try again",
                                  reference=walk.reference, component=shown) from None
        raise
    walk.close()
    walk.fd, walk.shown = fd, shown
    _check(walk, fd, SEARCH, account)


def _join(shown: str, name: str) -> str:
    if name == "..":
        return os.path.dirname(shown.rstrip("/")) or "/"
    return f"{shown.rstrip('/')}/{name}"


def _check(walk: Walk, fd: int, want: int, account: Account) -> None:
    if not may(account, facts_of(fd), want):
        raise _denied(account, want, walk.shown, walk.reference)


def open_checked(path: str, account: Account) -> int:
    """A descriptor open for reading on the regular file ``path`` names, if ``account``
    may read it (and search every folder on the way). Typed errors say which component
    stops it: ``ReferenceNotFound``, ``ReferenceDenied``, ``ReferenceFormatError``."""
    with parent_of(path, account) as (walk, name):
        shown = _join(walk.shown, name)
        try:
            fd = os.open(name, _PATH, dir_fd=walk.fd)
        except FileNotFoundError:
            raise _missing(shown, path) from None
        try:
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):  # became a link after we looked
                raise ReferenceDenied(f"{shown} changed while the hub checked it; try again",
                                      reference=path, component=shown)
            if not stat.S_ISREG(st.st_mode):
                raise ReferenceFormatError(f"{shown} is not a regular file", reference=path,
                                           component=shown)
            if not may(account, FileFacts.of(st, acl_of(fd)), READ):
                raise _denied(account, READ, shown, path)
            # the inode just checked, opened for reading: never looked up by name again
            return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(fd)


def check_writable(walk: Walk, name: str, account: Account) -> None:
    """Whether ``account`` may put ``name`` in the walked folder: write and search on the
    folder, and a file already there must be its own (never replace another's)."""
    shown = _join(walk.shown, name)
    if name in (".", ".."):
        raise ReferenceFormatError(f"{walk.reference} names a folder, not a file",
                                   reference=walk.reference)
    _check(walk, walk.fd, WRITE | SEARCH, account)
    try:
        st = os.stat(name, dir_fd=walk.fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise ReferenceFormatError(f"{shown} is a folder", reference=walk.reference,
                                   component=shown)
    if st.st_uid != account.uid and account.uid != 0:
        raise ReferenceDenied(
            f"{shown} exists and belongs to uid {st.st_uid}, not to Unix user {account.name}; "
            "the hub replaces only your own files: pick another name",
            reference=walk.reference, component=shown, unix_user=account.name)
