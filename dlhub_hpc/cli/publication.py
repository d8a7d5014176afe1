"""``dlhub-hpc init``, ``search``, ``describe``, ``deprecate``, ``withdraw``, ``visibility``,
``pooling``, ``groups``, ``export`` and ``import-dlhub``: publishing, finding and citing
servables."""

from __future__ import annotations

import json
import logging
import textwrap
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import yaml
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from dlhub_hpc.cli.common import client_from, console, input_error, to_json
from dlhub_hpc.errors import SpecError
from dlhub_hpc.registry.dlhub_json import from_dlhub_json

logger = logging.getLogger(__name__)

_FUNCTION_TEMPLATE = '''\
"""The servable's code: the worker imports this module from the bundle."""


def run(x):
    """Replace with your model: called once per input."""
    return x
'''


def _scaffold(owner: str, name: str, kind: str, model: str | None, title: str) -> dict[str, Any]:
    method: dict[str, Any] = {"description": "What this method returns.",
                              "input": {"type": "any"}, "output": {"type": "any"}}
    servable: dict[str, Any] = {"type": kind, "methods": {}}
    if kind == "python_function":
        method["function"] = "model:run"
        servable["methods"]["run"] = method
    else:
        servable["model"] = model or "model.pkl"
        method["input"] = {"type": "ndarray", "shape": [None, None], "dtype": "float"}
        servable["methods"]["predict"] = method
    return {
        "datacite": {
            "title": title, "creators": [{"name": "Family, Given", "affiliations": [],
                                          "orcid": None}],
            "description": "", "publication_year": datetime.now(timezone.utc).year,
            "subjects": [], "related_identifiers": [],
        },
        "dlhub": {"owner": owner, "name": name, "version": "0.1.0", "domains": [],
                  "visible_to": ["public"], "dependencies": {}},
        "servable": servable,
    }


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--owner", required=True, help="Your name on the hub (lower case).")
@click.option("--name", default=None, help="The servable's name (default: the directory's).")
@click.option("--type", "kind", type=click.Choice(["python_function", "sklearn"]),
              default="python_function", show_default=True)
@click.option("--model", default=None, help="sklearn: the pickled model file's name.")
@click.option("--title", default=None, help="A citable title.")
def init(directory: Path, owner: str, name: str | None, kind: str, model: str | None,
         title: str | None) -> None:
    """Scaffold a servable in DIRECTORY: servable.yaml (and model.py for a function)."""
    spec_file = directory / "servable.yaml"
    if spec_file.exists():
        raise SpecError(f"{spec_file} exists already; edit it, or pick another directory")
    name = name or directory.name.lower()
    data = _scaffold(owner, name, kind, model, title or name)
    directory.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(yaml.safe_dump(data, sort_keys=False))
    if kind == "python_function" and not (directory / "model.py").exists():
        (directory / "model.py").write_text(_FUNCTION_TEMPLATE)
    console.print(f"wrote {spec_file}; fill in the creators and types, then "
                  f"'dlhub-hpc publish {directory}'")


def _results_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(rows)} servable(s)")
    for col in ("servable", "title", "creators", "type", "domains", "DOI", "status"):
        table.add_column(col)
    for r in rows:
        table.add_row(*map(escape, (  # titles are data, not markup: "[eV]" must show
            r["ref"], r["title"], "; ".join(r["creators"]), r["type"],
            ", ".join(r["domains"]), ", ".join(r["dois"]), r["status"])))
    return table


@click.command()
@click.argument("text", nargs=-1)
@click.option("--owner", default=None)
@click.option("--domain", default=None)
@click.option("--type", "kind", default=None, help="Shim type, e.g. sklearn.")
@click.option("--doi", default=None, help="Servables with this DOI (their own or a paper's).")
@click.option("--after", default=None, metavar="YYYY-MM-DD", help="Published on or after.")
@click.option("--before", default=None, metavar="YYYY-MM-DD", help="Published on or before.")
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_context
def search(ctx: click.Context, text: tuple[str, ...], owner: str | None, domain: str | None,
           kind: str | None, doi: str | None, after: str | None, before: str | None,
           limit: int, as_json: bool) -> None:
    """Find servables by free TEXT (ranked) and filters; only those you may see."""
    with client_from(ctx) as client:
        rows = client.search(" ".join(text), owner=owner, domain=domain, type=kind, doi=doi,
                             published_after=after, published_before=before, limit=limit)
    if as_json:
        click.echo(to_json(rows))
    else:
        console.print(_results_table(rows))


