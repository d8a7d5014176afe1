"""Container runtimes as small command builders behind one interface.

A runtime turns (image, argv, env, binds, gpu) into the command line that runs argv inside
the image. It never starts anything itself: pilots and tests run the command. Inside every
image this project builds, ``python3 -m dlhub_hpc.worker --hub ADDR --servable REF`` starts a
worker that reaches the hub over TCP on the host network, so every runtime here keeps the
host's network.

Runtimes: ``apptainer``, ``singularity``, ``charliecloud`` (``ch-run``), ``podman-hpc``,
``bubblewrap`` (``bwrap``) and ``none`` (the bare process on the host).
"""

from __future__ import annotations

import logging
import shutil
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar

from dlhub_hpc.errors import ConfigError, RuntimeNotFound

logger = logging.getLogger(__name__)

GPU_KINDS = (None, "nvidia", "amd", "intel")

# PATH inside the images we build; runtimes that start from an empty environment set it.
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _check_gpu(runtime: str, gpu: str | None) -> None:
    if gpu not in GPU_KINDS:
        raise ConfigError(
            f"gpu={gpu!r} is not known to the {runtime} runtime; use one of {list(GPU_KINDS)}",
            gpu=gpu,
        )


def split_bind(bind: str) -> tuple[str, str, str]:
    """``SRC[:DST[:ro|rw]]`` -> (src, dst, mode); dst defaults to src, mode to rw."""
    parts = bind.split(":")
    if not parts[0] or len(parts) > 3 or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise ConfigError(
            f"bind {bind!r} is not SRC[:DST[:ro|rw]] (e.g. '/scratch/data:/data:ro')", bind=bind
        )
    src = parts[0]
    dst = parts[1] if len(parts) > 1 and parts[1] else src
    mode = parts[2] if len(parts) == 3 else "rw"
    return src, dst, mode


class ContainerRuntime(ABC):
    """Builds the command that runs ``argv`` inside ``image``.

    ``gpu`` is None, ``"nvidia"``, ``"amd"`` or ``"intel"`` (``/dev/dri``).
    ``binds`` are ``SRC[:DST[:ro|rw]]``.
    ``env`` is passed into the container; the host environment is not (a host venv's
    PYTHONPATH or PATH would break the image's Python).
    """

    name: ClassVar[str]
    executable: str
    #: image kinds this runtime runs: "sif", "sqfs", "dir" (a root filesystem) or "ref"
    formats: ClassVar[tuple[str, ...]]
    #: how to get the executable, shown when it is missing
    install_hint: ClassVar[str]

    def __init__(self, executable: str | None = None) -> None:
        self.executable = executable or self.default_executable()

    @classmethod
    def default_executable(cls) -> str:
        return cls.name

    def __repr__(self) -> str:
        if self.executable == self.default_executable():
            return f"{type(self).__name__}()"
        return f"{type(self).__name__}(executable={self.executable!r})"

    def available(self) -> bool:
        return shutil.which(self.executable) is not None

    def require(self) -> None:
        """Raise :class:`RuntimeNotFound` naming what to install if the executable is absent."""
        if not self.available():
            raise RuntimeNotFound(
                f"the {self.name} container runtime needs {self.executable!r} on PATH, and it "
                f"is not there. Install it: {self.install_hint}",
                runtime=self.name, executable=self.executable,
            )

    @abstractmethod
    def command(
        self,
        image: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] = {},
        binds: Sequence[str] = (),
        gpu: str | None = None,
    ) -> list[str]:
        """The full command line that runs ``argv`` in ``image``."""

    def setup_commands(self, image: str, gpu: str | None = None) -> list[list[str]]:
        """Commands to run once per image before :meth:`command` (most runtimes need none)."""
        _check_gpu(self.name, gpu)
        return []


