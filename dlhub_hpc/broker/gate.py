"""What the broker's state asks before it lets a caller or a worker in: its gate.

A ``BrokerState`` is given its gate when it is made, so it never runs without one. The hub
gives it ``dlhub_hpc.security.hub.HubSecurity``; ``OpenGate`` lets everyone in, for tests
and tools that run a state with no identities at all.
"""

from __future__ import annotations

import logging
from typing import Protocol

from dlhub_hpc.broker.events import ServableInfo

logger = logging.getLogger(__name__)


class Gate(Protocol):
    """Access rules, called on the broker's loop thread for every request and worker."""

    def authorize(self, user: str, info: ServableInfo) -> None:
        """May ``user`` run ``info``? Raises ``PermissionDenied`` (or another
        ``DlhubHpcError``) if not."""

    def may_see(self, user: str, name: str) -> bool:
        """May ``user`` know that servable ``name`` exists? Lookup errors (which list the
        versions, or a withdrawal's reason) are told only to those who may."""

    def may_serve(self, user: str, info: ServableInfo, pooled: bool = False) -> bool:
        """May a worker connected with credential identity ``user`` serve ``info``? A pooled
        one (asked per dispatch) also serves what other owners allow its owner's pools."""

    def credential_live(self, user: str) -> bool:
        """Is the worker credential identity ``user`` still live (not revoked)?"""


class OpenGate:
    """A gate that lets everyone in: no identities, every servable, every worker."""

    def __repr__(self) -> str:
        return "OpenGate()"

    def authorize(self, user: str, info: ServableInfo) -> None:
        return None

    def may_see(self, user: str, name: str) -> bool:
        return True

    def may_serve(self, user: str, info: ServableInfo, pooled: bool = False) -> bool:
        return True

    def credential_live(self, user: str) -> bool:
        return True
