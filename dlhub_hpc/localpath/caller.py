"""The client's use of the local path: open a link on first need, then share and fetch."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from dlhub_hpc.errors import DlhubHpcError, ProtocolError
from dlhub_hpc.localpath.link import LocalLink, open_link, say_once

logger = logging.getLogger(__name__)

_NEEDS_LINK = 16385  # smaller arrays travel inside the header anyway


def large_array_in(value: Any, limit: int) -> bool:
    """Whether ``value`` is, or directly holds, a numpy array of at least ``limit`` bytes."""
    if isinstance(value, np.ndarray):
        return value.nbytes >= limit
    items = value.values() if isinstance(value, dict) else value
    if isinstance(items, list | tuple) or isinstance(value, dict):
        return any(isinstance(v, np.ndarray) and v.nbytes >= limit for v in items)
    return False


class CallerPath:
    """One client's link to the hub's exchange, opened at most once (thread-safe)."""

    def __init__(self) -> None:
        self.enabled = True  # Client.local_fast_path
        self.link: LocalLink | None = None
        # Tells the hub this client holds a link, so its large outputs come by it too.
        self.on_linked: Callable[[], Any] | None = None
        self._tried = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CallerPath(enabled={self.enabled}, linked={self.link is not None})"

    def ready_for(self, inputs: Any, address: str,
                  ask: Callable[[], Any]) -> bool:
        """Whether ``inputs`` go by the path: a large array, and a link (opened now, with
        the hub's offer from ``ask()``, on first need). Else they go as they always did."""
        if self.needs_opening(inputs):
            self.open(address, ask)
        return self.takes(inputs)

    def needs_opening(self, inputs: Any) -> bool:
        """Whether ``inputs`` would open a link: a large array, and none tried yet or the
        one held went away (a restarted hub)."""
        return self.enabled and self._wanted() and large_array_in(inputs, _NEEDS_LINK)

    def takes(self, inputs: Any) -> bool:
        """Whether ``inputs`` go by the link already open (never opens one)."""
        link = self.link if self.enabled else None
        return link is not None and not link.gone and large_array_in(inputs, link.min_bytes)

    def _wanted(self) -> bool:
        return not self._tried or (self.link is not None and self.link.gone)

    def open(self, address: str, ask: Callable[[], Any]) -> bool:
        """Whether this client holds a link; the first call tries to open one, and so does
        the first after the one held went away (once: a hub without the path stays so)."""
        if not self.enabled:
            return False
        if self._wanted():
            with self._lock:
                if self._wanted():
                    if self.link is not None:
                        self.link.close()  # the end of a hub that is gone
                    self.link = self._open(address, ask)
                    self._tried = True
        return self.link is not None

    def _open(self, address: str, ask: Callable[[], Any]) -> LocalLink | None:
        if not address.startswith(("tcp://", "ipc://")):
            return None  # in the hub's process: arrays are not encrypted there anyway
        try:
            offer = ask()
        except DlhubHpcError as exc:
            say_once(f"the hub does not offer it ({exc.message})")
            return None
        link = open_link(offer)
        if link is not None and self.on_linked is not None:
            try:
                self.on_linked()
            except DlhubHpcError as exc:  # outputs then come through the hub, as before
                say_once(f"for outputs, the hub refused ({exc.message})")
        return link

    def share(self) -> Callable[[np.ndarray], str | None] | None:
        return None if self.link is None or not self.enabled else self.link.share

    def fetch(self, ticket: str, dtype: np.dtype[Any], shape: tuple[int, ...]) -> Any:
        if self.link is None:
            raise ProtocolError("the hub sent a same-node array, but this client has no link")
        return self.link.fetch(ticket, dtype, shape)

    def close(self) -> None:
        with self._lock:
            if self.link is not None:
                self.link.close()
            self.link, self._tried = None, True
