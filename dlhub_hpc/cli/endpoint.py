"""``dlhub-hpc endpoint configure|register|function``: the site's Globus Compute endpoint."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from dlhub_hpc.bridge.function import function_source, register_function, registration_request
from dlhub_hpc.bridge.templates import EndpointSettings, write
from dlhub_hpc.cli.common import console
from dlhub_hpc.client import find_hub_address
from dlhub_hpc.errors import ConfigError

logger = logging.getLogger(__name__)


def default_endpoint_root() -> Path:
    """Where endpoints live: ``$GLOBUS_COMPUTE_USER_DIR`` or ``~/.globus_compute``."""
    return Path(os.environ.get("GLOBUS_COMPUTE_USER_DIR") or Path.home() / ".globus_compute")


@click.group()
def endpoint() -> None:
    """Serve callers from anywhere through a Globus Compute endpoint on this site."""


@endpoint.command("configure")
@click.argument("name")
@click.option("--function-id", "function_ids", multiple=True, required=True, metavar="UUID",
              help="The registered forwarding function (from 'dlhub-hpc endpoint register'); "
                   "repeat to allow several.")
@click.option("--multi-user", is_flag=True,
              help="A root-run endpoint that maps each caller to a local user.")
@click.option("--endpoint-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Root of endpoint directories (default $GLOBUS_COMPUTE_USER_DIR or "
                   "~/.globus_compute).")
@click.option("--python-bin", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="bin/ directory with dlhub-hpc and globus-compute-endpoint (default: this "
                   "Python's).")
@click.option("--workers", type=int, default=4, show_default=True,
              help="Calls forwarded at once.")
@click.option("--display-name", default=None, help="The endpoint's name in Globus Compute.")
@click.option("--identity-domain", default="example.org", show_default=True,
              help="Multi-user: the identity domain in the example identity mapping.")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@click.option("--template-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="A copy of configs/globus_compute/ to fill in instead of "
                                 "the shipped templates.")
@click.pass_context
def configure(ctx: click.Context, name: str, function_ids: tuple[str, ...], multi_user: bool,
              endpoint_dir: Path | None, python_bin: Path | None, workers: int,
              display_name: str | None, identity_domain: str, force: bool,
              template_dir: Path | None) -> None:
    """Write the configuration of endpoint NAME, forwarding to the hub (--hub, or this
    machine's running hub)."""
    hub = (ctx.obj or {}).get("hub") or find_hub_address()
    settings = EndpointSettings.build(
        name=name, hub=hub, function_ids=list(function_ids), multi_user=multi_user,
        python_bin=python_bin or Path(sys.executable).parent, workers=workers,
        display_name=display_name, identity_domain=identity_domain,
    )
    written = write(settings, endpoint_dir or default_endpoint_root(), force=force,
                    templates=template_dir)
    for path in written:
        console.print(f"wrote {path}")
    console.print(f"forwards to the hub at {hub}")
    if multi_user:
        console.print(f"edit {written[0].parent / 'identity_mapping.json'}, then as root: "
                      f"globus-compute-endpoint start {name}")
    else:
        console.print(f"start it with: globus-compute-endpoint start {name}")


@endpoint.command("register")
@click.option("--dry-run", is_flag=True, help="Print the registration request; send nothing.")
@click.option("--public", is_flag=True, help="Let any Globus user submit to the function.")
@click.option("--group", default=None, metavar="UUID",
              help="Share the function with a Globus group.")
def register(dry_run: bool, public: bool, group: str | None) -> None:
    """Register the forwarding function with Globus Compute and print its id."""
    try:
        if dry_run:
            click.echo(json.dumps(registration_request(public=public, group=group), indent=2))
            return
        function_id = register_function(public=public, group=group)
    except ImportError:
        raise ConfigError(
            "registering needs the Globus Compute SDK: pip install 'dlhub-hpc[globus]'"
        ) from None
    click.echo(function_id)
    console.print(f"next: dlhub-hpc endpoint configure NAME --function-id {function_id}",
                  highlight=False)


@endpoint.command("function")
def function() -> None:
    """Print the source of the forwarding function (what is registered and run)."""
    click.echo(function_source(), nl=False)
