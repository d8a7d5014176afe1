"""The citable metadata of a servable: the part of DataCite's kernel that DLHub records carry.

Written by hand in ``servable.yaml`` the short forms are accepted: a creator as
``"Family, Given"``, a related identifier as a DOI (``10.1234/abc``) or a URL. The
DLHub/DataCite JSON spelling (``titles``, ``creatorName``, ``relatedIdentifiers``...) is
read and written by ``dlhub_hpc.registry.dlhub_json``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

logger = logging.getLogger(__name__)

DOI_PATTERN = re.compile(r"^10\.\d{4,9}/\S+$")
ORCID_PATTERN = r"^\d{4}-\d{4}-\d{4}-\d{3}[\dX]$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def normalize_doi(value: str) -> str:
    """``https://doi.org/10.1/x``, ``doi:10.1/x`` or ``10.1/x`` -> ``10.1/x`` (lower case)."""
    text = value.strip()
    for prefix in ("https://doi.org/", "http://doi.org/", "https://dx.doi.org/", "doi:"):
        if text.lower().startswith(prefix):
            text = text[len(prefix):]
    if not DOI_PATTERN.match(text):
        raise ValueError(f"{value!r} is not a DOI; a DOI looks like 10.1234/abcd")
    return text.lower()


class Creator(_Strict):
    """One author: ``name`` as "Family, Given", with affiliations and an ORCID where known."""

    name: str = Field(min_length=1)
    affiliations: list[str] = Field(default_factory=list)
    orcid: str | None = Field(default=None, pattern=ORCID_PATTERN)

    @field_validator("orcid", mode="before")
    @classmethod
    def _bare_orcid(cls, value: Any) -> Any:
        if isinstance(value, str) and value.startswith("https://orcid.org/"):
            return value.removeprefix("https://orcid.org/")
        return value


class RelatedIdentifier(_Strict):
    """A paper, data set or code this servable relates to (DataCite's relatedIdentifier)."""

    identifier: str
    identifier_type: str = "DOI"
    relation_type: str = "IsDescribedBy"

    @field_validator("identifier")
    @classmethod
    def _clean(cls, value: str) -> str:
        return value.strip()


class Funding(_Strict):
    funder: str
    award: str = ""


class DataCite(_Strict):
    """Citable metadata: titles, creators, publisher, year, subjects, related work, rights."""

    title: str = Field(min_length=1)
    creators: list[Creator] = Field(default_factory=list)
    description: str = ""
    publisher: str = "DLHub"
    publication_year: int | None = Field(default=None, ge=1900, le=2200)
    subjects: list[str] = Field(default_factory=list)
    related_identifiers: list[RelatedIdentifier] = Field(default_factory=list)
    rights: str = ""
    funding: list[Funding] = Field(default_factory=list)
    doi: str | None = Field(default=None, description="this servable's own DOI, if it has one")

    @field_validator("creators", mode="before")
    @classmethod
    def _creator_strings(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("related_identifiers", mode="before")
    @classmethod
    def _identifier_strings(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        out = []
        for v in value:
            if isinstance(v, str):
                try:
                    v = {"identifier": normalize_doi(v), "identifier_type": "DOI"}
                except ValueError:
                    v = {"identifier": v, "identifier_type": "URL"}
            out.append(v)
        return out

    @field_validator("doi")
    @classmethod
    def _doi(cls, value: str | None) -> str | None:
        return None if value is None else normalize_doi(value)

    def dois(self) -> list[str]:
        """Every DOI recorded: the servable's own and those of related work (papers, data)."""
        found = [self.doi] if self.doi else []
        for rel in self.related_identifiers:
            if rel.identifier_type.upper() == "DOI":
                try:
                    found.append(normalize_doi(rel.identifier))
                except ValueError:
                    logger.debug("related identifier %s is not a DOI", rel.identifier)
        return found
