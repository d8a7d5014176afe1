"""Site profiles: YAML files that say how pilot blocks run at a site.

A profile names a Parsl provider and launcher by ``type:`` (resolved against
``parsl.providers`` and ``parsl.launchers``; an unknown name fails listing the valid ones),
the scheduler options passed to that provider, the container runtime that wraps the worker,
GPU binding, walltime handling, elastic scaling limits, and how workers find the hub.
Profiles are data: loading one runs no subprocess; :func:`build_provider` makes the Parsl
objects only when a pilot starts.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Literal

import parsl.launchers
import parsl.providers
import yaml
from parsl.launchers.base import Launcher
from parsl.providers.base import ExecutionProvider
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dlhub_hpc.errors import ProfileError
from dlhub_hpc.shipped import shipped_dir

logger = logging.getLogger(__name__)

PROFILE_DIR_ENV = "DLHUB_HPC_PROFILES"
# The site_profiles/ the wheel ships inside the package, or the source checkout's.
BUNDLED_DIR = shipped_dir("site_profiles")
# Our scaling strategy owns the block counts; a provider must not start blocks by itself.
_OWNED_KEYS = {"init_blocks", "min_blocks", "max_blocks", "parallelism", "launcher"}
# Kept by the pilot when the provider has no such option (LocalProvider): its blocks then
# drain and are replaced at that walltime as a scheduler's would be.
_PILOT_KEYS = {"walltime"}


def _classes(module: Any, base: type) -> dict[str, type]:
    found = {}
    for name in getattr(module, "__all__", []):
        obj = getattr(module, name, None)
        if inspect.isclass(obj) and issubclass(obj, base):
            found[name] = obj
    return found


def provider_types() -> dict[str, type[ExecutionProvider]]:
    """Parsl's execution providers by class name (``SlurmProvider``, ``PBSProProvider``, ...)."""
    return _classes(parsl.providers, ExecutionProvider)


def launcher_types() -> dict[str, type[Launcher]]:
    """Parsl's launchers by class name (``SrunLauncher``, ``MpiExecLauncher``, ...)."""
    return _classes(parsl.launchers, Launcher)


def _resolve(kind: str, name: str, known: dict[str, type]) -> type:
    if name not in known:
        raise ValueError(f"unknown {kind} type {name!r}; valid types: {', '.join(sorted(known))}")
    return known[name]


