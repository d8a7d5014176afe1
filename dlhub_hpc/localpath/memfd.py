"""Arrays in sealed memfds: written once by their sender, then immutable, mapped read-only.

A sealed memfd (``F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK``) is anonymous memory with no
name in any filesystem: only a process handed its descriptor can map it, and nobody, its
writer included, can change its bytes after the seals. So the hub may check an input and
pass the same descriptor on to a worker without a copy, and without the sender being able
to change what the worker reads after the hub looked at it.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import weakref
from typing import Any

import numpy as np

from dlhub_hpc.errors import LocalPathRefused

logger = logging.getLogger(__name__)

SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
_WRITE_BYTES = 64 * 2**20  # one write(2) at a time: the kernel may write less anyway
_NEEDED = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK


def available() -> bool:
    """Whether this system has memfds and the seals the fast path needs."""
    return hasattr(os, "memfd_create") and hasattr(fcntl, "F_ADD_SEALS")


class Memfd:
    """An owned descriptor of a sealed memfd; closed when the last array over it goes."""

    __slots__ = ("__weakref__", "fd", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        weakref.finalize(self, os.close, fd)

    def __repr__(self) -> str:
        return f"Memfd(fd={self.fd}, size={self.size})"


class _Mapping(mmap.mmap):
    """A read-only map of a whole memfd; arrays over it reach it through their ``base``."""

    memfd: Memfd
    address: int


def check_sealed(fd: int) -> int:
    """The size of the sealed memfd ``fd``; ``LocalPathRefused`` for anything else (a file,
    a memfd its sender could still write, grow or shrink)."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        raise LocalPathRefused("the descriptor is not a memfd; send arrays through "
                               "dlhub_hpc's local path, which seals them") from None
    if seals & _NEEDED != _NEEDED:
        raise LocalPathRefused("the memfd is not sealed against writes and resizes; seal it "
                               "with F_SEAL_WRITE, F_SEAL_GROW and F_SEAL_SHRINK", seals=seals)
    return os.fstat(fd).st_size


def seal_array(arr: np.ndarray, name: str = "dlhub-hpc") -> Memfd:
    """A new sealed memfd holding the bytes of ``arr`` (C order): the one copy the path makes."""
    data = np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        size, done = data.nbytes, 0
        while done < size:  # write(2) fills tmpfs pages about twice as fast as a mapping
            done += os.write(fd, data[done:done + _WRITE_BYTES])
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    except BaseException:
        os.close(fd)
        raise
    return Memfd(fd, size)


def map_array(memfd: Memfd, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
    """The array ``memfd`` holds, mapped read-only (no copy); ``LocalPathRefused`` if the
    memfd's size is not the one ``dtype`` and ``shape`` need."""
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if need != memfd.size:
        raise LocalPathRefused(f"a local array of {need} bytes came in a memfd of "
                               f"{memfd.size} bytes", need=need, size=memfd.size)
    if need == 0:
        arr = np.empty(shape, dtype)
        arr.flags.writeable = False
        return arr
    region = _Mapping(memfd.fd, need, access=mmap.ACCESS_READ)  # a read-only buffer
    region.memfd = memfd  # keeps the descriptor open while an array maps it
    flat = np.frombuffer(region, dtype=np.uint8)
    region.address = flat.ctypes.data
    return flat.view(dtype).reshape(shape)


def whole_memfd(arr: Any) -> Memfd | None:
    """The memfd ``arr`` maps exactly (as ``map_array`` made it, or a reshape of that),
    so it can be passed on without a copy; None for any other array."""
    base = arr
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    if (isinstance(base, _Mapping) and arr.flags.c_contiguous
            and arr.nbytes == base.memfd.size and arr.ctypes.data == base.address):
        return base.memfd
    return None
