"""``dlhub-hpc publish``, ``run`` and ``status``."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from dlhub_hpc.cli.common import client_from, console, err_console, input_error, to_json
from dlhub_hpc.errors import ReferenceFormatError
from dlhub_hpc.references import FileRef, URLRef, parse_cli

logger = logging.getLogger(__name__)


@click.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.pass_context
def publish(ctx: click.Context, directory: Path) -> None:
    """Publish the servable in DIRECTORY (its servable.yaml and files) to the hub."""
    with client_from(ctx) as client:
        record = client.publish(directory)
    console.print(f"published [bold]{record['name']}@{record['version']}[/] "
                  f"(sha256 {record['digest'][:12]})")
    if record.get("pid"):
        console.print(f"identifier: {record['pid']}", soft_wrap=True)


def _read_input(text: str) -> Any:
    """INPUT as JSON: given inline, from @FILE, or from stdin (-); a bad one is a usage error."""
    where = ""
    try:
        if (ref := parse_cli(text)) is not None:  # @ref:PATH or @ref:https://...
            return ref
        if text == "-":
            where = " on stdin"
            if sys.stdin is None:
                raise OSError("stdin is closed")
            text = sys.stdin.read()
        elif text.startswith("@"):
            where = f" in {text[1:] or 'the file named after @ (none)'}"
            text = Path(text[1:]).read_text(encoding="utf-8")
    except ReferenceFormatError as exc:
        raise input_error(f"INPUT {text!r}: {exc.message}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        source = where.removeprefix(" in ").removeprefix(" on ") or "INPUT"
        raise input_error(f"cannot read {source}: {reason}; pass JSON, @file.json or -"
                          ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise input_error(
            f"INPUT is not JSON{where} ({exc}); quote it, e.g. '[1, 2, 3]', or pass "
            "@file.json or -"
        ) from None


def _with_token(inputs: Any, variable: str) -> URLRef:
    """The @ref:https:// INPUT with the token held in ``variable``."""
    if not isinstance(inputs, URLRef):
        raise input_error("--token-env goes with an INPUT of @ref:https://URL")
    token = os.environ.get(variable)
    if not token:
        raise input_error(f"environment variable {variable} is not set", "--token-env")
    try:
        return URLRef(inputs.url, token.strip())
    except ReferenceFormatError as exc:
        raise input_error(f"{variable}: {exc.message}", "--token-env") from None


@click.command()
@click.argument("servable")
@click.argument("input_text", metavar="INPUT")
@click.option("-m", "--method", default="", help="Method to call (default: run, or the first).")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait.")
@click.option("--result-to", type=click.Path(dir_okay=False), default=None,
              help="Have the hub write the output to this file (.npy, or bytes) for you.")
@click.option("--token-env", metavar="VAR", default=None,
              help="Fetch @ref:https://URL with the bearer token in environment variable "
                   "VAR (a token never goes on a command line, where others see it).")
@click.pass_context
def run(ctx: click.Context, servable: str, input_text: str, method: str, timeout: float,
        result_to: str | None, token_env: str | None) -> None:
    """Run SERVABLE (owner/name[@version]) on INPUT (JSON, @file.json, or - for stdin).

    INPUT may also be @ref:PATH or @ref:https://URL: a file or URL the hub reads for you.
    """
    inputs = _read_input(input_text)
    if token_env is not None:
        inputs = _with_token(inputs, token_env)
    from dlhub_hpc.cli.starting import wait_showing_stage

    with client_from(ctx, timeout=timeout) as client:
        future = client.submit(servable, inputs, method=method, result_to=result_to)
        result = wait_showing_stage(client, servable, future, getattr(future, "request_id", ""),
                                    err_console)
    click.echo(to_json(result.path if isinstance(result, FileRef) else result))


def _published_table(status: dict[str, Any]) -> Table:
    table = Table(title="Servables")
    numeric = ("queued", "in flight", "workers")
    for col in ("servable", "type", "methods", *numeric, "title"):
        table.add_column(col, justify="right" if col in numeric else "left")
    live = status["servables"]
    for rec in status["published"]:
        ref = f"{rec['name']}@{rec['version']}"
        q = live.get(ref, {"queued": 0, "in_flight": 0})
        n = sum(1 for w in status["workers"] if w["servable"] == ref)
        table.add_row(ref, rec["type"], ", ".join(rec["methods"]), str(q["queued"]),
                      str(q["in_flight"]), str(n), rec["title"])
    return table


def _workers_table(status: dict[str, Any]) -> Table:
    table = Table(title="Workers")
    for col in ("worker", "servable", "state", "host", "pid", "block", "ranks", "gpus",
                "batches", "items"):
        table.add_column(col)
    for w in status["workers"]:
        table.add_row(w["worker_id"], w["servable"], w["state"], w["host"], str(w["pid"]),
                      w["block"] or "-", str(w.get("ranks", 1)), w.get("gpus") or "-",
                      str(w["batches"]), str(w["items"]))
    return table


def _blocks_table(status: dict[str, Any]) -> Table:
    table = Table(title="Pilot blocks")
    for col in ("block", "job", "servable", "workers", "state"):
        table.add_column(col)
    for b in status["blocks"]:
        table.add_row(b["block_id"], b["job_id"], b["servable"], str(b["workers"]), b["state"])
    return table


def starting_table(status: dict[str, Any]) -> Table | None:
    """The servables being started on demand: the stage each reached, and since when;
    None when none is."""
    starts = status.get("starting") or {}
    if not starts:
        return None
    table = Table(title="Starting on demand")
    why = any(s.get("reason") for s in starts.values())  # a servable's own profile refused
    for col in ("servable", "stage", "profile", "since", *(["reason"] if why else [])):
        table.add_column(col)
    for ref, s in sorted(starts.items()):
        waited = s.get("in_stage_s")
        row = [ref, str(s.get("stage", "-")), str(s.get("profile") or "-"),
               "-" if waited is None else f"{float(waited):.0f}s ago"]
        table.add_row(*row, *([escape(str(s.get("reason") or "-"))] if why else []))
    return table


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="Seconds to wait for the hub.")
@click.pass_context
def status(ctx: click.Context, as_json: bool, timeout: float) -> None:
    """Show the hub: servables, queues, workers, pilot blocks and counters."""
    with client_from(ctx) as client:
        data = client.status(timeout=timeout)
    if as_json:
        click.echo(to_json(data))
        return
    hub = data["hub"]
    console.print(f"hub pid {hub['pid']} up {hub['uptime']:.0f}s; clients "
                  f"{hub['client_address']}, workers {hub['worker_address']}")
    console.print(_published_table(data))
    console.print(_workers_table(data))
    console.print(_blocks_table(data))
    if (starts := starting_table(data)) is not None:
        console.print(starts)
    from dlhub_hpc.cli.pools import pools_tables

    for table in pools_tables(data):  # pooled workers, what they hold, their counters
        console.print(table)
    stats = ", ".join(f"{k} {v}" for k, v in sorted(data["stats"].items()))
    console.print(f"counters: {stats or 'none yet'}")
