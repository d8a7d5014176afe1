"""``publish_servable`` of a DLHub SDK model: its record imported (``dlhub_json``), its
files copied beside the ``servable.yaml`` as the import lays them out, then published."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

import yaml

from dlhub_hpc.errors import InvalidInput
from dlhub_hpc.registry.dlhub_json import from_dlhub_json

logger = logging.getLogger(__name__)


class Publisher(Protocol):
    def publish(self, directory: str | Path) -> dict[str, Any]: ...


def record_of(model: Any) -> dict[str, Any]:
    """The record of a DLHub SDK model (``BaseMetadataModel.to_dict()``) or a record."""
    if isinstance(model, dict):
        return model
    to_dict = getattr(model, "to_dict", None)
    if callable(to_dict):
        record = to_dict()
        if isinstance(record, dict):
            return record
    raise InvalidInput(f"publish_servable takes a DLHub SDK model or its dlhub.json record "
                       f"(a dict), not {type(model).__name__}", path="model")


def _absolute(files: Any, base: Path) -> Any:
    """``dlhub.files`` with every path made absolute against ``base``."""
    def one(f: Any) -> str:
        path = Path(str(f)).expanduser()
        found = path if path.is_absolute() else base / path
        if not found.exists():
            raise InvalidInput(f"dlhub.files: {f} is not at {found}; pass directory= where "
                               "the record's files are", path="dlhub.files")
        return str(found.resolve())

    if isinstance(files, list):
        return [one(f) for f in files]
    if isinstance(files, dict):
        return {k: [one(f) for f in v] if isinstance(v, list) else one(v)
                for k, v in files.items()}
    return files


def _listed(files: Any) -> list[str]:
    if isinstance(files, dict):
        return [f for v in files.values() for f in (v if isinstance(v, list) else [v])]
    return list(files) if isinstance(files, list) else []


def _lay_out(paths: list[str], into: Path) -> None:
    """Copy ``paths`` under ``into`` relative to their common folder (the import's rule)."""
    if not paths:
        return
    base = os.path.commonpath([os.path.dirname(p) for p in paths])
    for p in paths:
        target = into / os.path.relpath(p, base)
        target.parent.mkdir(parents=True, exist_ok=True)
        if os.path.isdir(p):
            shutil.copytree(p, target, dirs_exist_ok=True)
        else:
            shutil.copy2(p, target)


def publish_record(client: Publisher, model: Any, owner: str,
                   directory: str | Path | None = None) -> dict[str, Any]:
    """Import ``model``'s record as ``owner``'s, with its files, and publish it; returns
    the hub's answer (name, version, digest). A record that cannot be carried raises
    ``RecordError`` and nothing is published."""
    record = dict(record_of(model))
    dl = dict(record.get("dlhub") or {})
    dl["files"] = _absolute(dl.get("files"), Path(directory or Path.cwd()))
    record["dlhub"] = dl
    spec = from_dlhub_json(record, owner=owner)
    with tempfile.TemporaryDirectory(prefix="dlhub-publish-") as tmp:
        folder = Path(tmp)
        _lay_out(_listed(dl["files"]), folder)
        (folder / "servable.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
        published = client.publish(folder)
    logger.info("published %s@%s from a DLHub record", published["name"],
                published["version"])
    return published