def _describe_panel(rec: dict[str, Any]) -> Panel:
    rec = _escaped(rec)  # every string in it is data, never rich markup
    spec = rec["spec"]
    dc = spec["datacite"]
    creators = "; ".join(
        c["name"] + (f" ({', '.join(c['affiliations'])})" if c["affiliations"] else "")
        + (f" orcid:{c['orcid']}" if c.get("orcid") else "")
        for c in dc["creators"]
    )
    status = rec["status"] if rec["status"] == "active" else (
        f"[bold red]{rec['status']}[/]: {rec['reason']}"
        + (f" (use {rec['replacement']})" if rec["replacement"] else ""))
    lines = [
        f"[bold]{dc['title']}[/]", f"creators: {creators or '-'}",
        f"identifier: {rec['pid']}", f"status: {status}",
        f"owner: {rec['owner'] or '-'}; visible to: {', '.join(rec['visible_to'])}",
        f"DOIs: {', '.join(rec['dois']) or '-'}",
        f"domains: {', '.join(spec['dlhub']['domains']) or '-'}; "
        f"subjects: {', '.join(dc['subjects']) or '-'}",
        f"type: {spec['servable']['type']}  {spec['servable'].get('model_summary') or ''}",
    ]
    if dc["description"]:
        lines.append(textwrap.fill(dc["description"], 96))
    return Panel("\n".join(lines), title=rec["ref"], expand=False)