def _provider_kwargs(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` less the pilot's own keys that ``cls`` does not take."""
    params = inspect.signature(cls).parameters
    return {k: v for k, v in options.items() if k not in _PILOT_KEYS or k in params}


def _check_kwargs(cls: type, options: dict[str, Any], what: str) -> None:
    params = inspect.signature(cls).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = sorted(n for n in params if n != "self")
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"{what} {cls.__name__} has no option(s) {unknown}; valid: {valid}")


class LauncherSpec(BaseModel):
    """A Parsl launcher: ``type`` plus its keyword arguments."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str = "SingleNodeLauncher"

    @model_validator(mode="after")
    def _known(self) -> LauncherSpec:
        cls = _resolve("launcher", self.type, launcher_types())
        _check_kwargs(cls, self.options(), "launcher")
        return self

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def build(self) -> Launcher:
        return launcher_types()[self.type](**self.options())


class ProviderSpec(BaseModel):
    """A Parsl provider: ``type``, its launcher, and its scheduler options (passed as is)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str = "LocalProvider"
    launcher: LauncherSpec = Field(default_factory=LauncherSpec)

    @model_validator(mode="after")
    def _known(self) -> ProviderSpec:
        cls = _resolve("provider", self.type, provider_types())
        owned = sorted(_OWNED_KEYS & set(self.options()))
        if owned:
            raise ValueError(f"provider options {owned} are set by the profile's scaling: "
                             "block, use scaling.min_blocks/max_blocks instead")
        _check_kwargs(cls, _provider_kwargs(cls, self.options()), "provider")
        return self

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def walltime_seconds(self) -> float | None:
        """The block walltime in seconds, or None when the provider has none (local)."""
        value = self.options().get("walltime")
        return None if value is None else parse_walltime(str(value))


class ContainerSpec(BaseModel):
    """The runtime that wraps each worker: ``none`` runs it on the host."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    runtime: str = "none"
    # None: the image 'dlhub-hpc build' recorded for the servable, checked against its digest.
    image: str | None = None
    binds: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_runtime(self) -> ContainerSpec:
        from dlhub_hpc.container.runtimes import ALIASES, RUNTIMES

        if ALIASES.get(self.runtime, self.runtime) not in RUNTIMES:
            raise ValueError(f"unknown container runtime {self.runtime!r}; valid runtimes: "
                             f"{', '.join(sorted(RUNTIMES))}")
        return self


class GpuSpec(BaseModel):
    """How workers bind to GPUs: one or several workers per listed device."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    devices: tuple[str, ...]
    env: Literal["CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
                 "ZE_AFFINITY_MASK"] = "CUDA_VISIBLE_DEVICES"
    workers_per_gpu: int = Field(default=1, ge=1)
    vendor: Literal["nvidia", "amd", "intel"] = "nvidia"

    @field_validator("devices", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, list | tuple):
            return tuple(str(v) for v in value)
        return value

    @field_validator("devices")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("gpus.devices lists no device; e.g. devices: [0, 1, 2, 3]")
        return value

    def worker_flags(self) -> list[str]:
        return ["--gpus", ",".join(self.devices), "--gpu-env", self.env,
                "--workers-per-gpu", str(self.workers_per_gpu)]


class HubAccess(BaseModel):
    """How workers on compute nodes reach the hub: an address, or a network interface."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    address: str | None = None
    interface: str | None = None


class ScalingSpec(BaseModel):
    """Elastic limits and thresholds for the scaling strategy (see pilot/scaling.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min_blocks: int = Field(default=1, ge=0)
    max_blocks: int = Field(default=1, ge=1)
    queue_per_worker: float = Field(default=4.0, gt=0, description="queued items per worker that "
                                    "trigger one more block")
    idle_release: float = Field(default=60.0, ge=0, description="seconds a block's workers "
                                "stay idle before an extra block is released")
    period: float = Field(default=5.0, gt=0, description="seconds between scaling decisions "
                          "(each reads the scheduler's queue once)")
    start_grace: float = Field(default=300.0, gt=0, description="seconds a running block may "
                               "take to connect its workers before it counts as dead")
    max_failures: int = Field(default=3, ge=1, description="blocks in a row that end before "
                              "a worker connects, after which the pilot stops submitting")

    @model_validator(mode="after")
    def _ordered(self) -> ScalingSpec:
        if self.min_blocks > self.max_blocks:
            raise ValueError(f"scaling.min_blocks ({self.min_blocks}) exceeds "
                             f"max_blocks ({self.max_blocks})")
        return self


class QueueSpec(BaseModel):
    """What the site's queue allows one user: walltime replacement needs two jobs at once."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    jobs_per_user: int | None = Field(default=None, ge=1, description="jobs of one user the "
                                      "queue runs at once (None: no limit stated)")

    def overlaps(self, blocks: int) -> bool:
        """Can a replacement run beside ``blocks`` blocks of this pilot?"""
        return self.jobs_per_user is None or blocks < self.jobs_per_user


class WalltimeSpec(BaseModel):
    """Seconds before a block's walltime ends at which workers drain / a replacement starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    drain_margin: float = Field(default=60.0, ge=0)
    replace_lead: float = Field(default=120.0, ge=0)

    @model_validator(mode="after")
    def _lead_first(self) -> WalltimeSpec:
        if self.replace_lead < self.drain_margin:
            raise ValueError("walltime.replace_lead must be at least drain_margin, so the "
                             "replacement is running before the old block drains")
        return self


class SiteProfile(BaseModel):
    """One site: provider, launchers, container, GPUs, hub access, scaling and walltime."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    description: str = ""
    provider: ProviderSpec = Field(default_factory=ProviderSpec)
    mpi_launcher: LauncherSpec | None = None
    workers_per_node: int | None = Field(default=None, ge=1)
    python: str | None = None
    container: ContainerSpec = Field(default_factory=ContainerSpec)
    gpus: GpuSpec | None = None
    hub: HubAccess = Field(default_factory=HubAccess)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    walltime: WalltimeSpec = Field(default_factory=WalltimeSpec)
    queue: QueueSpec = Field(default_factory=QueueSpec)

    def __repr__(self) -> str:
        return f"load_profile({self.name!r})"

    @model_validator(mode="after")
    def _walltime_fits(self) -> SiteProfile:
        wall = self.provider.walltime_seconds()
        if wall is not None and self.walltime.replace_lead >= wall:
            raise ValueError(f"walltime.replace_lead ({self.walltime.replace_lead:g}s) must be "
                             f"shorter than the provider walltime ({wall:g}s)")
        limit = self.queue.jobs_per_user
        if limit is not None and self.scaling.min_blocks > limit:
            raise ValueError(f"scaling.min_blocks ({self.scaling.min_blocks}) exceeds "
                             f"queue.jobs_per_user ({limit}): the queue would never run them")
        return self

    @property
    def workers(self) -> int:
        """Workers per node: one per GPU slot when GPUs are bound, else workers_per_node."""
        if self.workers_per_node is not None:
            return self.workers_per_node
        return len(self.gpus.devices) * self.gpus.workers_per_gpu if self.gpus else 1

    def worker_python(self) -> str:
        if self.python:
            return self.python
        return "python3" if self.container.runtime != "none" else sys.executable

    def drain_after(self) -> float | None:
        """Seconds after worker start at which it stops taking work; None without walltime."""
        wall = self.provider.walltime_seconds()
        return None if wall is None else max(wall - self.walltime.drain_margin, 1.0)


# The embedded default, for an installed package without site_profiles/ beside it.
EMBEDDED_LOCAL: dict[str, Any] = {
    "name": "local",
    "description": "Workers as local processes on this machine (no scheduler, no walltime).",
    "provider": {"type": "LocalProvider", "launcher": {"type": "SingleNodeLauncher",
                                                       "debug": False}},
    "hub": {"address": "127.0.0.1"},
    "scaling": {"min_blocks": 1, "max_blocks": 4, "period": 1},
}

_WALLTIME = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)$")


def parse_walltime(text: str) -> float:
    """``[D-]HH:MM:SS`` or ``MM:SS`` to seconds."""
    match = _WALLTIME.match(text.strip())
    if not match:
        raise ValueError(f"walltime {text!r} is not [D-]HH:MM:SS, e.g. '01:00:00'")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def profile_dirs() -> list[Path]:
    """Where profiles are looked up: $DLHUB_HPC_PROFILES (colon-separated), then site_profiles/."""
    extra = [Path(p) for p in os.environ.get(PROFILE_DIR_ENV, "").split(os.pathsep) if p]
    return [*extra, BUNDLED_DIR]


def profile_paths() -> dict[str, Path]:
    """Every profile found, by name (the first directory that holds a name wins)."""
    found: dict[str, Path] = {}
    for directory in profile_dirs():
        for path in sorted(directory.glob("*.yaml")) if directory.is_dir() else []:
            found.setdefault(path.stem, path)
    return found


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "profile"
        lines.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)


def parse_profile(data: Any, source: str = "<profile>") -> SiteProfile:
    """Validate a profile mapping; ProfileError says which field is wrong and why."""
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile is a YAML mapping, not {type(data).__name__}")
    try:
        return SiteProfile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(f"{source}: {_format_errors(exc)}", source=source) from None


def load_profile(name_or_path: str | Path) -> SiteProfile:
    """A profile by name (from :func:`profile_dirs`) or by the path of a YAML file."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        known = profile_paths()
        if str(name_or_path) == "local" and "local" not in known:
            return parse_profile(EMBEDDED_LOCAL, "the embedded 'local' profile")
        if str(name_or_path) not in known:
            searched = ", ".join(str(d) for d in profile_dirs())
            raise ProfileError(f"no site profile named {str(name_or_path)!r}; known profiles: "
                               f"{', '.join(sorted(known)) or 'none'} (searched {searched}; "
                               f"or pass a .yaml path)")
        path = known[str(name_or_path)]
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:  # unreadable, or not text
        raise ProfileError(f"cannot read the profile {path}: {exc}") from None
    if isinstance(data, dict):
        data.setdefault("name", path.stem)
    return parse_profile(data, str(path))


def unset_variables(profile: SiteProfile) -> list[str]:
    """Environment variables the provider options refer to that are not set here.

    Only ``${VAR}`` is filled from here (:func:`expand_vars`); a bare ``$VAR`` is left for
    the job's shell on the compute node (``$PBS_O_WORKDIR``, ``$SLURM_JOB_ID``).
    """
    text = yaml.safe_dump([profile.provider.options(), profile.container.image or ""])
    names = set(re.findall(r"\$\{(\w+)\}", text))
    return sorted(n for n in names if n not in os.environ)


def expand_vars(value: Any) -> Any:
    # ${VAR} in scheduler options and worker_init is filled from the caller's environment.
    if isinstance(value, str):
        return re.sub(r"\$\{(\w+)\}", lambda m: os.environ.get(m.group(1), m.group(0)), value)
    if isinstance(value, list):
        return [expand_vars(v) for v in value]
    return value


def build_provider(profile: SiteProfile, *, mpi: bool = False) -> ExecutionProvider:
    """A fresh Parsl provider for one pilot; ``mpi`` swaps in the profile's MPI launcher."""
    spec = profile.provider
    launcher_spec = spec.launcher
    if mpi:
        if profile.mpi_launcher is None:
            raise ProfileError(f"profile {profile.name!r} has no mpi_launcher; add one "
                               "(e.g. type: MpiExecLauncher, or SrunLauncher with "
                               "overrides: --mpi=pmix) to run servables with ranks > 1")
        launcher_spec = profile.mpi_launcher
    cls: Any = provider_types()[spec.type]
    options = {k: expand_vars(v) for k, v in _provider_kwargs(cls, spec.options()).items()}
    try:
        return cls(launcher=launcher_spec.build(), init_blocks=0, min_blocks=0,
                   max_blocks=profile.scaling.max_blocks + 1, **options)
    except TypeError as exc:
        raise ProfileError(f"profile {profile.name!r}: {spec.type} refused its options: {exc}"
                           ) from None
