"""What one pilot block would submit, for an admin to review before the first ``pilot start``.

:func:`render_block` builds the profile's real Parsl provider and launcher and makes a
:class:`~dlhub_hpc.pilot.pilots.Pilot` submit one block through them, exactly as the hub
does, but the provider's command runner is replaced by one that records the submit command
(``sbatch ...``, ``qsub ...``) and stops there: the job script Parsl wrote is read back and
nothing reaches the scheduler.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parsl.providers.base import ExecutionProvider

from dlhub_hpc.errors import PilotError, ProfileError
from dlhub_hpc.pilot.pilots import Pilot, hub_address_for_workers
from dlhub_hpc.pilot.profiles import SiteProfile, build_provider, unset_variables

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderedBlock:
    """One block as the hub would submit it."""

    profile: str
    provider: str
    hub_address: str  # as the workers would dial it
    submit_command: str
    script_name: str
    script: str
    notes: tuple[str, ...] = ()


class _Captured(Exception):
    """Raised by the stand-in command runner once the submit command is recorded."""


@contextmanager
def _capturing(provider: ExecutionProvider, calls: list[str]) -> Iterator[None]:
    def capture(cmd: str, *args: Any, **kwargs: Any) -> tuple[int, str, str]:
        calls.append(cmd)
        raise _Captured(cmd)

    if hasattr(provider, "execute_wait"):  # cluster providers run commands through a method
        provider.execute_wait = capture
        yield
        return
    # LocalProvider calls its module's execute_wait: replace it for this call only (the
    # CLI process that renders runs no other provider).
    module = sys.modules[type(provider).__module__]
    if not hasattr(module, "execute_wait"):
        raise PilotError(f"cannot capture what {type(provider).__name__} would run: it has "
                         "no execute_wait to stand in for")
    original: Callable[..., Any] = getattr(module, "execute_wait")  # noqa: B009
    setattr(module, "execute_wait", capture)  # noqa: B010
    try:
        yield
    finally:
        setattr(module, "execute_wait", original)  # noqa: B010


def _workers_address(hub_worker_address: str, profile: SiteProfile) -> tuple[str, list[str]]:
    try:
        return hub_address_for_workers(hub_worker_address, profile), []
    except ProfileError:  # rendered away from the site: its interface is not on this host
        port = hub_worker_address.rsplit(":", 1)[-1]
        return (f"tcp://<address of {profile.hub.interface}>:{port}",
                [f"the hub's address is {profile.hub.interface}'s on the hub's host; "
                 "this host has no such interface"])


def render_block(profile: SiteProfile, servable: str, hub_worker_address: str, *,
                 ranks: int = 1, nodes: int | None = None,
                 pilots_dir: Path | None = None) -> RenderedBlock:
    """The job script and submit command of one block of ``servable`` on ``profile``.

    Written in a temporary folder; paths in them are shown under ``pilots_dir``, where the
    hub writes its pilots' scripts (``HOME/pilots``).
    """
    hub, notes = _workers_address(hub_worker_address, profile)
    unset = unset_variables(profile)
    if unset:
        notes.append(f"set before starting the hub: {', '.join(unset)} (left as ${{NAME}} here)")
    if profile.container.runtime != "none" and not profile.container.image:
        notes.append("the image is the one 'dlhub-hpc build' records for the servable")
    provider = build_provider(profile, mpi=ranks > 1)
    calls: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dlhub-render-") as tmp:
        pilot = Pilot(profile, servable, hub, Path(tmp), ranks=ranks, nodes=nodes,
                      provider=provider, image=None if profile.container.image else
                      f"<image of {servable}>")
        with _capturing(provider, calls):
            try:
                pilot.submit_block("render")
            except PilotError as exc:
                if not isinstance(exc.__cause__, _Captured):
                    raise
        if not calls:
            raise PilotError(f"{type(provider).__name__} submitted nothing to capture")
        scripts = sorted(p for p in pilot.run_dir.rglob("*") if p.is_file()
                         and str(p) in calls[-1])
        if not scripts:
            raise PilotError(f"no job script named in the submit command {calls[-1]!r}")
        shown = str(pilots_dir) if pilots_dir is not None else "<hub home>/pilots"
        script = scripts[-1].read_text().replace(tmp, shown)
        command = calls[-1].replace(tmp, shown)
    return RenderedBlock(profile.name, type(provider).__name__, hub, command,
                         scripts[-1].name, script, tuple(notes))