def _escaped(value: Any) -> Any:
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, dict):
        return {k: _escaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    return value


def _methods_table(rec: dict[str, Any]) -> Table:
    table = Table(title="Methods")
    for col in ("method", "input", "output", "parameters", "description"):
        table.add_column(col)
    for name, m in rec["spec"]["servable"]["methods"].items():
        table.add_row(*map(escape, (  # a shape [null, 3] is data, not a markup tag
            name, json.dumps({k: v for k, v in m["input"].items() if v}),
            json.dumps({k: v for k, v in m["output"].items() if v}),
            json.dumps(m.get("parameters") or {}), m.get("description", ""))))
    return table


@click.command()
@click.argument("servable")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@click.pass_context
def describe(ctx: click.Context, servable: str, as_json: bool) -> None:
    """Show SERVABLE (owner/name[@version]): citation, identifier, status, methods, versions."""
    with client_from(ctx) as client:
        rec = client.describe(servable)
    if as_json:
        click.echo(to_json(rec))
        return
    console.print(_describe_panel(rec))
    console.print(_methods_table(rec))
    versions = Table(title="Versions")
    for col in ("version", "status", "sha256", "reason"):
        versions.add_column(col)
    for v in rec["versions"]:
        versions.add_row(str(v["version"]), v["status"], v["digest"][:16], escape(v["reason"]))
    console.print(versions)


def _status_command(status: str) -> click.Command:
    @click.command("deprecate" if status == "deprecated" else "withdraw")
    @click.argument("servable")
    @click.option("--reason", required=True, help="Why; shown to everyone who resolves it.")
    @click.option("--replacement", default=None, help="owner/name[@version] to use instead.")
    @click.pass_context
    def command(ctx: click.Context, servable: str, reason: str, replacement: str | None) -> None:
        with client_from(ctx) as client:
            if status == "deprecated":
                rec = client.deprecate(servable, reason, replacement)
            else:
                rec = client.withdraw(servable, reason, replacement)
        console.print(f"{rec['ref']} is now {rec['status']}")

    command.help = (f"Mark SERVABLE (owner/name@version) {status}: it stays resolvable, its "
                    "record says why" + ("; it still runs." if status == "deprecated"
                                         else "; it no longer runs."))
    return command


deprecate = _status_command("deprecated")
withdraw = _status_command("withdrawn")


@click.command()
@click.argument("servable")
@click.option("--public", is_flag=True, help="Anyone may use it.")
@click.option("--user", "users", multiple=True, help="A user who may use it (repeat).")
@click.option("--group", "groups", multiple=True, help="A group that may use it (repeat).")
@click.pass_context
def visibility(ctx: click.Context, servable: str, public: bool, users: tuple[str, ...],
               groups: tuple[str, ...]) -> None:
    """Set who may run, describe and find SERVABLE (its owner only)."""
    with client_from(ctx) as client:
        rec = client.set_visibility(servable, public=public, users=list(users),
                                    groups=list(groups))
    console.print(f"{rec['name']} is visible to {', '.join(rec['visible_to'])}")


@click.command()
@click.argument("servable")
@click.option("--allow", "allow", multiple=True,
              help="An owner (bob) or group (group:lab) whose pools may serve it (repeat).")
@click.option("--deny", "deny", multiple=True,
              help="An owner or group whose pools may no longer serve it (repeat).")
@click.pass_context
def pooling(ctx: click.Context, servable: str, allow: tuple[str, ...],
            deny: tuple[str, ...]) -> None:
    """Show, or set, which other owners' pools may serve SERVABLE (its owner only).

    Allowing bob lets bob's worker processes run its code, hold its model and see the
    inputs of every caller of it; who may run it stays as 'visibility' says."""
    with client_from(ctx) as client:
        rec = client.pooling(servable, allow=list(allow), deny=list(deny))
    console.print(_pooling_table(rec))
    if not rec["pooled_by"]:
        console.print(f"Only {escape(rec['owner'])}'s pools serve it; allow another owner's "
                      f"with 'dlhub-hpc pooling {escape(rec['servable'])} --allow NAME'")


def _pooling_table(rec: dict[str, Any]) -> Table:
    """Whose pools may serve a servable: its owner's, and each it allowed."""
    table = Table(title=f"Pools that may serve {escape(rec['servable'])}")
    table.add_column("owner's pools")
    table.add_column("why")
    table.add_row(escape(rec["owner"]), "its owner")
    for entry in rec["pooled_by"]:
        kind, _, name = entry.partition(":")
        table.add_row(escape(name if kind == "user" else entry),
                      "allowed" if kind == "user" else "allowed, each member's")
    return table


@click.command()
@click.argument("group", required=False)
@click.argument("members", nargs=-1)
@click.pass_context
def groups(ctx: click.Context, group: str | None, members: tuple[str, ...]) -> None:
    """List groups, or define GROUP as exactly MEMBERS (the hub's admin only)."""
    with client_from(ctx) as client:
        found = client.set_group(group, list(members)) if group else client.groups()
    table = Table(title="Groups")
    table.add_column("group")
    table.add_column("members")
    for name, who in found.items():
        table.add_row(name, ", ".join(who))
    console.print(table)


@click.command()
@click.argument("servable")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write here (default: print).")
@click.pass_context
def export(ctx: click.Context, servable: str, output: Path | None) -> None:
    """SERVABLE's record as DLHub's dlhub.json."""
    with client_from(ctx) as client:
        record = client.export_dlhub(servable)
    text = json.dumps(record, indent=2)
    if output is None:
        click.echo(text)
    else:
        output.write_text(text + "\n")
        console.print(f"wrote {output}")


def _id_map(pairs: tuple[str, ...], option: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, name = pair.partition("=")
        if not (sep and key and name):
            raise input_error(f"{option} {pair!r} should look like GLOBUS_ID=NAME", option)
        out[key.strip()] = name.strip()
    return out


@click.command("import-dlhub")
@click.argument("record", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--owner", default=None,
              help="The servable's owner on this hub (needed when the record names none, "
                   "as the DLHub SDK's records do).")
@click.option("--map-group", "map_group", multiple=True, metavar="GLOBUS_GROUP_ID=GROUP",
              help="Carry visible_to's Globus group as this hub group (repeat).")
@click.option("--map-user", "map_user", multiple=True, metavar="GLOBUS_IDENTITY_ID=USER",
              help="Carry visible_to's Globus identity as this hub user (repeat).")
def import_dlhub(record: Path, directory: Path, owner: str | None, map_group: tuple[str, ...],
                 map_user: tuple[str, ...]) -> None:
    """Write DIRECTORY/servable.yaml from a DLHub dlhub.json RECORD (add its files, then
    publish). Globus groups and users in visible_to must be mapped, or it is refused."""
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, or not JSON
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise input_error(f"{record} is not a readable JSON file: {reason}; pass DLHub's "
                          "dlhub.json record", "RECORD") from None
    except RecursionError:  # JSON nested deeper than the parser follows
        raise input_error(f"{record} nests too deeply to be a dlhub.json record; pass "
                          "DLHub's dlhub.json record", "RECORD") from None
    spec = from_dlhub_json(data, owner=owner, group_map=_id_map(map_group, "--map-group"),
                           user_map=_id_map(map_user, "--map-user"))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "servable.yaml").write_text(
        yaml.safe_dump(spec.model_dump(mode="json", exclude_defaults=True) | {
            "datacite": spec.datacite.model_dump(mode="json")}, sort_keys=False))
    console.print(f"wrote {directory / 'servable.yaml'} for {spec.full_name}")
