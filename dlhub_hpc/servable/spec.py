"""The servable spec: what a model is, who made it, and how to call it.

Its three blocks follow DLHub's ``dlhub.json``: ``datacite`` (citable metadata),
``dlhub`` (owner, name, files) and ``servable`` (the shim type and the methods with their
declared input and output types). A servable directory holds ``servable.yaml`` (or
``servable.json``) next to the files it names.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dlhub_hpc.errors import MethodNotFound, SpecError
from dlhub_hpc.servable.types import ArgType

logger = logging.getLogger(__name__)

SPEC_FILENAMES = ("servable.yaml", "servable.yml", "servable.json")
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"

ShimType = Literal["python_function", "sklearn"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataCite(_Strict):
    """Citable metadata (a subset of DataCite's kernel; the publication issue grows it)."""

    title: str
    creators: list[str] = Field(default_factory=list)
    description: str = ""
    publication_year: int | None = None
    related_identifiers: list[str] = Field(default_factory=list)


class DlhubBlock(_Strict):
    owner: str = Field(pattern=NAME_PATTERN)
    name: str = Field(pattern=NAME_PATTERN)
    files: list[str] = Field(default_factory=list, description="bundle files; empty: all")

    @model_validator(mode="after")
    def _relative_files(self) -> DlhubBlock:
        for f in self.files:
            p = Path(f)
            if p.is_absolute() or ".." in p.parts:
                raise ValueError(f"file {f!r} must be a relative path inside the directory")
        return self


class MethodSpec(_Strict):
    input: ArgType
    output: ArgType = ArgType(type="any")
    description: str = ""
    function: str | None = Field(
        default=None,
        description="python_function: 'module:function' in the bundle; sklearn: model attribute",
    )
    takes_batch: bool = Field(
        default=False, description="the function takes a list of inputs and returns a list"
    )


class ServableBlock(_Strict):
    type: ShimType
    model: str | None = Field(default=None, description="sklearn: the pickled model file")
    methods: dict[str, MethodSpec]
    deterministic: bool = Field(
        default=False, description="same input, same output: the hub may memoize answers"
    )
    max_batch_size: int = Field(default=16, ge=1, le=4096)
    max_batch_delay: float = Field(
        default=0.001, ge=0, le=1.0,
        description="seconds a part-full batch may wait for more requests; 0: never wait",
    )

    @model_validator(mode="after")
    def _shim_needs(self) -> ServableBlock:
        if not self.methods:
            raise ValueError("a servable needs at least one method")
        for name, method in self.methods.items():
            if not name.isidentifier():
                raise ValueError(f"method name {name!r} is not an identifier")
            if self.type == "python_function" and not method.function:
                raise ValueError(f"method {name!r} needs 'function: module:function'")
        if self.type == "sklearn" and not self.model:
            raise ValueError("an sklearn servable needs 'model: FILE'")
        return self


class ServableSpec(_Strict):
    datacite: DataCite
    dlhub: DlhubBlock
    servable: ServableBlock

    @property
    def full_name(self) -> str:
        return f"{self.dlhub.owner}/{self.dlhub.name}"

    def method(self, name: str) -> MethodSpec:
        try:
            return self.servable.methods[name]
        except KeyError:
            known = sorted(self.servable.methods)
            raise MethodNotFound(
                f"{self.full_name} has no method {name!r}; it has {known}",
                servable=self.full_name,
                method=name,
                methods=known,
            ) from None

    @classmethod
    def from_data(cls, data: Any, source: str = "spec") -> ServableSpec:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
                for err in exc.errors()
            )
            raise SpecError(f"{source} is not a valid servable spec: {problems}") from None

    @classmethod
    def from_file(cls, path: Path) -> ServableSpec:
        try:
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise SpecError(f"cannot read servable spec {path}: {exc}") from exc
        return cls.from_data(data, str(path))


def find_spec_file(directory: Path) -> Path:
    """The spec file of a servable directory, or ``SpecError`` saying what to add."""
    for name in SPEC_FILENAMES:
        if (directory / name).is_file():
            return directory / name
    raise SpecError(
        f"{directory} has no servable spec; add one of {', '.join(SPEC_FILENAMES)} "
        "(see the examples in dlhub_hpc/examples)"
    )


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``owner/name`` or ``owner/name@version`` -> (``owner/name``, version or None)."""
    name, _, version = ref.partition("@")
    owner, slash, short = name.partition("/")
    if not slash or not owner or not short:
        raise SpecError(f"servable reference {ref!r} should look like owner/name[@version]")
    if not version:
        return name, None
    if not (version.isascii() and version.isdigit() and int(version) >= 1):
        raise SpecError(f"version in {ref!r} should be a positive integer")
    return name, int(version)
