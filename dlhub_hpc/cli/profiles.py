"""``dlhub-hpc profiles list|show|check``: the site profiles pilots start from."""

from __future__ import annotations

import logging
import sys

import click
import yaml
from rich.table import Table

from dlhub_hpc.cli.common import console
from dlhub_hpc.errors import ProfileError
from dlhub_hpc.pilot.profiles import (
    SiteProfile,
    build_provider,
    load_profile,
    profile_dirs,
    profile_paths,
    unset_variables,
)

logger = logging.getLogger(__name__)


@click.group()
def profiles() -> None:
    """Site profiles: scheduler, launcher, container runtime, GPUs, scaling."""


def _summary(p: SiteProfile) -> list[str]:
    opts = p.provider.options()
    where = opts.get("partition") or opts.get("queue") or opts.get("qos") or "-"
    gpus = "-" if p.gpus is None else f"{len(p.gpus.devices)} ({p.gpus.env})"
    return [p.name, p.provider.type, p.provider.launcher.type, str(where),
            str(opts.get("walltime", "-")), str(p.workers), gpus, p.container.runtime,
            f"{p.scaling.min_blocks}-{p.scaling.max_blocks}"]


@profiles.command("list")
def list_profiles() -> None:
    """List the profiles found (in $DLHUB_HPC_PROFILES, then site_profiles/)."""
    table = Table(title="Site profiles")
    for col in ("profile", "provider", "launcher", "queue", "walltime", "workers/node",
                "gpus", "container", "blocks"):
        table.add_column(col)
    bad = []
    for name in sorted(profile_paths()):
        try:
            table.add_row(*_summary(load_profile(name)))
        except ProfileError as exc:
            bad.append(exc.message)
    console.print(table)
    for message in bad:
        console.print(f"[red]invalid[/] {message}")
    console.print(f"searched: {', '.join(str(d) for d in profile_dirs())}")


@profiles.command("show")
@click.argument("profile")
def show(profile: str) -> None:
    """Print PROFILE (a name or a .yaml path) as validated, with defaults filled in."""
    p = load_profile(profile)
    click.echo(yaml.safe_dump(p.model_dump(mode="json"), sort_keys=False).rstrip())


@profiles.command("check")
@click.argument("names", nargs=-1, metavar="[PROFILE]...")
def check(names: tuple[str, ...]) -> None:
    """Validate profiles (all by default) and build their Parsl providers (nothing submitted)."""
    table = Table(title="Profile check")
    for col in ("profile", "result", "notes"):
        table.add_column(col)
    failed = False
    for name in names or tuple(sorted(profile_paths())):
        try:
            p = load_profile(name)
            provider = build_provider(p)
            if p.mpi_launcher is not None:
                build_provider(p, mpi=True)
            unset = unset_variables(p)
            note = f"{type(provider).__name__}; workers/node {p.workers}"
            if unset:
                note += f"; set before starting: {', '.join(unset)}"
            table.add_row(name, "[green]ok[/]", note)
        except ProfileError as exc:
            failed = True
            table.add_row(name, "[red]invalid[/]", exc.message)
    console.print(table)
    if failed:
        sys.exit(1)
