"""The function registered with Globus Compute, and its registration.

``dlhub_hpc_forward`` is registered by its source text (Globus Compute's
``PureSourceTextInspect``), never as pickled code, and does its own import: the endpoint runs
it in a fresh namespace, and the logic lives in the dlhub-hpc installed beside the endpoint
(:mod:`dlhub_hpc.bridge.forward`), so upgrading dlhub-hpc there needs no new registration.
Its one argument and its result are strings (``JSONData``) holding base64 msgpack.

A site admin registers it once (``dlhub-hpc endpoint register``) and lists the function id
in the endpoint's ``allowed_functions``; the endpoint templates also allow only these two
serializers, so the endpoint never unpickles anything a caller sends.
"""

from __future__ import annotations

import inspect
import logging
import platform
from typing import Any

logger = logging.getLogger(__name__)

FUNCTION_NAME = "dlhub_hpc_forward"
CODE_SERIALIZER = "globus_compute_sdk.serialize.PureSourceTextInspect"
DATA_SERIALIZER = "globus_compute_sdk.serialize.JSONData"
#: what the endpoint templates allow, and all that RemoteClient sends or accepts
ALLOWED_SERIALIZERS = (CODE_SERIALIZER, DATA_SERIALIZER)
DESCRIPTION = "dlhub-hpc: forward a servable call from a RemoteClient to the site's hub"


def dlhub_hpc_forward(call: str) -> str:
    """Forward one dlhub-hpc call to the site's hub; runs on a Globus Compute endpoint.

    It runs as the local user of the endpoint process (on a multi-user endpoint, the user
    mapped from the caller's Globus identity) and reaches the hub named by DLHUB_HPC_HUB.
    """
    from dlhub_hpc.bridge.forward import forward

    return forward(call)


def function_source() -> str:
    """The source text that is registered (and that the endpoint runs)."""
    return inspect.getsource(dlhub_hpc_forward)


def registration_request(
    *, public: bool = False, group: str | None = None, description: str = DESCRIPTION
) -> dict[str, Any]:
    """The body that :func:`register_function` sends to Globus Compute (for ``--dry-run``)."""
    from globus_compute_sdk.sdk.client import (
        FunctionRegistrationData,
        FunctionRegistrationMetadata,
    )
    from globus_compute_sdk.version import __version__

    data = FunctionRegistrationData(
        function_code=function_source(),
        function_name=FUNCTION_NAME,
        description=description,
        metadata=FunctionRegistrationMetadata(
            python_version=platform.python_version(), sdk_version=__version__
        ),
        public=public,
        group=group,
        serialized=False,
    )
    body: dict[str, Any] = data.to_dict()
    return body


def register_function(
    client: Any = None, *, public: bool = False, group: str | None = None
) -> str:
    """Register the forwarding function with Globus Compute; returns its function id.

    ``client`` is a ``globus_compute_sdk.Client`` (made, and logged in, if not given).
    """
    if client is None:
        from globus_compute_sdk import Client

        client = Client()
    function_id = str(client.register_source_code(
        function_source(), FUNCTION_NAME, description=DESCRIPTION, public=public, group=group
    ))
    logger.info("registered %s as function %s", FUNCTION_NAME, function_id)
    return function_id
