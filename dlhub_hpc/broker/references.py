"""Inputs and results by reference, resolved for the hub off its loop.

A request that holds ``FileRef``/``URLRef`` values, or names ``result_to``, goes to this
module's threads before the broker's state sees it. Each file is checked for the caller's
Unix account (``security.file_walk``) and opened once, as the hub, on the descriptor the
check used; the hub then hands the worker the content like an inline input: a ``.npy``
file as a read-only array, anything else as bytes, read once into the hub's own memory
(never a mapping the caller could change or truncate while the request waits), at most
the request's cap, and only from regular files on filesystems that store data. Workers never see a
path: a sandboxed worker could not open the caller's files, and one that could would
read them as the wrong user. ``result_to`` is checked when the request comes (so a bad
one fails at once) and again when the result is written (the real guard).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import secrets
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlhub_hpc.broker import url_fetch
from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.errors import ReferenceDenied, ReferenceFormatError, ReferenceTooLarge
from dlhub_hpc.references import NPY_SUFFIX, FileRef, URLRef, has_references
from dlhub_hpc.security.file_access import Account, account_of
from dlhub_hpc.security.file_walk import check_writable, open_checked, parent_of

logger = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class ReferenceSettings:
    """What the hub's config says about references."""

    admin: str
    user_map: dict[str, str]
    max_bytes: int  # per request, all its references together
    ca_file: Path | None = None
    fetch_timeout: float = 60.0
    allow_networks: tuple[str, ...] = ()  # non-public ranges URLRefs may still reach

    @classmethod
    def of(cls, config: HubConfig, admin: str) -> ReferenceSettings:
        return cls(admin, dict(config.user_map), config.max_reference_bytes,
                   config.reference_ca_file, config.reference_fetch_timeout,
                   tuple(config.reference_allow_networks))


class References:
    """Reads, fetches and writes references for callers; every method runs on a thread
    beside the hub's loop (``reference_routing``), never on the loop."""

    def __init__(self, settings: ReferenceSettings) -> None:
        self.settings = settings
        self._opener = url_fetch.opener(settings.ca_file)
        self._allow = url_fetch.networks(settings.allow_networks)

    def __repr__(self) -> str:
        return f"References(max_bytes={self.settings.max_bytes})"

    def account(self, user: str) -> Account:
        return account_of(user, self.settings.admin, self.settings.user_map)

    def resolve(self, payload: Any, user: str, result_to: str | None) -> Any:
        """``payload`` with every reference replaced by its content, after checking
        ``result_to`` (if any) may be written; typed ``BadReference`` errors otherwise."""
        try:
            return self._resolve(payload, user, result_to)
        except OSError as exc:  # the hub's own access failed (a root-squashed mount)
            raise _unusable(exc) from None

    def _resolve(self, payload: Any, user: str, result_to: str | None) -> Any:
        account = self.account(user)
        if result_to is not None:
            _check_can_give(account, result_to)
            with parent_of(FileRef(result_to).path, account) as (walk, name):
                check_writable(walk, name, account)
        budget = [self.settings.max_bytes]
        return _replace(payload, lambda ref: self._content(ref, account, budget))

    def _content(self, ref: FileRef | URLRef, account: Account, budget: list[int]) -> Any:
        if isinstance(ref, URLRef):
            body = url_fetch.fetch(ref.url, budget[0], self.settings.fetch_timeout,
                                   self._opener, self._allow, ref.token)
            budget[0] -= len(body)
            return _npy_from_bytes(body, ref.url) if ref.is_npy else body
        fd = open_checked(ref.path, account)
        with open(fd, "rb") as file:
            _check_plain_file(fd, ref.path)
            # read once into the hub's own memory: a mapping would change (or raise
            # SIGBUS) when the caller rewrites or truncates the file while it is queued
            body = _read_capped(file, os.fstat(fd).st_size, budget[0], ref.path,
                                self.settings.max_bytes)
        budget[0] -= len(body)
        return _npy_from_bytes(body, ref.path) if ref.is_npy else body

    def write(self, path: str, user: str, value: Any) -> FileRef:
        """Write ``value`` to ``path`` for ``user`` (checked again here), as the caller's
        own file where the hub may give it away; the reply's value is its ``FileRef``."""
        try:
            return self._write(path, user, value)
        except OSError as exc:
            raise _unusable(exc) from None

    def _write(self, path: str, user: str, value: Any) -> FileRef:
        account = self.account(user)
        _check_can_give(account, path)
        data = _result_bytes(value, path)
        with parent_of(path, account) as (walk, name):
            check_writable(walk, name, account)
            folder = os.open(f"/proc/self/fd/{walk.fd}", os.O_RDONLY | os.O_DIRECTORY)
            try:
                _write_in(folder, name, data, account)
            finally:
                os.close(folder)
        return FileRef(path)


def _check_can_give(account: Account, path: str) -> None:
    """A file the hub writes must end up the caller's own: the hub must be root (it gives
    the file away) or the caller's own user. Anything else would leave the result in a
    file of the hub's user, which the caller could read only if everyone could."""
    if os.geteuid() not in (0, account.uid):
        raise ReferenceDenied(
            f"this hub runs as uid {os.geteuid()}, neither root nor Unix user {account.name}, "
            f"so a file it wrote to {path} would not be yours; run without result_to and "
            "save the output yourself", reference=path, unix_user=account.name)


def _unusable(exc: OSError) -> ReferenceDenied:
    where = exc.filename or "a reference"
    return ReferenceDenied(f"the hub itself could not use {where}: {exc.strerror or exc}; "
                           "the hub's node must reach the file (a mount that squashes root "
                           "hides it from a hub run as root)", reference=str(where))


