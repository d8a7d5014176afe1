"""The same-node fast path: large arrays pass between a caller, the hub and a worker on
one node as sealed memfds handed over an AF_UNIX socket, not through CurveZMQ.

``memfd``: sealing and mapping arrays; ``wire``: the socket's small protocol;
``exchange``: the hub's end (tickets bound to CurveZMQ identities); ``link``: the caller's
and the worker's end; ``hubside``: the hub loop's offers and the protocol's hooks.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)
