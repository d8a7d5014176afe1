"""``dlhub-hpc profiles list|show|check|render``: the site profiles pilots start from."""

from __future__ import annotations

import logging
import sys

import click
import yaml
from rich.table import Table

from dlhub_hpc.cli.common import console
from dlhub_hpc.errors import ProfileError
from dlhub_hpc.pilot.profiles import (
    PROFILE_DIR_ENV,
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
    if not profile_paths():
        console.print(_how_to_add())


def _how_to_add() -> str:
    return (f"add one: write NAME.yaml (start from 'dlhub-hpc profiles show local') into a "
            f"folder and list that folder in ${PROFILE_DIR_ENV} (colon-separated)")


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
    names = names or tuple(sorted(profile_paths()))
    if not names:
        raise ProfileError(f"no site profiles to check: none in "
                           f"{', '.join(str(d) for d in profile_dirs())}; {_how_to_add()}")
    for name in names:
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


@profiles.command("render")
@click.argument("profile")
@click.option("-s", "--servable", default="owner/servable@1", show_default=True,
              help="owner/name@version the block would serve (picks its image).")
@click.option("-n", "--nodes", type=click.IntRange(min=1), default=None,
              help="Nodes per block (default: the profile's).")
@click.option("--ranks", type=click.IntRange(min=1), default=1, show_default=True,
              help="MPI ranks of the servable (> 1 uses the profile's mpi_launcher).")
@click.option("--worker-address", default=None, metavar="tcp://HOST:PORT",
              help="The hub's worker address (default: the running hub's, else the "
                   "default port); the profile's hub settings pick the host workers dial.")
def render(profile: str, servable: str, nodes: int | None, ranks: int,
           worker_address: str | None) -> None:
    """Print the job script and submit command one block of PROFILE would use.

    Parsl's own provider and launcher write them; nothing is submitted. Review them before
    the first 'dlhub-hpc pilot start --profile PROFILE'.
    """
    from dlhub_hpc.broker.config import HubConfig, default_home, read_hub_file
    from dlhub_hpc.pilot.render import render_block

    home = default_home()
    address = worker_address or str((read_hub_file(home) or {}).get("worker_address") or
                                    HubConfig.model_fields["worker_address"].default)
    block = render_block(load_profile(profile), servable, address, ranks=ranks, nodes=nodes,
                         pilots_dir=home / "pilots")
    click.echo(f"# profile {block.profile}: {block.provider}; workers dial {block.hub_address}")
    for note in block.notes:
        click.echo(f"# note: {note}")
    click.echo(f"# submit command (run by the hub; nothing was submitted):\n"
               f"{block.submit_command}")
    click.echo(f"# job script {block.script_name}:")
    click.echo(block.script.rstrip("\n"))
