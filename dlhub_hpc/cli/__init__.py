"""The ``dlhub-hpc`` command: one module per command group.

Each command's module is imported only when that command runs (click's lazy-group
pattern): ``dlhub-hpc run`` never imports Parsl or Globus Compute, and ``--help`` lists
the commands from the short help kept here, without importing any of them.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from dlhub_hpc.errors import DlhubHpcError
from dlhub_hpc.logging_setup import default_logging

logger = logging.getLogger(__name__)

# name -> (module in dlhub_hpc.cli, attribute, short help). The short help is what
# `--help` prints; tests/unit/test_cli_lazy.py checks it against each command's own.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "build": ("build", "build",
              "Build the container image of a published servable (cached by content)."),
    "deprecate": ("publication", "deprecate",
                  "Mark SERVABLE (owner/name@version) deprecated: it stays resolvable, its "
                  "record says why; it still runs."),
    "describe": ("publication", "describe",
                 "Show SERVABLE (owner/name[@version]): citation, identifier, status, methods, "
                 "versions."),
    "endpoint": ("endpoint", "endpoint",
                 "Serve callers from anywhere through a Globus Compute endpoint on this site."),
    "export": ("publication", "export", "SERVABLE's record as DLHub's dlhub.json."),
    "gateway": ("gateway", "gateway",
                "Serve models over the Open Inference Protocol (KServe v2 REST) for any "
                "language."),
    "groups": ("publication", "groups",
               "List groups, or define GROUP as exactly MEMBERS (the hub's admin only)."),
    "hub": ("hub", "hub", "Run the hub (broker + registry + pilot manager)."),
    "import-dlhub": ("publication", "import_dlhub",
                     "Write DIRECTORY/servable.yaml from a DLHub dlhub.json RECORD (add its "
                     "files, then publish)."),
    "init": ("publication", "init",
             "Scaffold a servable in DIRECTORY: servable.yaml (and model.py for a function)."),
    "keys": ("keys", "keys", "Key pairs and identities (CurveZMQ authentication)."),
    "pilot": ("pilot", "pilot",
              "Start, watch and stop pilot jobs (blocks of warm workers on a batch scheduler)."),
    "pooling": ("publication", "pooling",
                "Show, or set, which other owners' pools may serve SERVABLE (its owner only)."),
    "profiles": ("profiles", "profiles",
                 "Site profiles: scheduler, launcher, container runtime, GPUs, scaling."),
    "publish": ("serving", "publish",
                "Publish the servable in DIRECTORY (its servable.yaml and files) to the hub."),
    "run": ("serving", "run",
            "Run SERVABLE (owner/name[@version]) on INPUT (JSON, @file.json, or - for stdin)."),
    "search": ("publication", "search",
               "Find servables by free TEXT (ranked) and filters; only those you may see."),
    "status": ("serving", "status",
               "Show the hub: servables, queues, workers, pilot blocks and counters."),
    "top": ("top", "top", "A live view of servables, queues, batch sizes, latencies and workers."),
    "visibility": ("publication", "visibility",
                   "Set who may run, describe and find SERVABLE (its owner only)."),
    "withdraw": ("publication", "withdraw",
                 "Mark SERVABLE (owner/name@version) withdrawn: it stays resolvable, its record "
                 "says why; it no longer runs."),
    "workers": ("workers", "workers",
                "Start and stop warm workers (pilot blocks owned by the hub)."),
}


def load_command(name: str) -> click.Command:
    """Import the module of command ``name`` and return the command."""
    module, attribute, _ = COMMANDS[name]
    command = getattr(importlib.import_module(f"dlhub_hpc.cli.{module}"), attribute)
    if not isinstance(command, click.Command):
        raise TypeError(f"dlhub_hpc.cli.{module}.{attribute} is not a click command")
    return command


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use, and listed without importing."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        return load_command(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click's own would import every command to ask for its short help.
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name in COMMANDS:
                text = click.utils.make_default_short_help(COMMANDS[name][2], limit)
            else:
                text = self.commands[name].get_short_help_str(limit)
            rows.append((name, text))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--hub", "hub_address", envvar="DLHUB_HPC_HUB", default=None, metavar="ADDRESS",
              help="The hub's client address (default: the running hub's, from its home).")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def cli(ctx: click.Context, hub_address: str | None, verbose: int) -> None:
    """Publish scientific ML models and serve them warm on supercomputers."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    default_logging(level)
    ctx.obj = {"hub": hub_address}


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except DlhubHpcError as exc:
        from dlhub_hpc.cli.common import fail

        fail(exc)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


__all__ = ["COMMANDS", "LazyGroup", "cli", "load_command", "main"]
