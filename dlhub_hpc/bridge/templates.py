"""Globus Compute endpoint configurations that run dlhub-hpc's forwarder, and only that.

``dlhub-hpc endpoint configure NAME`` writes them into ``~/.globus_compute/NAME/``:

- single-user (the endpoint runs as the user who starts it): ``config.yaml``;
- multi-user (started by root; each caller's Globus identity is mapped to a local user, and
  a user endpoint runs as that user): ``config.yaml`` for the parent endpoint,
  ``user_config_template.yaml.j2`` for each user endpoint, ``user_config_schema.json``
  (callers may pass no options), ``user_environment.yaml`` (the hub's address, PATH) and
  ``identity_mapping.json`` (an example mapping to edit).

The templates are files, ``configs/globus_compute/*.tmpl`` (``$field`` substitution), shipped
in the wheel. User endpoints stop when idle, as upstream's template has them do.

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
from dlhub_hpc.shipped import shipped_dir

logger = logging.getLogger(__name__)

IDLE_HEARTBEATS_SOFT = 10  # as Globus Compute's own user endpoint template
IDLE_HEARTBEATS_HARD = 5760  # two days at the default 30 s heartbeat


def template_dir() -> Path:
    """The shipped templates: ``configs/globus_compute/`` (in the wheel, or the checkout)."""
    return shipped_dir("configs") / "globus_compute"


def _read(directory: Path, name: str) -> str:
    path = directory / name
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the endpoint template {path}: {exc}; reinstall "
                          "dlhub-hpc, or pass --template-dir with a copy of "
                          "configs/globus_compute/") from None


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
        "path_line": f'      export PATH={shlex.quote(bin_dir)}:"$PATH"' if bin_dir else "",
        "path_env": (f"PATH: {json.dumps(bin_dir + ':/usr/local/bin:/usr/bin:/bin')}"
                     if bin_dir else ""),
        "identity_mapping": json.dumps(str(directory / "identity_mapping.json")),
        # A Globus identity of the domain -> the local user of that name.
        "match_json": json.dumps("(.*)@" + settings.identity_domain.replace(".", "\\.")),
        "idle_heartbeats_soft": str(IDLE_HEARTBEATS_SOFT),
        "idle_heartbeats_hard": str(IDLE_HEARTBEATS_HARD),
    }


def _fill(directory: Path, name: str, subs: dict[str, str]) -> str:
    try:
        text = Template(_read(directory, name)).substitute(subs)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"the endpoint template {directory / name} has an unknown or bad "
                          f"field: {exc}; fields: {', '.join(sorted(subs))}") from None
    return text.rstrip("\n") + "\n"


def render(settings: EndpointSettings, directory: Path,
           templates: Path | None = None) -> dict[str, str]:
    """The endpoint's files (name -> text) for an endpoint directory ``directory``, from the
    templates in ``templates`` (default :func:`template_dir`)."""
    source = templates or template_dir()
    subs = _substitutions(settings, directory)
    subs["engine"] = _fill(source, "engine.yaml.tmpl", subs).rstrip("\n")
    if not settings.multi_user:
        return {"config.yaml": _fill(source, "config.yaml.tmpl", subs)}
    return {
        "config.yaml": _fill(source, "multi_user_config.yaml.tmpl", subs),
        "user_config_template.yaml.j2": _fill(source, "user_config_template.yaml.j2.tmpl",
                                              subs),
        "user_config_schema.json": _read(source, "user_config_schema.json"),
        "user_environment.yaml": _fill(source, "user_environment.yaml.tmpl", subs),
        "identity_mapping.json": _fill(source, "identity_mapping.json.tmpl", subs),
    }


def write(settings: EndpointSettings, root: Path, force: bool = False,
          templates: Path | None = None) -> list[Path]:
    """Write the endpoint's files under ``root/NAME``; refuses to overwrite unless ``force``."""
    directory = Path(root).expanduser() / settings.name
    files = render(settings, directory, templates)
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
