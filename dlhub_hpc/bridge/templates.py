"""Globus Compute endpoint configurations that run dlhub-hpc's forwarder, and only that.

``dlhub-hpc endpoint configure NAME`` writes them into ``~/.globus_compute/NAME/``:

- single-user (the endpoint runs as the user who starts it): ``config.yaml``;
- multi-user (started by root; each caller's Globus identity is mapped to a local user, and
  a user endpoint runs as that user): ``config.yaml`` for the parent endpoint,
  ``user_config_template.yaml.j2`` for each user endpoint, ``user_config_schema.json``
  (callers may pass no options), ``user_environment.yaml`` (the hub's address, PATH) and
  ``identity_mapping.json`` (an example mapping to edit).

Both allow only the registered forwarding function (``allowed_functions``) and only the
source-code and JSON serializers, so nothing a caller pickles is ever loaded. The workers
run on the endpoint's own host (``LocalProvider``): forwarding waits on the hub, it
computes nothing.
"""

from __future__ import annotations

import json
import logging
import shlex
import uuid
from pathlib import Path
from string import Template

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dlhub_hpc.bridge.function import ALLOWED_SERIALIZERS, FUNCTION_NAME
from dlhub_hpc.errors import ConfigError

logger = logging.getLogger(__name__)

_ENGINE = """\
engine:
  type: GlobusComputeEngine
  address: 127.0.0.1
  max_workers_per_node: $workers
  # Accept only functions registered as source and JSON arguments: nothing pickled.
  allowed_serializers:
$serializers
  provider:
    type: LocalProvider
    init_blocks: 1
    min_blocks: 1
    max_blocks: 1
    worker_init: |
      export DLHUB_HPC_HUB=$hub_shell
$path_line"""

SINGLE_USER = """\
# Globus Compute endpoint "$name" for dlhub-hpc (written by `dlhub-hpc endpoint configure`).
# It runs one function, $function_name: it passes calls from dlhub_hpc.RemoteClient to the
# hub at $hub and returns the outputs. Start it with:
#     globus-compute-endpoint start $name
# Identity: tasks run as the user who started this endpoint; the hub sees that user.
display_name: $display_name
allowed_functions:
$function_list
""" + _ENGINE

MULTI_USER = """\
# Multi-user Globus Compute endpoint "$name" for dlhub-hpc (written by
# `dlhub-hpc endpoint configure --multi-user`). Start it as root:
#     globus-compute-endpoint start $name
# Identity: identity_mapping.json maps each caller's Globus identity to a local user; that
# user's endpoint (user_config_template.yaml.j2) runs $function_name as that user, so
# the hub at $hub sees that local user and applies its access rules to them.
display_name: $display_name
identity_mapping_config_path: $identity_mapping
allowed_functions:
$function_list
"""

USER_TEMPLATE = """\
{#- The user endpoint of dlhub-hpc's multi-user endpoint "$name" (written by
    `dlhub-hpc endpoint configure --multi-user`). It runs as the local user mapped from
    the caller's Globus identity, and only $function_name. Callers may set no
    variables here (see user_config_schema.json). -#}
allowed_functions:
$function_list
""" + _ENGINE + "\n"

USER_ENVIRONMENT = """\
# Environment of every user endpoint process of "$name" (dlhub-hpc): the hub to forward to.
DLHUB_HPC_HUB: $hub_json
$path_env"""

USER_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "dlhub-hpc forwarder: callers set nothing",
    "type": "object",
    "properties": {},
    "additionalProperties": False,
}


class EndpointSettings(BaseModel):
    """What ``dlhub-hpc endpoint configure`` needs to write an endpoint's files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    hub: str
    function_ids: list[uuid.UUID] = Field(min_length=1)
    multi_user: bool = False
    python_bin: Path | None = Field(
        default=None, description="a bin/ directory with dlhub-hpc and the endpoint")
    workers: int = Field(default=4, ge=1, description="calls forwarded at once")
    display_name: str | None = None
    identity_domain: str = Field(default="example.org", pattern=r"^[A-Za-z0-9.-]+$")

    @field_validator("hub")
    @classmethod
    def _hub_address(cls, value: str) -> str:
        if not value.startswith(("tcp://", "ipc://")):
            raise ValueError(f"hub address {value!r} should start with tcp:// or ipc://")
        return value

    @classmethod
    def build(cls, **values: object) -> EndpointSettings:
        """Validate, raising ``ConfigError`` with every problem named."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"invalid endpoint settings: {problems}") from None


def _substitutions(settings: EndpointSettings, directory: Path) -> dict[str, str]:
    bin_dir = str(settings.python_bin) if settings.python_bin else None
    return {
        "name": settings.name,
        "hub": settings.hub,
        "hub_shell": shlex.quote(settings.hub),
        "hub_json": json.dumps(settings.hub),
        "function_name": FUNCTION_NAME,
        "display_name": json.dumps(settings.display_name or f"dlhub-hpc ({settings.name})"),
        "function_list": "\n".join(f"  - {fid}" for fid in settings.function_ids),
        "workers": str(settings.workers),
        "serializers": "\n".join(f"    - {s}" for s in ALLOWED_SERIALIZERS),
        "path_line": f'      export PATH={shlex.quote(bin_dir)}:"$PATH"\n' if bin_dir else "",
        "path_env": (f"PATH: {json.dumps(bin_dir + ':/usr/local/bin:/usr/bin:/bin')}\n"
                     if bin_dir else ""),
        "identity_mapping": json.dumps(str(directory / "identity_mapping.json")),
    }


def render(settings: EndpointSettings, directory: Path) -> dict[str, str]:
    """The endpoint's files (name -> text) for an endpoint directory ``directory``."""
    subs = _substitutions(settings, directory)
    if not settings.multi_user:
        return {"config.yaml": Template(SINGLE_USER).substitute(subs)}
    mapping = [{
        "comment": "Edit: maps a Globus identity of this domain to the local user of that "
                   "name. See the Globus Connect Server identity mapping guide.",
        "DATA_TYPE": "expression_identity_mapping#1.0.0",
        "mappings": [{
            "source": "{username}",
            "match": f"(.*)@{settings.identity_domain.replace('.', chr(92) + '.')}",
            "output": "{0}",
        }],
    }]
    return {
        "config.yaml": Template(MULTI_USER).substitute(subs),
        "user_config_template.yaml.j2": Template(USER_TEMPLATE).substitute(subs),
        "user_config_schema.json": json.dumps(USER_SCHEMA, indent=2) + "\n",
        "user_environment.yaml": Template(USER_ENVIRONMENT).substitute(subs),
        "identity_mapping.json": json.dumps(mapping, indent=2) + "\n",
    }


def write(settings: EndpointSettings, root: Path, force: bool = False) -> list[Path]:
    """Write the endpoint's files under ``root/NAME``; refuses to overwrite unless ``force``."""
    directory = Path(root).expanduser() / settings.name
    files = render(settings, directory)
    existing = [name for name in files if (directory / name).exists()]
    if existing and not force:
        raise ConfigError(
            f"{directory} already has {', '.join(existing)}; pass --force to overwrite"
        )
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = []
    for name, text in files.items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    logger.info("wrote endpoint %s: %s", settings.name, [p.name for p in written])
    return written
