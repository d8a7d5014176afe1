"""Apptainer definition files for servables, and the recipe digest that names an image.

The definition is what ``apptainer build`` / ``singularity build`` runs on a site that has
them. The local build (:mod:`dlhub_hpc.container.rootfs`) makes the same image contents
without Apptainer. Both lay the image out the same way:

- ``/opt/dlhub-hpc/lib``: dlhub_hpc and its worker's Python dependencies (on ``sys.path``
  through a ``.pth`` file),
- ``/opt/dlhub-hpc/bundles/DIGEST``: the servable's unpacked bundle, where the worker's
  bundle cache finds it without fetching,
- the runscript: ``exec python3 -m dlhub_hpc.worker --servable REF --cache-dir ... "$@"``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dlhub_hpc._version import PACKAGE_DIR, __version__
from dlhub_hpc.errors import ConfigError
from dlhub_hpc.servable.spec import ServableSpec

logger = logging.getLogger(__name__)

PREFIX = "/opt/dlhub-hpc"
LIB_DIR = f"{PREFIX}/lib"
BUNDLES_DIR = f"{PREFIX}/bundles"
# Debian packages every image has: the worker's Python and its compiled dependencies.
BASE_PACKAGES = ("python3", "python3-zmq", "python3-msgpack", "python3-numpy")
# Python distributions the worker imports beyond Debian's packages (copied or pip-installed).
WORKER_PYTHON_DEPS = ("pydantic>=2.5", "pyyaml>=6")
# Debian packages a shim needs in the image, by servable type.
SHIM_PACKAGES: dict[str, tuple[str, ...]] = {
    "sklearn": ("python3-sklearn",),
}
_BASE_RE = re.compile(r"^(docker|oras|library|localimage)://(.+)$")
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


class BuildOptions(BaseModel):
    """How to build a servable's image.

    ``base`` is a registry image (``docker://debian:bookworm-slim``, ``oras://...``) or a
    site's base SIF (``localimage:///path/base.sif``) for Apptainer builds; the local build
    always starts from Debian ``suite`` made by mmdebstrap from ``mirror``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: str = "docker://debian:bookworm-slim"
    apt: tuple[str, ...] = Field(default=(), description="extra Debian packages")
    pip: tuple[str, ...] = Field(default=(), description="extra pip requirements")
    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    squashfs_level: int = Field(
        default=3, ge=1, le=22, description="zstd level: 3 packs ~15x faster than 15, ~12% larger"
    )

    @field_validator("base")
    @classmethod
    def _known_base(cls, value: str) -> str:
        if not _BASE_RE.match(value):
            raise ValueError(
                f"base {value!r} must be docker://IMAGE, oras://IMAGE, library://IMAGE or "
                "localimage:///path/to/base.sif"
            )
        return value

    @field_validator("apt")
    @classmethod
    def _package_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [p for p in value if not _PACKAGE_RE.match(p)]
        if bad:
            raise ValueError(f"not Debian package names: {bad}")
        return value

    def __repr__(self) -> str:
        fields = self.model_dump(exclude_defaults=True)
        return f"BuildOptions({', '.join(f'{k}={v!r}' for k, v in fields.items())})"

    def packages(self, spec: ServableSpec) -> tuple[str, ...]:
        """Debian packages for the image: the worker's, the shim's, then the extra ones."""
        shim_apt = SHIM_PACKAGES.get(spec.servable.type, ())
        return tuple(dict.fromkeys((*BASE_PACKAGES, *shim_apt, *self.apt)))

    def local_base(self) -> Path | None:
        """The site's base SIF, when ``base`` is ``localimage://``."""
        agent, ref = self.bootstrap()
        return Path(ref) if agent == "localimage" else None

    def bootstrap(self) -> tuple[str, str]:
        """(Bootstrap agent, From) for the definition header."""
        match = _BASE_RE.match(self.base)
        assert match is not None  # validated at construction
        agent, ref = match.groups()
        return agent, ref


def build_options(**settings: Any) -> BuildOptions:
    """BuildOptions from user input; bad settings raise ConfigError saying what to fix."""
    try:
        return BuildOptions(**settings)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid build options: {problems}") from None


@functools.cache
def code_digest() -> str:
    """sha256 over dlhub_hpc's own Python sources, so an image tracks the code it carries.

    Computed once per process: a build copies the code this process was started with.
    """
    root = PACKAGE_DIR
    h = hashlib.sha256(__version__.encode())
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Recipe:
    """Everything an image is made from; ``digest`` names it in the image cache."""

    servable: str
    version: int
    bundle_digest: str
    spec: ServableSpec
    options: BuildOptions
    code_digest: str
    base_digest: str = ""  # sha256 of a localimage base, so a changed base rebuilds

    @property
    def ref(self) -> str:
        return f"{self.servable}@{self.version}"

    @property
    def digest(self) -> str:
        # The version is not part of it: the same bundle published again builds nothing new.
        data = {
            "bundle": self.bundle_digest,
            "options": self.options.model_dump(mode="json"),
            "packages": self.options.packages(self.spec),
            "code": self.code_digest,
            "base": self.base_digest,
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def labels(self) -> dict[str, str]:
        return {
            "org.dlhub.servable": self.ref,
            "org.dlhub.bundle-digest": f"sha256:{self.bundle_digest}",
            "org.dlhub.recipe-digest": f"sha256:{self.digest}",
            "org.dlhub.dlhub-hpc-version": __version__,
            # One label per line in a definition file: no line breaks in values.
            "org.opencontainers.image.title": " ".join(self.spec.datacite.title.split()),
        }

    def environment(self) -> dict[str, str]:
        return {
            "DLHUB_HPC_SERVABLE": self.ref,
            "DLHUB_HPC_BUNDLE": f"{BUNDLES_DIR}/{self.bundle_digest}",
            "PYTHONNOUSERSITE": "1",
        }

    def runscript(self) -> str:
        return (
            f"exec python3 -m dlhub_hpc.worker --servable \"$DLHUB_HPC_SERVABLE\" "
            f"--cache-dir {BUNDLES_DIR} \"$@\""
        )

    def test_command(self) -> str:
        return "python3 -m dlhub_hpc.container.selftest"


def render_definition(recipe: Recipe, bundle_tar: Path, source_dir: Path) -> str:
    """The Apptainer definition file; ``bundle_tar`` and ``source_dir`` are host paths."""
    agent, ref = recipe.options.bootstrap()
    # Debian's python3-sklearn etc. are in `packages`; pip installs only what Debian lacks.
    apt_line = " ".join(("python3-pip", *recipe.options.packages(recipe.spec)))
    pip_line = " ".join(shlex.quote(r) for r in (*WORKER_PYTHON_DEPS, *recipe.options.pip))
    bundle = f"{BUNDLES_DIR}/{recipe.bundle_digest}"
    sections: list[tuple[str, list[str]]] = [
        ("labels", [f"{k} {v}" for k, v in recipe.labels().items()]),
        ("files", [f"{bundle_tar} {PREFIX}/bundle.tar", f"{source_dir} {PREFIX}/src/dlhub_hpc"]),
        ("post", [
            "set -e",
            "export DEBIAN_FRONTEND=noninteractive",
            f"apt-get update && apt-get install -y --no-install-recommends {apt_line}",
            f"python3 -m pip install --no-cache-dir --break-system-packages --target {LIB_DIR} "
            f"{pip_line}",
            f"mv {PREFIX}/src/dlhub_hpc {LIB_DIR}/dlhub_hpc && rm -rf {PREFIX}/src",
            f"echo {LIB_DIR} > \"$(python3 -c 'import sysconfig; "
            "print(sysconfig.get_path(\"purelib\"))')/dlhub-hpc.pth\"",
            f"mkdir -p {bundle} && tar -xf {PREFIX}/bundle.tar -C {bundle}",
            f"rm {PREFIX}/bundle.tar && rm -rf /var/lib/apt/lists/*",
        ]),
        ("environment", [f"export {k}={shlex.quote(v)}" for k, v in recipe.environment().items()]),
        ("runscript", [recipe.runscript()]),
        ("test", [recipe.test_command()]),
    ]
    lines = [f"Bootstrap: {agent}", f"From: {ref}", ""]
    for name, body in sections:
        lines.append(f"%{name}")
        lines += [f"    {line}" for line in body]
        lines.append("")
    return "\n".join(lines)


def labels_json(recipe: Recipe) -> bytes:
    """Labels as Apptainer stores them in a SIF (data object type 3, JSON)."""
    return json.dumps(recipe.labels(), indent=2, sort_keys=True).encode()


__all__ = [
    "BUNDLES_DIR",
    "LIB_DIR",
    "PREFIX",
    "BuildOptions",
    "Recipe",
    "build_options",
    "code_digest",
    "labels_json",
    "render_definition",
]
