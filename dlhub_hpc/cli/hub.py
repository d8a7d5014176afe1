"""``dlhub-hpc hub start|stop``."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import click

from dlhub_hpc.broker.config import STATE_FILE, HubConfig, default_home, read_hub_file
from dlhub_hpc.cli.common import console
from dlhub_hpc.client import Client
from dlhub_hpc.errors import ConfigError, DlhubHpcError
from dlhub_hpc.logging_setup import LOG_FORMATS, setup_logging
from dlhub_hpc.security.client import listening

logger = logging.getLogger(__name__)


@click.group()
def hub() -> None:
    """Run the hub (broker + registry + pilot manager)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale_hub_file(home: Path) -> dict[str, str] | None:
    """The addresses in a ``hub.json`` that a killed hub left; ``ConfigError`` if its hub
    still runs; None if there is none."""
    existing = read_hub_file(home)
    if not existing:
        return None
    try:
        pid = int(existing.get("pid") or 0)
    except (TypeError, ValueError):
        pid = 0
    address = str(existing.get("client_address") or "")
    alive = pid > 0 and _pid_alive(pid)
    if alive and listening(address):
        raise ConfigError(
            f"a hub (pid {pid}) already runs from {home} at {address}; stop it with "
            "'dlhub-hpc hub stop'"
        )
    why = f"pid {pid} is not running" if not alive else f"nothing listens at {address}"
    console.print(f"replaced a stale {home / STATE_FILE} left by a hub that is gone ({why}); "
                  "its pilots' jobs still running are taken back")
    return {k: str(existing[k]) for k in ("client_address", "worker_address")
            if isinstance(existing.get(k), str)}


def _settings_file(path: Path | None) -> dict[str, object]:
    """The hub settings in a YAML file (configs/hub.yaml documents every key)."""
    if path is None:
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the hub settings {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: hub settings are a YAML mapping of setting: value, not "
                          f"{type(data).__name__} (see configs/hub.yaml)")
    return data


def _hub_config(settings: dict[str, object], source: str) -> HubConfig:
    from pydantic import ValidationError

    try:
        return HubConfig.model_validate(settings)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
                             for e in exc.errors())
        raise ConfigError(f"{source}: {problems} (configs/hub.yaml lists every setting)"
                          ) from None


@hub.command("start")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False,
                                                         path_type=Path), default=None,
              help="Hub settings file (configs/hub.yaml documents every key); the options "
                   "below win over it.")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Registry and state directory (default $DLHUB_HPC_HOME or ~/.dlhub-hpc).")
@click.option("--client-address", default=None, help="Where clients connect (tcp://HOST:PORT).")
@click.option("--worker-address", default=None, help="Where workers connect (tcp://HOST:PORT).")
@click.option("--background", is_flag=True, help="Detach; return once the hub listens.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus metrics on this port (0: a free one; hub.json names it).")
@click.option("--metrics-address", default=None,
              help="Where metrics are served (default 127.0.0.1).")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default="text",
              help="json: one JSON object a line, with request ids; workers log alike.")
def start(config_file: Path | None, home: Path | None, client_address: str | None,
          worker_address: str | None, background: bool, metrics_port: int | None,
          metrics_address: str | None, log_format: str) -> None:
    """Start a hub on this machine (loopback only, unless told otherwise)."""
    if log_format != "text":
        setup_logging(logging.getLogger().level, log_format)
    settings = _settings_file(config_file)
    home = home or (Path(str(settings["home"])).expanduser() if settings.get("home")
                    else default_home())
    stale = _stale_hub_file(home)
    if stale is not None:  # a crashed hub's: come back on its addresses, for its workers
        settings = {**settings, **stale}
    settings["home"] = home
    if client_address:
        settings["client_address"] = client_address
    if worker_address:
        settings["worker_address"] = worker_address
    settings.update({k: v for k, v in (("metrics_port", metrics_port),
                                        ("metrics_address", metrics_address)) if v is not None})
    config = _hub_config(settings, str(config_file or "hub settings"))
    if background:
        # The resolved addresses: the options', the stale file's, or the settings file's.
        _start_background(config, config.client_address, config.worker_address, config_file,
                          _passed_on(metrics_port, metrics_address, log_format))
        return
    from dlhub_hpc.hub import Hub  # Parsl is imported only by the process that runs the hub

    Hub(config).serve_forever()


def _passed_on(metrics_port: int | None, metrics_address: str | None,
               log_format: str) -> list[str]:
    """The options of 'hub start' that its background process gets again."""
    args = [] if metrics_port is None else ["--metrics-port", str(metrics_port)]
    args += [] if metrics_address is None else ["--metrics-address", metrics_address]
    return [*args, "--log-format", log_format]


def _start_background(config: HubConfig, client_address: str | None,
                      worker_address: str | None, config_file: Path | None = None,
                      extra: list[str] | None = None) -> None:
    config.home.mkdir(parents=True, exist_ok=True)
    # The detached hub logs as much as this command was asked to (-v, -vv).
    verbosity = {logging.INFO: ["-v"], logging.DEBUG: ["-vv"]}.get(logging.getLogger().level, [])
    args = [sys.executable, "-m", "dlhub_hpc.cli", *verbosity, "hub", "start", "--home",
            str(config.home)]
    if config_file is not None:
        args += ["--config", str(config_file.resolve())]
    if client_address:
        args += ["--client-address", client_address]
    if worker_address:
        args += ["--worker-address", worker_address]
    args += extra or []
    log = (config.home / "hub.log").open("ab")
    proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 30
    with console.status("starting the hub"):
        while time.monotonic() < deadline:
            state = read_hub_file(config.home)
            if state and state.get("pid") == proc.pid:
                console.print(f"hub running (pid {proc.pid}): clients {state['client_address']}, "
                              f"workers {state['worker_address']}; log {config.home / 'hub.log'}")
                return
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    raise DlhubHpcError(f"the hub did not start; see {config.home / 'hub.log'}")


@hub.command("stop")
@click.pass_context
def stop(ctx: click.Context) -> None:
    """Stop the running hub, its workers and pilot blocks."""
    state = read_hub_file(default_home())
    with Client(ctx.obj.get("hub") if ctx.obj else None, timeout=10.0) as client:
        client.shutdown_hub()
    if state:
        deadline = time.monotonic() + 30
        while _pid_alive(int(state["pid"])) and time.monotonic() < deadline:
            time.sleep(0.1)
    console.print("hub stopped")
