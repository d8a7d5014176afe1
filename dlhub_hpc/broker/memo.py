"""Memoization of deterministic servables: an LRU cache bounded in bytes, and its keys.

A key is a digest of the servable's content digest, its version, the method and the
canonical encoding of the (checked) input: dict keys sorted, numpy arrays hashed by dtype,
shape and bytes. A new version has a new digest, so it never sees an old version's answers.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from typing import Any

import msgpack
import numpy as np

from dlhub_hpc.protocol import StreamRef

logger = logging.getLogger(__name__)

_ENTRY_OVERHEAD = 64  # bytes of bookkeeping per entry, roughly


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _canonical(value[k]) for k in sorted(value, key=repr)}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def _key_hash(digest: str, version: int, method: str) -> Any:
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{digest}\0{version}\0{method}\0".encode())
    return h


def packed_memo_key(digest: str, version: int, method: str, packed: Any) -> bytes:
    """``memo_key`` of the payload whose canonical msgpack bytes (no arrays, no dicts) are
    ``packed``, without decoding them."""
    h = _key_hash(digest, version, method)
    h.update(packed)
    return bytes(h.digest())


def memo_key(digest: str, version: int, method: str, payload: Any) -> bytes:
    """The cache key of one request; equal inputs give equal keys."""
    h = _key_hash(digest, version, method)
    arrays: list[np.ndarray] = []

    def default(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            arrays.append(obj)
            return msgpack.ExtType(1, f"{obj.dtype.str}{obj.shape}".encode())
        if isinstance(obj, np.generic):
            return obj.item()
        return repr(obj)

    h.update(msgpack.packb(_canonical(payload), default=default, use_bin_type=True))
    for arr in arrays:
        h.update(np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data)
    return h.digest()


def value_nbytes(value: Any) -> int:
    """About how many bytes ``value`` holds (arrays, bytes and strings exactly)."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, dict):
        return sum(value_nbytes(k) + value_nbytes(v) for k, v in value.items()) + 16
    if isinstance(value, list | tuple):
        return sum(value_nbytes(v) for v in value) + 8
    return 8


class MemoCache:
    """Answers by key, least recently used first out, at most ``max_bytes`` in all."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._entries: OrderedDict[bytes, tuple[Any, int]] = OrderedDict()

    def __repr__(self) -> str:
        return f"MemoCache(max_bytes={self.max_bytes})"

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> tuple[bool, Any]:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return False, None
        self._entries.move_to_end(key)
        self.hits += 1
        return True, entry[0]

    def put(self, key: bytes, value: Any) -> None:
        if type(value) is StreamRef:  # a streamed output: its bytes pass by once
            return
        size = value_nbytes(value) + _ENTRY_OVERHEAD
        if size > self.max_bytes:
            return  # larger than the whole cache: not worth evicting everything for
        old = self._entries.pop(key, None)
        if old is not None:
            self.nbytes -= old[1]
        self._entries[key] = (value, size)
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.nbytes -= dropped
            self.evictions += 1

    def stats(self) -> dict[str, int]:
        return {"memo_hits": self.hits, "memo_misses": self.misses,
                "memo_entries": len(self._entries), "memo_bytes": self.nbytes,
                "memo_evictions": self.evictions}
