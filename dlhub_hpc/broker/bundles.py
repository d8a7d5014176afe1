"""Replies bundled per caller: while the loop applies one step's actions, small messages to
a caller that sends bundles itself are held, then sent as one frame each (see
``dlhub_hpc.protocol.bundle``). A worker's batch answers many of one caller's requests at
once; bundled, they cost the hub one send and one CurveZMQ box instead of one each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dlhub_hpc.protocol.bundle import BUNDLE_BYTES, MAX_BUNDLE, bundleable

_CALLERS = 65536  # callers remembered as sending bundles; past it, each learns again


class ReplyBundles:
    """Which callers take bundles, and what is held for them in the step being applied."""

    def __init__(self) -> None:
        self._takers: set[bytes] = set()
        self._held: dict[bytes, list[bytes]] = {}
        self._sizes: dict[bytes, int] = {}
        self._depth = 0  # nested applies: held until the outermost ends

    def __repr__(self) -> str:
        return f"ReplyBundles(takers={len(self._takers)}, held={len(self._held)})"

    def learn(self, identity: bytes) -> None:
        """``identity`` sent a bundle: it reads them."""
        if identity not in self._takers:
            if len(self._takers) >= _CALLERS:
                self._takers.clear()
            self._takers.add(identity)

    def begin(self) -> None:
        self._depth += 1

    def end(self) -> list[tuple[bytes, list[bytes]]]:
        """What the step held, per caller, once the outermost step ends (else nothing)."""
        self._depth -= 1
        if self._depth or not self._held:
            return []
        held, self._held, self._sizes = self._held, {}, {}
        return list(held.items())

    def hold(self, identity: bytes, frames: Sequence[Any]) -> list[bytes] | None:
        """Hold ``frames`` for ``identity`` if it may be bundled: None then. Else what was
        held for it before, to send first (an empty list when nothing was)."""
        if (not self._depth or identity not in self._takers or not bundleable(frames)):
            return self._held.pop(identity, [])
        held = self._held.setdefault(identity, [])
        size = self._sizes.get(identity, 0) + len(frames[0])
        if len(held) >= MAX_BUNDLE or size > BUNDLE_BYTES:  # full: it goes first
            self._held[identity], self._sizes[identity] = [frames[0]], len(frames[0])
            return held
        held.append(frames[0])
        self._sizes[identity] = size
        return None
