"""A file on a Globus collection as a URLRef: the Transfer API request the helper makes
(through globus_sdk's own TransferClient, at a local server standing in for the Globus
cloud) and what becomes of its answers."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import globus_sdk
import pytest

from dlhub_hpc.errors import ReferenceDenied, ReferenceFormatError, ReferenceNotFound
from dlhub_hpc.globus_collections import collection_ref, collection_url, https_scope
from dlhub_hpc.references import URLRef

HTTPS_COLLECTION = "6b1f0b9e-1c3e-4a70-9a0c-5b1d5f3a2c11"
GRIDFTP_ENDPOINT = "0c8a2f30-4b8e-4d2e-8d47-0f9ab6e1c4d2"
HIDDEN = "9d1c3e52-7f6a-4b1e-9b3d-2e8f7a6c5b40"
RECORDS: dict[str, tuple[int, dict[str, Any]]] = {
    HTTPS_COLLECTION: (200, {"DATA_TYPE": "endpoint", "id": HTTPS_COLLECTION,
                             "display_name": "beamline frames",
                             "entity_type": "GCSv5_mapped_collection",
                             "https_server": "https://g-1a2b3c.f4e5.data.globus.org"}),
    GRIDFTP_ENDPOINT: (200, {"DATA_TYPE": "endpoint", "id": GRIDFTP_ENDPOINT,
                             "display_name": "old gridftp", "entity_type": "GCSv4_host",
                             "https_server": None}),
    HIDDEN: (403, {"code": "PermissionDenied", "message": "no", "request_id": "r1"}),
}


@pytest.fixture
def transfer_api() -> Iterator[tuple[globus_sdk.TransferClient, list[tuple[str, str | None]]]]:
    """A TransferClient whose requests reach a local server, which records each."""
    seen: list[tuple[str, str | None]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Authorization")))
            collection = self.path.rsplit("/", 1)[-1]
            status, body = RECORDS.get(collection, (404, {
                "code": "EndpointNotFound", "message": "not found", "request_id": "r2"}))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    client = globus_sdk.TransferClient(
        base_url=f"http://127.0.0.1:{httpd.server_address[1]}/",
        authorizer=globus_sdk.AccessTokenAuthorizer("transfer-token"))
    yield client, seen
    httpd.shutdown()
    httpd.server_close()


def test_a_collection_file_becomes_its_https_url_with_the_callers_token(
        transfer_api: tuple[globus_sdk.TransferClient, list[tuple[str, str | None]]]) -> None:
    client, seen = transfer_api
    ref = collection_ref(client, HTTPS_COLLECTION.upper(), "/frames/run 7/f001.npy",
                         token="collection.https-token")
    assert ref == URLRef("https://g-1a2b3c.f4e5.data.globus.org/frames/run%207/f001.npy",
                         "collection.https-token")
    assert ref.is_npy
    assert seen == [(f"/v0.10/endpoint/{HTTPS_COLLECTION}", "Bearer transfer-token")]
    assert https_scope(HTTPS_COLLECTION) == (
        f"https://auth.globus.org/scopes/{HTTPS_COLLECTION}/https")


def test_what_cannot_be_a_collection_url_gets_a_typed_error(
        transfer_api: tuple[globus_sdk.TransferClient, list[tuple[str, str | None]]]) -> None:
    client, _ = transfer_api
    with pytest.raises(ReferenceFormatError, match="no HTTPS server"):
        collection_url(client, GRIDFTP_ENDPOINT, "/x.npy")
    with pytest.raises(ReferenceNotFound, match="no collection"):
        collection_url(client, "00000000-0000-4000-8000-000000000000", "/x.npy")
    with pytest.raises(ReferenceDenied, match="PermissionDenied"):
        collection_url(client, HIDDEN, "/x.npy")
    with pytest.raises(ReferenceFormatError, match="not a Globus collection id"):
        collection_url(client, "beamline", "/x.npy")
    with pytest.raises(ReferenceFormatError, match="relative"):
        collection_url(client, HTTPS_COLLECTION, "frames/x.npy")
