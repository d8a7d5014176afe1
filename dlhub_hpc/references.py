"""Inputs by reference: a file on a shared filesystem or an HTTPS URL in place of its bytes.

``FileRef("/lus/proj/frame.npy")`` and ``URLRef("https://...")`` may stand anywhere in an
input. The hub reads what they name (a file only after checking that the caller's Unix
account may read it) and hands the servable the content: a numpy array for a name ending
in ``.npy``, else the raw bytes (read once into the hub's memory). On the wire a reference is one
msgpack ext record (``protocol.REF_EXT``) holding ``[kind, target]``, or
``[kind, target, token]`` for a URL fetched with the caller's bearer token (a Globus
collection's HTTPS access, a site's data portal).
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgpack

from dlhub_hpc.errors import ReferenceFormatError

logger = logging.getLogger(__name__)

MAX_TARGET_CHARS = 4096  # PATH_MAX; a URL longer than this is no reference either
CLI_PREFIX = "@ref:"  # ``dlhub-hpc run NAME @ref:/path`` or ``@ref:https://...``
NPY_SUFFIX = ".npy"
MAX_TOKEN_CHARS = 8192
# RFC 6750's b64token: nothing that could end the Authorization header or start another
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def _check_target(target: Any, what: str) -> str:
    if not isinstance(target, str) or not target or len(target) > MAX_TARGET_CHARS:
        raise ReferenceFormatError(
            f"a {what} must be a non-empty string of at most {MAX_TARGET_CHARS} characters",
            reference=str(target)[:200])
    if "\x00" in target:
        raise ReferenceFormatError(f"a {what} may not hold a NUL character",
                                   reference=target[:200])
    return target


@dataclass(frozen=True, slots=True)
class FileRef:
    """A file the hub reads for the caller: an absolute path on a filesystem the hub sees."""

    path: str

    def __post_init__(self) -> None:
        path = _check_target(str(self.path) if hasattr(self.path, "__fspath__") else self.path,
                             "file reference")
        if not posixpath.isabs(path):
            raise ReferenceFormatError(
                f"file reference {path!r} is relative; give an absolute path (the hub does "
                "not share your working directory)", reference=path)
        object.__setattr__(self, "path", path)

    @property
    def target(self) -> str:
        return self.path

    @property
    def is_npy(self) -> bool:
        return self.path.endswith(NPY_SUFFIX)


@dataclass(frozen=True, slots=True)
class URLRef:
    """An ``https://`` URL the hub fetches for the caller. Without ``token`` no credentials
    are sent; with one, the hub sends ``Authorization: Bearer <token>`` to the URL's own
    origin (scheme, host and port) and to no other, redirects included. The token is the
    caller's (for a Globus collection, one for its ``https`` scope: see
    ``dlhub_hpc.globus_collections``); it is never shown in a repr, an error or a log."""

    url: str
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        url = _check_target(self.url, "URL reference")
        parts = urlsplit(url)
        try:
            _ = parts.port  # urllib checks the port as it reads it
        except ValueError:
            raise ReferenceFormatError(f"URL reference {url[:200]!r} has no valid port "
                                       "(1-65535)", reference=url[:200]) from None
        if parts.scheme != "https" or not parts.hostname:
            raise ReferenceFormatError(
                f"URL reference {url[:200]!r} is not an https:// URL with a host",
                reference=url[:200])
        if self.token is not None:
            _check_token(self.token, url)

    @property
    def target(self) -> str:
        return self.url

    @property
    def is_npy(self) -> bool:
        return urlsplit(self.url).path.endswith(NPY_SUFFIX)


def _check_token(token: Any, url: str) -> None:
    if (not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS
            or _TOKEN.fullmatch(token) is None):
        raise ReferenceFormatError(
            f"the token of URL reference {url[:200]!r} is not a bearer token: at most "
            f"{MAX_TOKEN_CHARS} characters of letters, digits and -._~+/ (then any '=')",
            reference=url[:200])


Reference = FileRef | URLRef
_KINDS: dict[str, type[FileRef] | type[URLRef]] = {"file": FileRef, "url": URLRef}
_KIND_OF = {FileRef: "file", URLRef: "url"}


def to_wire(ref: Reference) -> bytes:
    """The ext record's bytes: msgpack ``[kind, target]``, ``[kind, target, token]``."""
    record = [_KIND_OF[type(ref)], ref.target]
    if isinstance(ref, URLRef) and ref.token is not None:
        record.append(ref.token)
    return msgpack.packb(record, use_bin_type=True)


def from_wire(data: bytes) -> Reference:
    """A reference from its ext record; ``ReferenceFormatError`` if it is not one."""
    try:
        record = msgpack.unpackb(data, raw=False)
    except Exception:
        record = None
    if type(record) is not list or len(record) not in (2, 3):
        raise ReferenceFormatError("a reference record is not [kind, target] or "
                                   "[kind, target, token]")
    kind = record[0]
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ReferenceFormatError(f"unknown reference kind {str(kind)[:40]!r}; "
                                   f"known: {sorted(_KINDS)}")
    if len(record) == 2:
        return cls(record[1])
    if cls is not URLRef:
        raise ReferenceFormatError("only a URL reference carries a token")
    return URLRef(record[1], record[2])


def parse_cli(text: str) -> Reference | None:
    """``@ref:PATH`` (relative to this process's working directory) or ``@ref:https://...``
    as the CLI takes it; None for other text."""
    if not text.startswith(CLI_PREFIX):
        return None
    target = text[len(CLI_PREFIX):]
    if "://" in target:
        return URLRef(target)
    return FileRef(os.path.abspath(target) if target else target)


def has_references(value: Any) -> bool:
    """Whether ``value`` holds a reference anywhere in its lists and dicts."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _REF_TYPES:
            return True
        if kind is dict:
            item = list(item.values())
        elif kind is not list:
            continue
        kinds = set(map(type, item))  # one pass in C: a list of numbers costs no Python call
        if kinds & _REF_TYPES:
            return True
        if kinds & _NESTS:
            stack.extend(x for x in item if type(x) in _NESTS)
    return False


_REF_TYPES = frozenset({FileRef, URLRef})
_NESTS = frozenset({list, dict})


def result_path(target: str | os.PathLike[str] | FileRef | None) -> str | None:
    """``run(..., result_to=)`` as a request carries it: an absolute path (a relative one
    is taken from this process's working directory, which the hub does not share)."""
    if target is None:
        return None
    if isinstance(target, URLRef):
        raise ReferenceFormatError("result_to takes a file path; the hub does not upload "
                                   "results to URLs", reference=target.url[:200])
    path = target.path if isinstance(target, FileRef) else os.fspath(target)
    return FileRef(os.path.abspath(path)).path


ResultTo = str | os.PathLike[str] | FileRef | None  # what run(..., result_to=) takes
