"""What every command group shares: the console, the client, error output."""

from __future__ import annotations

import json
import logging
import sys
from typing import IO, TYPE_CHECKING, Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape

from dlhub_hpc.errors import DlhubHpcError

if TYPE_CHECKING:
    from dlhub_hpc.client import Client

logger = logging.getLogger(__name__)

console = Console()
err_console = Console(stderr=True)


def client_from(ctx: click.Context, timeout: float | None = 60.0) -> Client:
    # Imported here: commands that need no hub (profiles, build, init) skip the client.
    from dlhub_hpc.client import Client

    return Client(ctx.obj.get("hub") if ctx.obj else None, timeout=timeout)


def fail(exc: DlhubHpcError) -> NoReturn:
    err_console.print(f"[bold red]error[/] {type(exc).__name__}: {escape(exc.message)}")
    sys.exit(1)


class InputError(click.BadParameter):
    """A bad command-line input: one line on stderr and exit status 2, no traceback."""

    def show(self, file: IO[Any] | None = None) -> None:
        # Without the usage block: the message says what to pass instead.
        click.echo(f"Error: {self.format_message()}", file=file, err=True)


def input_error(message: str, param: str = "INPUT") -> InputError:
    return InputError(message, param_hint=param)


def to_json(value: Any) -> str:
    """JSON for a servable output: numpy arrays and scalars become lists and numbers."""
    import numpy as np  # loaded already wherever an output came from the client

    def default(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, bytes):
            return obj.decode("utf-8", errors="replace")
        raise TypeError(f"{type(obj).__name__} is not JSON serialisable")

    return json.dumps(value, default=default)
