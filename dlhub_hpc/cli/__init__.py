"""The ``dlhub-hpc`` command: one module per command group."""

from __future__ import annotations

import logging
import sys

import click

from dlhub_hpc.cli.build import build
from dlhub_hpc.cli.common import console, fail
from dlhub_hpc.cli.endpoint import endpoint
from dlhub_hpc.cli.hub import hub
from dlhub_hpc.cli.keys import keys
from dlhub_hpc.cli.pilot import pilot
from dlhub_hpc.cli.profiles import profiles
from dlhub_hpc.cli.publication import (
    deprecate,
    describe,
    export,
    groups,
    import_dlhub,
    init,
    search,
    visibility,
    withdraw,
)
from dlhub_hpc.cli.serving import publish, run, status
from dlhub_hpc.cli.workers import workers
from dlhub_hpc.errors import DlhubHpcError

logger = logging.getLogger(__name__)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--hub", "hub_address", envvar="DLHUB_HPC_HUB", default=None, metavar="ADDRESS",
              help="The hub's client address (default: the running hub's, from its home).")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def cli(ctx: click.Context, hub_address: str | None, verbose: int) -> None:
    """Publish scientific ML models and serve them warm on supercomputers."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    ctx.obj = {"hub": hub_address}


cli.add_command(build)
cli.add_command(endpoint)
cli.add_command(hub)
cli.add_command(pilot)
cli.add_command(profiles)
cli.add_command(publish)
cli.add_command(run)
cli.add_command(status)
cli.add_command(workers)
for _command in (keys, init, search, describe, deprecate, withdraw, visibility, groups, export,
                 import_dlhub):
    cli.add_command(_command)


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except DlhubHpcError as exc:
        fail(exc)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


__all__ = ["cli", "main"]
