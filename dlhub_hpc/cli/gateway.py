"""``dlhub-hpc gateway``: the Open Inference Protocol (KServe v2 REST and gRPC) gateway."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from dlhub_hpc.cli.common import console
from dlhub_hpc.errors import ConfigError
from dlhub_hpc.logging_setup import LOG_FORMATS, setup_logging

logger = logging.getLogger(__name__)


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop where it is installed (less time per request in the loop
    itself), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


@click.group()
def gateway() -> None:
    """Serve models over the Open Inference Protocol (KServe v2 REST) for any language."""


@gateway.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback by default; give TLS for any other).")
@click.option("--port", default=8000, show_default=True, type=int, help="Port (0: any free).")
@click.option("--grpc-port", type=int, default=None,
              help="Serve the protocol's gRPC endpoint on this port too (0: any free).")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="PEM certificate: serve HTTPS.")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="PEM private key of --tls-cert.")
@click.option("--timeout", default=60.0, show_default=True, type=float,
              help="Seconds a request may take at the hub.")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default="text",
              help="json: one JSON object a line, with request ids.")
@click.pass_context
def start(ctx: click.Context, host: str, port: int, grpc_port: int | None,
          tls_cert: Path | None, tls_key: Path | None, timeout: float, log_format: str) -> None:
    """Serve the hub's models at http(s)://HOST:PORT/v2 (and over gRPC at HOST:GRPC_PORT)
    until interrupted. Callers send 'Authorization: Bearer TOKEN' ('dlhub-hpc keys token
    create --identity NAME'), as gRPC metadata 'authorization'."""
    if log_format != "text":
        setup_logging(logging.getLogger().level, log_format)
    try:
        from dlhub_hpc.gateway import GatewayConfig, serve
    except ImportError as exc:
        raise ConfigError(f"the gateway needs aiohttp ({exc}): pip install "
                          "'dlhub-hpc[gateway]'") from None
    if grpc_port is not None:
        try:
            import dlhub_hpc.gateway.grpc_service  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"the gRPC endpoint needs grpcio and tritonclient[grpc] "
                              f"({exc}): pip install 'dlhub-hpc[gateway]'") from None
    try:
        config = GatewayConfig(host=host, port=port, grpc_port=grpc_port, tls_cert=tls_cert,
                               tls_key=tls_key,
                               hub_address=ctx.obj.get("hub") if ctx.obj else None,
                               timeout=timeout)
    except ValidationError as exc:
        raise ConfigError("; ".join(e["msg"].removeprefix("Value error, ")
                                    for e in exc.errors())) from None

    def started(url: str) -> None:
        # One line per endpoint a script can wait for and parse (the port, when --port 0):
        # REST's first, then gRPC's, once both listen.
        click.echo(f"gateway listening on {url}", nl=True)
        # This process is the gateway's: what it holds once listening lives as long as it
        # does, so full collections walk only what requests make (see Hub.serve_forever).
        gc.freeze()

    with contextlib.suppress(KeyboardInterrupt):
        run_loop(serve(config, started))
    console.print("gateway stopped")
