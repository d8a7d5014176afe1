"""An inference request's body, decoded from its ``Content-Encoding`` within the gateway's
body limit.

The gateway's HTTP server hands bodies over as they came (``auto_decompress=False``): a
few megabytes of gzip can inflate to gigabytes, and a server that inflates before the
limit is checked holds them all. Here the limit bounds what is inflated, not only what
was sent.
"""

from __future__ import annotations

import zlib

from aiohttp import web

from dlhub_hpc.errors import InvalidInput, PayloadTooLarge

_GZIP_OR_ZLIB = 47  # 32 + 15: zlib reads either header
_ZLIB, _RAW = 15, -15


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body as its sender wrote it before encoding; ``PayloadTooLarge`` past ``limit``
    bytes (sent or inflated), ``InvalidInput`` for an encoding it is not in."""
    try:
        raw = await request.read()  # the app's client_max_size bounds what was sent
    except web.RequestPayloadError as exc:  # a body cut short, a broken chunked encoding
        why = " ".join(str(exc).split()).partition("message: ")[2] or str(exc)
        raise InvalidInput(f"the request body cannot be read: {why}") from None
    return decoded(raw, request.headers.get("Content-Encoding", ""), limit)


def decoded(raw: bytes, encoding: str, limit: int) -> bytes:
    """``raw`` inflated as ``encoding`` says (gzip, deflate, identity or none)."""
    kind = encoding.strip().lower()
    if kind in ("", "identity"):
        return raw
    if kind in ("gzip", "x-gzip"):
        return _inflate(raw, _GZIP_OR_ZLIB, kind, limit)
    if kind == "deflate":  # HTTP's deflate is zlib's format; some clients send it bare
        try:
            return _inflate(raw, _ZLIB, kind, limit)
        except InvalidInput:
            return _inflate(raw, _RAW, kind, limit)
    raise InvalidInput(f"Content-Encoding {encoding[:40]!r} is not read here; send the body "
                       "as gzip, deflate or uncompressed")


def _inflate(raw: bytes, wbits: int, kind: str, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"the request body is not {kind} as its Content-Encoding says "
                           f"({exc}); send it in that encoding, or uncompressed") from None
    if len(out) > limit:
        raise PayloadTooLarge(
            f"the request body inflates to over the gateway's limit of {limit} bytes; send a "
            "smaller input, or start the gateway with a larger max_body_bytes", limit=limit)
    if not inflater.eof or inflater.unused_data:
        raise InvalidInput(f"the request body is not one whole {kind} stream: it ends early "
                           "or has bytes after its end")
    return out
