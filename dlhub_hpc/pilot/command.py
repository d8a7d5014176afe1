"""The worker's command line: one builder for every way a worker starts.

:func:`worker_command` composes ``python -m dlhub_hpc.worker`` with its flags, then wraps
it as the worker runs: bare on the host; confined as its owner (user switch or sandbox,
:class:`~dlhub_hpc.security.isolation.WorkerLaunch`) with its credential on descriptor 3;
or inside a container runtime with the credential folder bound. Under an MPI launcher the
worker takes ``--mpi``. :meth:`WorkerCommand.shell` renders it for a Parsl launcher, which
runs it ``tasks_per_node`` times per node; ``argv`` runs it directly (tests, by hand).
"""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dlhub_hpc.container.definition import BUNDLES_DIR
from dlhub_hpc.container.runtimes import ContainerRuntime, get_runtime
from dlhub_hpc.errors import AuthenticationError
from dlhub_hpc.logging_setup import worker_log_flags
from dlhub_hpc.security.isolation import WorkerLaunch, credential_flags, credential_redirect
from dlhub_hpc.servable.pools import POOL_PREFIX

logger = logging.getLogger(__name__)

# Where launchers put a task's rank on its node (the worker reads these: worker/gpu.py).
LOCAL_RANK_ENVS = ("SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_LOCAL_RANK",
                   "PALS_LOCAL_RANKID", "MPI_LOCALRANKID")
# Launchers that write the command through an unquoted heredoc.
HEREDOC_LAUNCHERS = frozenset({"GnuParallelLauncher", "MpiExecLauncher", "MpiRunLauncher",
                               "SrunLauncher", "SrunMPILauncher", "AprunLauncher",
                               "JsrunLauncher"})


@dataclass(frozen=True)
class Container:
    """Run the worker in ``image`` (a path already verified, or a site's image name)."""

    runtime: ContainerRuntime | str
    image: str
    binds: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    gpu: str | None = None  # "nvidia" / "amd" / "intel": the runtime exposes the devices
    # Runtimes start from a clean environment: pass the launcher's local rank in (the worker
    # picks its GPU from it), expanded by the task's shell (only in :meth:`WorkerCommand.shell`).
    local_rank: bool = False

    def get_runtime(self) -> ContainerRuntime:
        return get_runtime(self.runtime) if isinstance(self.runtime, str) else self.runtime


@dataclass(frozen=True)
class WorkerCommand:
    """A worker's argv, and the shell text after it (the credential opened on fd 3)."""

    argv: list[str]
    redirect: str = ""

    def shell(self, launcher: object | None = None) -> str:
        """The command as ``launcher`` (a Parsl launcher, or None) runs it through a shell."""
        text = shlex.join(self.argv) + self.redirect
        # These launchers write the command through an unquoted heredoc: escape the "$" so
        # each task's own shell expands it, not the batch script.
        heredoc = type(launcher).__name__ in HEREDOC_LAUNCHERS
        dollar = "\\$" if heredoc else "$"
        if heredoc:  # single quotes do not protect a heredoc: escape \, ` and $ themselves
            text = text.replace("\\", "\\\\").replace("`", "\\`").replace("$", "\\$")
        for var in LOCAL_RANK_ENVS:  # quoted: an unset one must stay one (empty) argument
            text = text.replace(f"@@{var}@@", f'"{dollar}{{{var}:-}}"')
        return text


def worker_command(
    hub: str,
    servable: str,
    *,
    python: str | None = None,
    block: str | None = None,
    heartbeat_interval: float | None = None,
    hub_timeout: float | None = None,
    drain_after: float | None = None,
    mpi: bool = False,
    extra: Sequence[str] = (),
    container: Container | None = None,
    launch: WorkerLaunch | None = None,
    hub_credential: bool = True,
) -> WorkerCommand:
    """The command that starts one worker of ``servable`` for the hub at ``hub``.

    ``python``: the worker's interpreter (default ``python3`` in an image, else this one).
    ``launch``: its owner's confinement and credential; without one, a containerised worker
    gets the hub's worker credential of this user when one is recorded (``hub_credential``).
    ``extra``: more worker flags (``--gpus ...``, ``--log-level``).
    """
    python = python or ("python3" if container is not None else sys.executable)
    argv = [python, "-m", "dlhub_hpc.worker", "--hub", hub, "--servable", servable]
    if container is not None:  # the bundle is baked into the image, where the cache looks first
        argv += ["--cache-dir", BUNDLES_DIR]
    if container is not None and servable.startswith(POOL_PREFIX):
        argv += ["--image", container.image]  # the hub pools a servable's own image only there
    if block is not None:
        argv += ["--block", block]
    if heartbeat_interval is not None:
        argv += ["--heartbeat-interval", str(heartbeat_interval)]
    if hub_timeout is not None:
        argv += ["--hub-timeout", str(hub_timeout)]
    if drain_after is not None:  # finish what it holds and leave before the scheduler kills it
        argv += ["--drain-after", f"{drain_after:g}"]
    argv += worker_log_flags()  # log as the hub does (JSON, debug); extra may override
    argv += extra
    if mpi:
        argv.append("--mpi")
    if container is not None:
        return _in_container(argv, hub, container, launch, hub_credential)
    if launch is None:
        return WorkerCommand(argv)
    argv = launch.confinement.wrap([*argv, *launch.flags()], python)
    redirect = "" if launch.credential is None else credential_redirect(launch.credential)
    return WorkerCommand(argv, redirect)


def _in_container(argv: list[str], hub: str, container: Container,
                  launch: WorkerLaunch | None, hub_credential: bool) -> WorkerCommand:
    """``argv`` inside ``container``, with the credential folder bound on /mnt."""
    runtime = container.get_runtime()
    if launch is not None:
        if launch.credential is not None:
            # In an image the credential is on /mnt whoever owns it (there is no fd 3).
            argv = [*argv, *credential_flags("container")]
        binds, env = launch.container_binds(runtime.name), dict[str, str]()
    else:
        binds, env = _hub_credential(hub, runtime.name) if hub_credential else ([], {})
    env = {**container.env, **env}
    if container.local_rank:
        env.update({v: f"@@{v}@@" for v in LOCAL_RANK_ENVS})
    return WorkerCommand(runtime.command(container.image, argv, env=env,
                                         binds=[*container.binds, *binds], gpu=container.gpu))


def _hub_credential(hub: str, runtime: str) -> tuple[list[str], dict[str, str]]:
    """The bind and variable that give a containerised worker this user's worker key."""
    from dlhub_hpc.security.keys import container_worker_access

    try:  # ch-run binds are read-write only; the others get the key read-only
        return container_worker_access(hub, read_only=runtime != "charliecloud")
    except AuthenticationError:
        return [], {}  # no credential recorded: a hub without CurveZMQ


__all__ = ["HEREDOC_LAUNCHERS", "LOCAL_RANK_ENVS", "Container", "WorkerCommand",
           "worker_command"]