class ApptainerRuntime(ContainerRuntime):
    """``apptainer exec``: host network by default, ``--cleanenv`` plus ``--env`` per variable."""

    name = "apptainer"
    formats = ("sif", "dir")
    install_hint = (
        "on an HPC system 'module load apptainer'; with Spack 'spack install apptainer'; "
        "or a release package from https://github.com/apptainer/apptainer/releases "
        "(it is not in Debian 12 nor on PyPI)"
    )

    def command(
        self,
        image: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] = {},
        binds: Sequence[str] = (),
        gpu: str | None = None,
    ) -> list[str]:
        _check_gpu(self.name, gpu)
        # --contain --no-home: the servable's code must not read the pilot user's home (its
        # keys), nor the host's /tmp or the job's folder (the hub's home): only its binds.
        cmd = [self.executable, "exec", "--cleanenv", "--contain", "--no-home"]
        if gpu == "nvidia":
            cmd.append("--nv")
        elif gpu == "amd":
            cmd.append("--rocm")
        elif gpu == "intel":
            # --contain gives a minimal /dev; Intel GPUs (Aurora) are the host's /dev/dri.
            cmd += ["--bind", "/dev/dri"]
        for bind in binds:
            src, dst, mode = split_bind(bind)
            cmd += ["--bind", f"{src}:{dst}:{mode}" if mode == "ro" else f"{src}:{dst}"]
        for key, value in env.items():
            if "," in value:
                # --env splits its argument on commas, which would cut the value apart.
                raise ConfigError(
                    f"environment value of {key} contains a comma, which {self.name} --env "
                    "cannot pass; put it in a file and bind it, or drop the comma",
                    variable=key,
                )
            cmd += ["--env", f"{key}={value}"]
        return [*cmd, image, *argv]


class SingularityRuntime(ApptainerRuntime):
    """SingularityCE / legacy Singularity: the same flags as Apptainer."""

    name = "singularity"
    install_hint = (
        "on an HPC system 'module load singularity'; with Spack 'spack install singularityce'; "
        "or a package from https://github.com/sylabs/singularity/releases "
        "(it is not in Debian 12 nor on PyPI)"
    )


class CharliecloudRuntime(ContainerRuntime):
    """``ch-run``: unprivileged, host network, host ``/dev`` (GPUs need their user libraries
    injected into the image once, with ``ch-fromhost --nvidia``)."""

    name = "charliecloud"
    # A directory first: ch-run execs the command in place. With a .sqfs, ch-run stays as
    # the FUSE server and the command runs as its child, which SIGTERM to ch-run does not
    # reach: stop such a worker by its process group.
    formats = ("dir", "sqfs")
    install_hint = (
        "Debian/Ubuntu 'apt-get install --no-install-recommends charliecloud-runtime' "
        "(the 'charliecloud' meta-package pulls in docker); Spack 'spack install charliecloud'; "
        "or 'module load charliecloud'"
    )

    @classmethod
    def default_executable(cls) -> str:
        return "ch-run"

    def command(
        self,
        image: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] = {},
        binds: Sequence[str] = (),
        gpu: str | None = None,
    ) -> list[str]:
        _check_gpu(self.name, gpu)
        # ch-run passes the host environment through; drop it, then set the image's PATH.
        # --env-no-expand: values are literal ('$' would be expanded, after the unset: empty).
        # --private-tmp: ch-run shares the host's /tmp otherwise (other users' files).
        cmd = [self.executable, "--private-tmp", "--unset-env=*", "--env-no-expand",
               f"--set-env=PATH={IMAGE_PATH}"]
        for bind in binds:
            src, dst, mode = split_bind(bind)
            if mode == "ro":
                raise ConfigError(
                    f"bind {bind!r}: ch-run binds are read-write only; drop ':ro'", bind=bind
                )
            cmd.append(f"--bind={src}:{dst}")
        cmd += [f"--set-env={key}={value}" for key, value in env.items()]
        return [*cmd, image, "--", *argv]

    def setup_commands(self, image: str, gpu: str | None = None) -> list[list[str]]:
        _check_gpu(self.name, gpu)
        if gpu == "nvidia":
            return [["ch-fromhost", "--nvidia", image]]
        # ROCm's and Level Zero's user libraries must be in the image itself; ch-run shares
        # the host's /dev, so /dev/kfd and /dev/dri are visible.
        return []


