"""Files on a Globus collection as inputs by reference.

Globus Connect Server (v5) serves each collection over HTTPS at a host of its own
(``https://g-1a2b3c.<domain>.data.globus.org``). A GET of a file there takes a bearer
token for the collection's ``https`` scope, or none where the collection is public. So a
file on a collection is a ``URLRef`` of that URL with the caller's token, which the hub
fetches like any other (https, public addresses only, its size cap) and sends the token
to that host alone::

    import globus_sdk
    from dlhub_hpc import Client
    from dlhub_hpc.globus_collections import collection_ref, https_scope

    # tokens for the Transfer API and for https_scope(COLLECTION), from your Globus login
    transfer = globus_sdk.TransferClient(authorizer=globus_sdk.AccessTokenAuthorizer(t1))
    frame = collection_ref(transfer, COLLECTION, "/frames/f001.npy", token=t2)
    Client().run("alice/seg", frame)

The Transfer API is asked only for the collection's HTTPS server (``https_server`` in its
record); the caller may skip it by writing the URL the Globus web app shows and
``URLRef(url, token=...)`` directly.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

from dlhub_hpc.errors import ReferenceDenied, ReferenceFormatError, ReferenceNotFound
from dlhub_hpc.references import URLRef

_SCOPE = "https://auth.globus.org/scopes/{}/https"


def https_scope(collection_id: str | uuid.UUID) -> str:
    """The scope a token needs to read files of ``collection_id`` over HTTPS."""
    return _SCOPE.format(_collection_id(collection_id))


def collection_url(transfer: Any, collection_id: str | uuid.UUID, path: str) -> str:
    """The HTTPS URL of ``path`` on the collection, asked of the Transfer API through
    ``transfer`` (a ``globus_sdk.TransferClient``); typed errors for a collection that is
    not there, not visible to you, or not served over HTTPS."""
    import globus_sdk

    collection = _collection_id(collection_id)
    if not path.startswith("/"):
        raise ReferenceFormatError(f"the path {path[:200]!r} on collection {collection} is "
                                   "relative; give it from the collection's root, /...",
                                   reference=path[:200])
    try:
        record = transfer.get_endpoint(collection)
    except globus_sdk.GlobusAPIError as exc:
        if exc.http_status == 404:
            raise ReferenceNotFound(f"Globus has no collection {collection}",
                                    reference=collection) from None
        if exc.http_status in (401, 403):
            raise ReferenceDenied(f"Globus would not show collection {collection} to you "
                                  f"({exc.code}); log in again, or ask its owner for access",
                                  reference=collection) from None
        raise
    server = record.get("https_server")
    if not server:
        raise ReferenceFormatError(
            f"collection {collection} ({record.get('display_name') or 'no name'}) has no "
            "HTTPS server: only Globus Connect Server v5 collections serve files over HTTPS",
            reference=collection)
    return f"{str(server).rstrip('/')}{quote(path)}"


def collection_ref(transfer: Any, collection_id: str | uuid.UUID, path: str,
                   token: str | None) -> URLRef:
    """``path`` on the collection as a ``URLRef`` the hub fetches with ``token`` (one for
    ``https_scope(collection_id)``; None for a public collection)."""
    return URLRef(collection_url(transfer, collection_id, path), token)


def _collection_id(value: str | uuid.UUID) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ReferenceFormatError(f"{str(value)[:100]!r} is not a Globus collection id "
                                   "(a UUID)", reference=str(value)[:100]) from None
