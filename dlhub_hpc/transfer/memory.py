"""Memory for a large array received in chunks: its pages are mapped a chunk at a time, as
the chunk's bytes come, in one call each, instead of by a page fault per 4 KiB on first
write.

np.empty's memory for such an array is mapped fresh (it is over glibc's largest mmap
threshold, 32 MiB), and faulting it in took 0.2 to 2.7 s per GiB on a 2-core virtual
machine, where it also stalls compacting huge pages; populated (MADV_POPULATE_WRITE), 0.3
to 0.4 s. ``benchmarks/big_inputs.py``'s 1 GiB echo took 17 s before, 12 to 15 s after.
Only the pages of bytes that came are made resident, as with np.empty: a transfer that
never sends holds none. Where the kernel cannot populate (before Linux 5.14, or off Linux)
the array is numpy's own, as before.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import sys
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

PREFAULT_MIN_BYTES = 32 * 2**20
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)
_PAGE = mmap.PAGESIZE
# Through ctypes, which lets other threads run while the kernel maps the pages.
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_supported: bool | None = None  # whether this kernel populates: found out on first use


def populating_supported() -> bool:
    """Whether this kernel maps pages on request (asked once, on one page of its own)."""
    global _supported
    if _supported is None:
        _supported = False
        if _libc is not None:
            probe = mmap.mmap(-1, _PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            view = np.frombuffer(probe, dtype=np.uint8)
            _supported = _madvise(view.ctypes.data, _PAGE) == 0
            del view
            probe.close()
        if not _supported:
            logger.info("this kernel cannot populate pages on request (MADV_POPULATE_WRITE, "
                        "Linux 5.14): large arrays are received into numpy's own memory")
    return _supported


def receiving_array(shape: tuple[int, ...], dtype: np.dtype[Any]) -> tuple[np.ndarray, bool]:
    """An uninitialised, writable array, like ``np.empty``, and whether ``populate`` is to
    map its pages: from ``PREFAULT_MIN_BYTES`` on, where the kernel can, it lies over an
    anonymous mapping of its own (it does not own its memory; the mapping goes when the last
    array over it does)."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < PREFAULT_MIN_BYTES or not populating_supported():
        return np.empty(shape, dtype=dtype), False
    region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.frombuffer(region, dtype=dtype).reshape(shape), True


def populate(address: int, start: int, end: int) -> bool:
    """Map the pages that bytes ``start`` to ``end`` of the array at ``address`` (one from
    ``receiving_array``, so page aligned) fall in. False once the kernel refuses the request
    itself (then the writes fault the pages in); a lack of memory is left to the write."""
    first = start - start % _PAGE
    failure = _madvise(address + first, end - first)
    if failure == errno.EINVAL:
        global _supported
        _supported = False
        return False
    return True


def _madvise(address: int, length: int) -> int:
    """0, or the errno of MADV_POPULATE_WRITE over ``length`` bytes at ``address``."""
    assert _libc is not None
    done = _libc.madvise(ctypes.c_void_p(address), ctypes.c_size_t(length),
                         ctypes.c_int(_MADV_POPULATE_WRITE))
    return 0 if done == 0 else ctypes.get_errno()
