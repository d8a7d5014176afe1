"""The Globus Compute bridge: call a site's hub from anywhere.

- :mod:`~dlhub_hpc.bridge.function`: the function registered with Globus Compute and run
  on the site's endpoint (``dlhub-hpc endpoint register``);
- :mod:`~dlhub_hpc.bridge.forward`: what it does there: one call to the hub, as the
  endpoint's local user;
- :mod:`~dlhub_hpc.bridge.templates`: endpoint configurations, single- and multi-user
  (``dlhub-hpc endpoint configure``);
- :mod:`~dlhub_hpc.bridge.remote`: :class:`RemoteClient`, the caller's side;
- :mod:`~dlhub_hpc.bridge.codec` and :mod:`~dlhub_hpc.bridge.limits`: the msgpack call and
  reply, and Globus Compute's size and rate limits.

Identity: the forwarding function runs as whatever local user the endpoint process runs as.
A single-user endpoint runs as the user who started it; a multi-user endpoint starts a
user endpoint per caller, as the local user its identity mapping picks for the caller's
Globus identity. The hub sees that local user, and its access rules apply to that user.

Nothing here imports Globus Compute until it is used.
"""

from dlhub_hpc.bridge.limits import ComputeLimits
from dlhub_hpc.bridge.remote import RemoteClient

__all__ = ["ComputeLimits", "RemoteClient"]