class PodmanHpcRuntime(ContainerRuntime):
    """NERSC's ``podman-hpc run``: ``--gpu`` for NVIDIA, device passthrough for AMD and Intel."""

    name = "podman-hpc"
    formats = ("ref",)
    install_hint = (
        "on Perlmutter it is on PATH already; elsewhere install podman ('apt-get install "
        "podman') and podman-hpc from https://github.com/NERSC/podman-hpc"
    )

    def command(
        self,
        image: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] = {},
        binds: Sequence[str] = (),
        gpu: str | None = None,
    ) -> list[str]:
        _check_gpu(self.name, gpu)
        cmd = [self.executable, "run", "--rm", "--net", "host"]
        if gpu == "nvidia":
            cmd.append("--gpu")
        elif gpu == "amd":
            cmd += ["--device", "/dev/kfd", "--device", "/dev/dri"]
        elif gpu == "intel":
            cmd += ["--device", "/dev/dri"]
        for bind in binds:
            src, dst, mode = split_bind(bind)
            cmd += ["-v", f"{src}:{dst}:ro" if mode == "ro" else f"{src}:{dst}"]
        for key, value in env.items():
            cmd += ["-e", f"{key}={value}"]
        return [*cmd, image, *argv]


class BubblewrapRuntime(ContainerRuntime):
    """``bwrap`` over a root filesystem directory, read-only, with a private /tmp.

    Bind destinations must exist in the image or lie under /tmp (the root is read-only).
    """

    name = "bubblewrap"
    formats = ("dir",)
    install_hint = "Debian/Ubuntu 'apt-get install bubblewrap'; Spack 'spack install bubblewrap'"

    @classmethod
    def default_executable(cls) -> str:
        return "bwrap"

    def command(
        self,
        image: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] = {},
        binds: Sequence[str] = (),
        gpu: str | None = None,
    ) -> list[str]:
        _check_gpu(self.name, gpu)
        cmd = [self.executable, "--ro-bind", image, "/", "--proc", "/proc"]
        # A GPU needs the host's device nodes (/dev/nvidia*, /dev/kfd, /dev/dri).
        cmd += ["--dev-bind", "/dev", "/dev"] if gpu else ["--dev", "/dev"]
        cmd += ["--tmpfs", "/tmp", "--unshare-all", "--share-net", "--die-with-parent"]
        for bind in binds:
            src, dst, mode = split_bind(bind)
            cmd += ["--ro-bind" if mode == "ro" else "--bind", src, dst]
        cmd += ["--clearenv", "--setenv", "PATH", IMAGE_PATH, "--setenv", "HOME", "/tmp"]
        for key, value in env.items():
            cmd += ["--setenv", key, value]
        return [*cmd, "--", *argv]


class NoRuntime(ContainerRuntime):
    """No container: argv runs as is on the host (``env`` set through ``env(1)``)."""

    name = "none"
    formats = ()
    install_hint = "nothing to install"

    @classmethod
    def default_executable(cls) -> str:
        return ""

    def available(self) -> bool:
        return True

    def command(
        self,
        image: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] = {},
        binds: Sequence[str] = (),
        gpu: str | None = None,
    ) -> list[str]:
        _check_gpu(self.name, gpu)
        if env:
            return ["env", *(f"{k}={v}" for k, v in env.items()), *argv]
        return list(argv)


RUNTIMES: dict[str, type[ContainerRuntime]] = {
    cls.name: cls
    for cls in (
        ApptainerRuntime, SingularityRuntime, CharliecloudRuntime, PodmanHpcRuntime,
        BubblewrapRuntime, NoRuntime,
    )
}
# Names people also write, as site profiles and command lines use them.
ALIASES = {"ch-run": "charliecloud", "bwrap": "bubblewrap", "podman_hpc": "podman-hpc"}


def get_runtime(name: str, executable: str | None = None) -> ContainerRuntime:
    """The runtime called ``name``; an unknown name raises ConfigError listing the valid ones."""
    key = ALIASES.get(name, name)
    try:
        cls = RUNTIMES[key]
    except KeyError:
        raise ConfigError(
            f"unknown container runtime {name!r}; valid runtimes: {sorted(RUNTIMES)}",
            runtime=name, valid=sorted(RUNTIMES),
        ) from None
    return cls(executable)


__all__ = [
    "ALIASES",
    "RUNTIMES",
    "ApptainerRuntime",
    "BubblewrapRuntime",
    "CharliecloudRuntime",
    "ContainerRuntime",
    "NoRuntime",
    "PodmanHpcRuntime",
    "SingularityRuntime",
    "get_runtime",
    "split_bind",
]
