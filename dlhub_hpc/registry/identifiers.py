"""Persistent identifiers: ``owner/name@version``, and the sha256 digest of the contents.

``owner/name@version#sha256:DIGEST`` names one immutable version and proves its content;
``owner/name`` alone names the servable (it resolves to its latest version that is not
withdrawn).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from dlhub_hpc.errors import SpecError
from dlhub_hpc.servable.spec import parse_ref

logger = logging.getLogger(__name__)

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def persistent_id(name: str, version: int, digest: str) -> str:
    return f"{name}@{version}#sha256:{digest}"


@dataclass(frozen=True)
class Identifier:
    """A parsed identifier: the name, the version (None: latest) and the digest (if given)."""

    name: str
    version: int | None = None
    digest: str | None = None

    def __str__(self) -> str:
        at = "" if self.version is None else f"@{self.version}"
        return f"{self.name}{at}" + (f"#sha256:{self.digest}" if self.digest else "")


def parse_identifier(text: str) -> Identifier:
    """``owner/name``, ``owner/name@3`` or ``owner/name@3#sha256:HEX`` -> ``Identifier``."""
    ref, _, fragment = text.strip().partition("#")
    name, version = parse_ref(ref)
    digest = None
    if fragment:
        digest = fragment.removeprefix("sha256:").lower()
        if not _DIGEST.match(digest):
            raise SpecError(
                f"{text!r}: the digest after '#' should be sha256:<64 hex digits>"
            )
        if version is None:
            raise SpecError(f"{text!r}: a digest needs a version too (owner/name@N#sha256:...)")
    return Identifier(name, version, digest)
