"""``dlhub-hpc keys``: this user's CurveZMQ key pair, and the hub's identities (admin)."""

from __future__ import annotations

import getpass
import logging
import time
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from dlhub_hpc.broker.config import default_home, read_hub_file
from dlhub_hpc.cli.common import client_from, console
from dlhub_hpc.errors import ConfigError
from dlhub_hpc.security.keys import (
    USER_KEY,
    KeyPair,
    key_dir,
    load_keypair,
    public_path,
    trust_hub,
    user_keypair,
    write_keypair,
)

logger = logging.getLogger(__name__)


@click.group()
def keys() -> None:
    """Key pairs and identities (CurveZMQ authentication)."""


@keys.command()
@click.option("--force", is_flag=True, help="Replace an existing key pair (the hub must then "
              "be given the new public key).")
def create(force: bool) -> None:
    """Make this user's key pair (0600) and print its public key for the hub's admin."""
    path = key_dir() / f"{USER_KEY}.key"
    if path.exists() and not force:
        pair = load_keypair(path)
        console.print(f"{path} exists already (use --force to replace it)")
    else:
        pair = KeyPair.generate()
        write_keypair(path, pair, getpass.getuser())
        console.print(f"wrote {path} (secret, mode 0600) and {public_path(path)}")
    click.echo(pair.public)


@keys.command()
def show() -> None:
    """Print this user's public key (made first if missing)."""
    click.echo(user_keypair().public)


# Z85 keys may start with "-": take them as arguments, not as unknown options (and keep
# "-h" from turning one into a help request).
KEY_ARGUMENTS = {"ignore_unknown_options": True, "help_option_names": ["--help"]}


def _public_key(value: str) -> str:
    path = Path(value)
    if len(value) != 40 and path.is_file():
        return load_keypair(path).public
    return value


@keys.command(context_settings=KEY_ARGUMENTS)
@click.argument("name")
@click.argument("public_key", metavar="PUBLIC_KEY|FILE")
@click.pass_context
def add(ctx: click.Context, name: str, public_key: str) -> None:
    """Let the holder of PUBLIC_KEY (or a .pub file) in as NAME (the hub's admin only)."""
    with client_from(ctx) as client:
        client.add_identity(name, _public_key(public_key))
    console.print(f"identity [bold]{name}[/] added")


@keys.command()
@click.argument("name")
@click.pass_context
def remove(ctx: click.Context, name: str) -> None:
    """Remove the identity NAME: its key is refused from now on (the hub's admin only)."""
    with client_from(ctx) as client:
        client.remove_identity(name)
    console.print(f"identity [bold]{name}[/] removed")


@keys.command("list")
@click.pass_context
def list_(ctx: click.Context) -> None:
    """The identities the hub knows (the hub's admin only)."""
    with client_from(ctx) as client:
        rows = client.identities()
    table = Table(title="Identities")
    for col in ("identity", "kind", "groups", "public key"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["name"]), str(r["kind"]), ", ".join(r["groups"]) or "-",
                      Text(str(r["public_key"])))  # Z85 has '[': not markup
    console.print(table)


@keys.command("workers")
@click.pass_context
def workers_(ctx: click.Context) -> None:
    """The worker credentials the hub issued, one per owner (the hub's admin only)."""
    with client_from(ctx) as client:
        rows = client.control("worker_credentials")
    table = Table(title="Worker credentials")
    for col in ("owner", "public key", "issued", "revoked"):
        table.add_column(col)
    for r in rows:
        revoked = r["revoked_at"]
        table.add_row(str(r["owner"]), Text(str(r["public_key"])), _when(r["issued_at"]),
                      "-" if revoked is None else _when(revoked))
    console.print(table)


@keys.command("revoke-workers")
@click.argument("owner")
@click.pass_context
def revoke_workers(ctx: click.Context, owner: str) -> None:
    """Revoke OWNER's worker credential: its workers are dropped and its key refused; the
    next 'workers start' or pilot block issues a new one (the hub's admin only)."""
    with client_from(ctx) as client:
        done = client.control("revoke_workers", owner=owner)
    console.print(f"revoked {done['revoked']} worker credential(s) of [bold]{owner}[/]")


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


@keys.command(context_settings=KEY_ARGUMENTS)
@click.argument("address")
@click.argument("public_key", metavar="PUBLIC_KEY|FILE")
def trust(address: str, public_key: str) -> None:
    """Record the public key of the hub at ADDRESS (as given by its admin)."""
    path = trust_hub(address, _public_key(public_key))
    console.print(f"recorded the hub at {address} in {path}")


@keys.command()
@click.pass_context
def whoami(ctx: click.Context) -> None:
    """The identity the hub knows this user's key as."""
    with client_from(ctx) as client:
        me = client.whoami()
    groups = ", ".join(me["groups"]) or "none"
    console.print(f"{me['identity']}{' (admin)' if me['admin'] else ''}; groups: {groups}")


@keys.command("hub-key")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The hub's home (default: $DLHUB_HPC_HOME or ~/.dlhub-hpc).")
def hub_key(home: Path | None) -> None:
    """Print the running hub's address and public key, to give to other users
    ('dlhub-hpc keys trust ADDRESS KEY')."""
    state = read_hub_file(home or default_home())
    if not state or not state.get("server_key"):
        raise ConfigError(f"no running hub in {home or default_home()}; start one with "
                          "'dlhub-hpc hub start'")
    click.echo(f"{state['client_address']} {state['server_key']}")


@keys.group("token")
def token_() -> None:
    """Bearer tokens for the Open Inference Protocol gateway (the hub's admin only)."""


@token_.command("create")
@click.option("--identity", required=True, help="The hub identity the token acts as.")
@click.option("--note", default="", help="What the token is for (shown by 'list').")
@click.pass_context
def token_create(ctx: click.Context, identity: str, note: str) -> None:
    """Make a token that acts as IDENTITY; it is printed this once (the hub keeps a hash)."""
    with client_from(ctx) as client:
        made = client.control("tokens", action="create", identity=identity, note=note)
    console.print(f"token [bold]{made['id']}[/] acts as [bold]{made['identity']}[/]; keep it "
                  "secret, it is not shown again:", highlight=False)
    click.echo(made["token"])


@token_.command("list")
@click.pass_context
def token_list(ctx: click.Context) -> None:
    """The tokens the hub knows (never the tokens themselves)."""
    with client_from(ctx) as client:
        rows = client.control("tokens", action="list")
    table = Table(title="Bearer tokens")
    for col in ("id", "identity", "created", "revoked", "note"):
        table.add_column(col)
    for r in rows:
        revoked = r["revoked_at"]
        table.add_row(str(r["id"]), str(r["identity"]), _when(r["created_at"]),
                      "-" if revoked is None else _when(revoked), Text(str(r["note"])))
    console.print(table)


@token_.command("revoke")
@click.argument("token_id")
@click.pass_context
def token_revoke(ctx: click.Context, token_id: str) -> None:
    """Revoke the token TOKEN_ID (or every token of the identity TOKEN_ID): refused at once."""
    with client_from(ctx) as client:
        done = client.control("tokens", action="revoke", id=token_id)
    console.print(f"revoked {done['revoked']} token(s)")
