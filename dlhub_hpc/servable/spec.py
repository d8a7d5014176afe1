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
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dlhub_hpc.errors import MethodNotFound, SpecError
from dlhub_hpc.servable.datacite import DataCite
from dlhub_hpc.servable.types import ArgType

logger = logging.getLogger(__name__)

SPEC_FILENAMES = ("servable.yaml", "servable.yml", "servable.json")
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
MAX_VERSION = 2**63 - 1  # versions are SQLite integers (int64)
# A site profile by name, never a path: a publisher may not point a hub at a file
PROFILE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"

ShimType = Literal[
    "python_function", "sklearn",
    "python_class_method", "torch", "onnx", "keras", "pipeline",  # model types and pipelines
    "tensorflow",
]
MODEL_FILE_TYPES = ("sklearn", "python_class_method", "torch", "onnx", "keras", "tensorflow")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


VISIBILITY_PATTERN = r"^(public|user:[A-Za-z0-9_.@-]+|group:[A-Za-z0-9_.-]+)$"


class DlhubBlock(_Strict):
    owner: str = Field(pattern=NAME_PATTERN)
    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(default="", description="the author's own label, e.g. 1.2.0")
    domains: list[str] = Field(default_factory=list, description="e.g. materials science")
    visible_to: list[Annotated[str, Field(pattern=VISIBILITY_PATTERN)]] = Field(
        default_factory=lambda: ["public"],
        description="who may run, describe and find it: public, user:NAME, group:NAME",
    )
    dependencies: dict[str, str] = Field(
        default_factory=dict, description="python packages: name -> version specifier"
    )
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
        description="python_function: 'module:function' in the bundle; sklearn, "
        "python_class_method, torch, keras: the model's method; onnx: the output to return",
    )
    takes_batch: bool = Field(
        default=False, description="the function takes a list of inputs and returns a list"
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="default keyword parameters of the method (DLHub's)"
    )
    autobatch: bool = Field(
        default=False, description="DLHub's autobatch: an input is a list, the function is "
        "called once per element and the answer is the list of results",
    )
    unpack: bool = Field(
        default=False, description="DLHub's unpack: a list or tuple input is passed as "
        "positional arguments, f(*x)",
    )

    @model_validator(mode="after")
    def _one_batching(self) -> MethodSpec:
        if self.autobatch and self.takes_batch:
            raise ValueError("'autobatch' (called per element) and 'takes_batch' (called on "
                             "the whole batch) exclude each other; keep one")
        return self


class PipelineStep(_Strict):
    """One step of a pipeline: another published servable (pin ``version`` to fix it)."""

    servable: str = Field(description="owner/name of the step's servable")
    version: int | None = Field(default=None, ge=1, description="None: the latest at call time")
    method: str | None = Field(default=None, description="None: the servable's default method")

    @property
    def ref(self) -> str:
        at = "" if self.version is None else f"@{self.version}"
        return f"{self.servable}{at}" + (f".{self.method}" if self.method else "")


class PipelineStage(_Strict):
    """A pipeline stage: one step, or ``parallel`` steps that all get the same input and
    whose outputs go on together, as a list in their order (an ensemble's members)."""

    servable: str | None = None
    version: int | None = Field(default=None, ge=1)
    method: str | None = None
    parallel: list[PipelineStep] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> PipelineStage:
        if (self.servable is None) == (self.parallel is None):
            raise ValueError("a pipeline step names either 'servable' or 'parallel' steps")
        if self.parallel is not None and (self.version is not None or self.method):
            raise ValueError("'version' and 'method' belong inside each parallel step")
        if self.parallel is not None and not self.parallel:
            raise ValueError("'parallel' needs at least one step")
        return self

    @property
    def members(self) -> list[PipelineStep]:
        if self.parallel is not None:
            return self.parallel
        assert self.servable is not None
        return [PipelineStep(servable=self.servable, version=self.version, method=self.method)]


class ServableBlock(_Strict):
    type: ShimType
    model: str | None = Field(
        default=None, description="the model file: pickle/joblib, .pt, .onnx or .keras"
    )
    module: str | None = Field(
        default=None,
        description="torch state dict: 'package.module:Class' of the network, in the bundle",
    )
    init_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="torch state dict: keyword arguments of the Class"
    )
    steps: list[PipelineStage] | None = Field(
        default=None, description="pipeline: the servables to run in order, in the hub"
    )
    methods: dict[str, MethodSpec]
    model_summary: str = Field(default="", description="e.g. 'RandomForestRegressor(n=100)'")
    options: dict[str, Any] = Field(
        default_factory=dict, description="DLHub's servable options, e.g. "
        "serialization_method of an sklearn model; kept as the record gave them",
    )
    deterministic: bool = Field(
        default=False, description="same input, same output: the hub may memoize answers"
    )
    compile_trees: bool = Field(
        default=False, description="sklearn tree models (forests, trees, gradient boosting): "
        "predict with the compiled numpy path, used only if it answers as the model's own "
        "predict on sample rows at load; false: scikit-learn's own predict",
    )
    max_batch_size: int = Field(default=16, ge=1, le=4096)
    max_batch_delay: float | None = Field(
        default=None, ge=0, le=1.0,
        description="seconds a part-full batch may wait for more requests; 0: never wait; "
        "unset: a tenth of the servable's recent batch time, from 1 ms to 50 ms",
    )
    ranks: int = Field(
        default=1, ge=1, le=65536,
        description="MPI ranks per worker (mpi4py); rank 0 talks to the hub, all share a batch",
    )
    ensemble: Literal["mean", "list"] | None = Field(
        default=None,
        description="with ranks > 1: every rank runs the whole batch as one ensemble member "
        "(DLHUB_HPC_RANK) and rank 0 combines them (mean, or a list); unset: split the rows",
    )
    default_profile: str | None = Field(
        default=None, pattern=PROFILE_NAME_PATTERN,
        description="the site profile (an installed one, by name) a hub starts a pilot from "
        "when a request finds no worker for it, where the hub's servable_profiles allows it",
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

    @model_validator(mode="after")
    def _model_type_needs(self) -> ServableBlock:
        if self.type in MODEL_FILE_TYPES and not self.model:
            raise ValueError(f"a {self.type} servable needs 'model: FILE'")
        if self.module is not None and self.type != "torch":
            raise ValueError("'module' is only for torch state dicts")
        if self.module is not None and ":" not in self.module:
            raise ValueError(f"module {self.module!r} should look like 'package.module:Class'")
        if (self.type == "pipeline") != (self.steps is not None):
            raise ValueError("a pipeline servable needs 'steps', and only a pipeline has them")
        if self.steps is not None and not self.steps:
            raise ValueError("a pipeline needs at least one step")
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
    if not (version.isascii() and version.isdigit() and len(version) <= 19
            and 1 <= int(version) <= MAX_VERSION):
        raise SpecError(f"version in {ref!r} should be a positive integer, at most {MAX_VERSION}",
                        ref=ref)
    return name, int(version)