def _replace(value: Any, content: Callable[[FileRef | URLRef], Any]) -> Any:
    kind = type(value)
    if kind is FileRef or kind is URLRef:
        return content(value)
    if kind is list and has_references(value):
        return [_replace(v, content) for v in value]
    if kind is dict and has_references(value):
        return {k: _replace(v, content) for k, v in value.items()}
    return value


# Filesystems whose files are views of the kernel or of the reading process (the hub's
# own, read as root), not data a caller stored: statfs f_type magic numbers.
_PSEUDO_FS = {
    0x9FA0: "proc", 0x62656572: "sysfs", 0x64626720: "debugfs", 0x74726163: "tracefs",
    0x27E0EB: "cgroup", 0x63677270: "cgroup2", 0x73636673: "securityfs",
    0xCAFE4A11: "bpf", 0x62656570: "configfs", 0x6165676C: "pstore",
    0xDE5E81E4: "efivarfs", 0xF97CFF8C: "selinuxfs", 0x1CD1: "devpts",
    0x65735543: "fusectl", 0x42494E4D: "binfmt_misc", 0x6E736673: "nsfs",
    0x1373: "devfs",
}


def _fs_type(fd: int) -> int | None:
    """The statfs f_type of the filesystem ``fd`` is on (the first field on Linux)."""
    buf = ctypes.create_string_buffer(256)  # larger than struct statfs on every arch
    if _libc.fstatfs(fd, buf) != 0:
        return None
    return int.from_bytes(buf.raw[:ctypes.sizeof(ctypes.c_long)], sys.byteorder) & 0xFFFFFFFF


def _check_plain_file(fd: int, path: str) -> None:
    """Only regular files on filesystems that store data: never /proc, /sys and the like,
    whose files report size 0 and show what the hub (not the caller) may see."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise ReferenceFormatError(f"{path} is not a regular file", reference=path)
    kind = _fs_type(fd)
    if kind is None or kind in _PSEUDO_FS:
        name = "unknown" if kind is None else _PSEUDO_FS[kind]
        raise ReferenceDenied(f"{path} is on a {name} filesystem, whose files are views of "
                              "the kernel or the hub, not stored data; copy the data to a "
                              "regular file first", reference=path)


def _read_capped(file: Any, size: int, left: int, path: str, limit: int) -> bytes:
    """At most ``left`` bytes of ``file`` (whatever its size says): one more is refused."""
    if size > left:
        raise _too_large(path, size, left, limit)
    parts = [file.read(size + 1)]  # one more than it says: did it grow?
    got = len(parts[0])
    while got <= left and len(parts[-1]) > 0 and got > size:
        parts.append(file.read(min(1 << 20, left + 1 - got)))
        got += len(parts[-1])
    if got > left:
        raise _too_large(path, got, left, limit)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _too_large(path: str, size: int, left: int, limit: int) -> ReferenceTooLarge:
    return ReferenceTooLarge(
        f"{path} is {size} bytes or more, over the {left} bytes left of "
        f"HubConfig.max_reference_bytes ({limit}) for this request; split the work, or "
        "ask the admin to raise it", reference=path, size=size, limit=limit,
        setting="HubConfig.max_reference_bytes")


def _npy_from_bytes(body: bytes, where: str) -> np.ndarray:
    file = io.BytesIO(body)
    dtype, shape, fortran = _npy_header(file, where)
    count = int(np.prod(shape, dtype=np.int64))
    if file.tell() + count * dtype.itemsize > len(body):
        raise ReferenceFormatError(f"{where} is shorter than the array its header describes",
                                   reference=where)
    flat = np.frombuffer(body, dtype=dtype, count=count, offset=file.tell())
    return flat.reshape(shape, order="F" if fortran else "C")


def _npy_header(file: Any, where: str) -> tuple[np.dtype[Any], tuple[int, ...], bool]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(file)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read(file)
    except Exception as exc:
        raise ReferenceFormatError(f"{where} is not a .npy file numpy can read ({exc}); a "
                                   "name ending in .npy must hold one (np.save)",
                                   reference=where) from None
    if dtype.hasobject or dtype.names is not None:
        raise ReferenceFormatError(f"{where} holds dtype {dtype}, which would need pickle; "
                                   "save a numeric array", reference=where)
    return dtype, tuple(shape), bool(fortran)


def _result_bytes(value: Any, path: str) -> bytes:
    """A result as its file holds it: ``.npy`` for a name ending so, else raw bytes."""
    if path.endswith(NPY_SUFFIX):
        try:
            array = np.asarray(value)
        except Exception:
            array = np.asarray(None)
        if array.dtype.hasobject:
            raise ReferenceFormatError(
                f"the result is a {type(value).__name__}, not an array, so it cannot be "
                f"written as {path}; name a file not ending in .npy for bytes",
                reference=path)
        out = io.BytesIO()
        np.lib.format.write_array(out, array, allow_pickle=False)
        return out.getvalue()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise ReferenceFormatError(
        f"the result is a {type(value).__name__}; {path} does not end in .npy, so it takes "
        "bytes only: name a .npy file for arrays", reference=path)


def _write_in(folder: int, name: str, data: bytes, account: Account) -> None:
    """Write ``data`` to ``name`` in ``folder`` whole or not at all: a new file beside it,
    given to the account (when the hub may), then renamed over it."""
    part = f".{name}.{secrets.token_hex(6)}.part"
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=folder)
    try:
        with open(fd, "wb", closefd=False) as file:
            file.write(data)
        if os.geteuid() == 0 and account.uid != 0:
            os.fchown(fd, account.uid, account.gid)
        elif os.geteuid() != account.uid:  # the hub cannot give it away: let them read it
            os.fchmod(fd, 0o644)
        os.rename(part, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part, dir_fd=folder)
        raise
    finally:
        os.close(fd)
