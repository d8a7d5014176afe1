"""Whether a Unix account may read, write or search a file: the kernel's rule, as pure
functions over what ``fstat`` and a POSIX ACL say, so the hub can judge a file reference
for its caller without becoming the caller.

The rule (POSIX.1e, as Linux applies it): root may do anything but run a file no one may
run; the owner gets the owner bits; else a named-user ACL entry, masked; else the group
class: the owning group and named-group entries the account is in, masked, any one of
which granting is enough (and none granting denies, never falling through to "other");
else the "other" bits.
"""

from __future__ import annotations

import logging
import os
import pwd
import stat
import struct
from dataclasses import dataclass

from dlhub_hpc.errors import NoUnixAccount

logger = logging.getLogger(__name__)

READ, WRITE, SEARCH = 4, 2, 1  # the rwx bits of one class; SEARCH is x on a directory

ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = (
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20)
_ENTRY = struct.Struct("<HHI")  # tag, permissions, qualifier (uid or gid)


@dataclass(frozen=True, slots=True)
class Account:
    """A Unix account as the kernel sees it: its uid and every group it is in."""

    name: str
    uid: int
    gid: int  # its primary group: a file written for it gets this one
    gids: frozenset[int]


@dataclass(frozen=True, slots=True)
class AclEntry:
    tag: int
    perm: int
    qualifier: int  # a uid for ACL_USER, a gid for ACL_GROUP; unused otherwise


@dataclass(frozen=True, slots=True)
class FileFacts:
    """What the check needs of one file: its mode, owner, group and ACL (None: none)."""

    mode: int
    uid: int
    gid: int
    acl: tuple[AclEntry, ...] | None = None

    @classmethod
    def of(cls, st: os.stat_result, acl: tuple[AclEntry, ...] | None = None) -> FileFacts:
        return cls(st.st_mode, st.st_uid, st.st_gid, acl)


def parse_acl(raw: bytes) -> tuple[AclEntry, ...]:
    """The entries of a ``system.posix_acl_access`` value (Linux's xattr form); a value in
    no form this knows is refused (``ValueError``), so the caller can deny rather than guess."""
    if len(raw) < 4 or (len(raw) - 4) % _ENTRY.size:
        raise ValueError(f"an ACL of {len(raw)} bytes is not version header plus entries")
    (version,) = struct.unpack_from("<I", raw)
    if version != _ACL_VERSION:
        raise ValueError(f"ACL version {version} is not {_ACL_VERSION}")
    return tuple(AclEntry(*_ENTRY.unpack_from(raw, at)) for at in range(4, len(raw), _ENTRY.size))


def may(account: Account, facts: FileFacts, want: int) -> bool:
    """Whether ``account`` has every bit of ``want`` (READ | WRITE | SEARCH) on the file."""
    if account.uid == 0:  # CAP_DAC_OVERRIDE; run or search needs some x bit on a non-dir
        return not (want & SEARCH) or stat.S_ISDIR(facts.mode) or bool(facts.mode & 0o111)
    mode = facts.mode
    if account.uid == facts.uid:  # the owner bits (an ACL's user_obj entry is these)
        return _holds((mode >> 6) & 7, want)
    if not facts.acl:
        return _holds((mode >> 3) & 7 if facts.gid in account.gids else mode & 7, want)
    return _may_by_acl(account, facts.acl, facts.gid, want)


def _may_by_acl(account: Account, acl: tuple[AclEntry, ...], group: int, want: int) -> bool:
    mask = next((e.perm for e in acl if e.tag == ACL_MASK), 7)
    for entry in acl:
        if entry.tag == ACL_USER and entry.qualifier == account.uid:
            return _holds(entry.perm & mask, want)
    matching = [e.perm & mask for e in acl
                if (e.tag == ACL_GROUP_OBJ and group in account.gids)
                or (e.tag == ACL_GROUP and e.qualifier in account.gids)]
    if matching:  # one entry must grant all of it; no falling through to "other"
        return any(_holds(perm, want) for perm in matching)
    return _holds(next((e.perm for e in acl if e.tag == ACL_OTHER), 0), want)


def _holds(bits: int, want: int) -> bool:
    return want & ~bits & 7 == 0


def account_of(identity: str, admin: str, user_map: dict[str, str]) -> Account:
    """The Unix account a caller acts as: the hub's own for its admin (and callers of a
    hub without authentication, whose identity is empty), else ``user_map``'s name or
    the identity itself. ``NoUnixAccount`` if there is none."""
    if identity in ("", admin):
        uid, gid = os.getuid(), os.getgid()
        return Account(pwd.getpwuid(uid).pw_name, uid, gid, frozenset({gid, *os.getgroups()}))
    name = user_map.get(identity, identity)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise NoUnixAccount(
            f"identity {identity!r} has no Unix account {name!r} on the hub's node, so the "
            "hub cannot check which files it may read; the admin maps it in the hub's "
            "config (user_map: {" + repr(identity) + ": UNIX_NAME})",
            identity=identity, unix_user=name) from None
    groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, frozenset(groups))
