"""Request bodies inflated from their Content-Encoding, never past the gateway's limit."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import pytest

pytest.importorskip("aiohttp", reason="pip install dlhub-hpc[gateway] (aiohttp)")

from dlhub_hpc.errors import InvalidInput, PayloadTooLarge
from dlhub_hpc.gateway.bodies import decoded

BODY = b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}'


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize(("encoding", "sent"), [
    ("", BODY), ("identity", BODY), ("gzip", gzip.compress(BODY)),
    ("x-gzip", gzip.compress(BODY)), ("GZIP", gzip.compress(BODY)),
    ("deflate", zlib.compress(BODY)), ("deflate", raw_deflate(BODY)),
])
def test_each_encoding_clients_send_is_read_back_whole(encoding: str, sent: bytes) -> None:
    assert decoded(sent, encoding, 1 << 20) == BODY


@pytest.mark.parametrize(("encoding", "sent", "says"), [
    ("deflate", BODY, "not deflate"),
    ("gzip", b"not gzip at all", "not gzip"),
    ("gzip", gzip.compress(BODY)[:-12], "ends early"),
    ("gzip", gzip.compress(BODY) + b"junk", "bytes after its end"),
    ("br", BODY, "'br' is not read here"),
])
def test_a_body_not_in_its_encoding_is_an_input_error_that_says_so(
        encoding: str, sent: bytes, says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        decoded(sent, encoding, 1 << 20)


def test_a_small_body_that_inflates_past_the_limit_is_refused_without_inflating_it() -> None:
    bomb = gzip.compress(b"\0" * (256 << 20), 9)  # 256 MiB of zeros in a few hundred KiB
    assert len(bomb) < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge, match="inflates to over"):
            decoded(bomb, "gzip", 1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # about the limit, never the 256 MiB the body inflates to
    assert decoded(gzip.compress(b"\0" * (1 << 20)), "gzip", 1 << 20) == b"\0" * (1 << 20)
