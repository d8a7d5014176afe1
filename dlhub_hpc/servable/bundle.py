"""Bundles: a servable directory packed as a deterministic tar archive with a sha256 digest.

The same files always give the same bytes (sorted names, zeroed times and owners), so the
digest identifies the content: publishing an unchanged directory twice is a no-op, and a
worker caches unpacked bundles by digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from dlhub_hpc.errors import SpecError
from dlhub_hpc.servable.spec import SPEC_FILENAMES, ServableSpec, find_spec_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bundle:
    spec: ServableSpec
    data: bytes

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def _bundle_files(directory: Path, spec: ServableSpec, spec_file: Path) -> list[Path]:
    if spec.dlhub.files:
        wanted = [directory / f for f in spec.dlhub.files]
        missing = [str(p.relative_to(directory)) for p in wanted if not p.is_file()]
        if missing:
            raise SpecError(f"files listed in {spec_file.name} are missing: {missing}")
        files = set(wanted)
    else:
        files = {
            p for p in directory.rglob("*")
            if p.is_file() and not any(
                part == "__pycache__" or part.startswith(".")
                for part in p.relative_to(directory).parts
            )
        }
    files.add(spec_file)
    return sorted(files)


def make_bundle(directory: Path) -> Bundle:
    """Pack a servable directory (its spec file and the files it names, or all files)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SpecError(f"{directory} is not a directory")
    spec_file = find_spec_file(directory)
    spec = ServableSpec.from_file(spec_file)
    if spec.servable.model and not (directory / spec.servable.model).is_file():
        raise SpecError(f"model file {spec.servable.model!r} is not in {directory}")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _bundle_files(directory, spec, spec_file):
            info = tarfile.TarInfo(str(path.relative_to(directory)))
            info.size = path.stat().st_size
            info.mode = 0o644
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    return Bundle(spec=spec, data=buf.getvalue())


def unpack_bundle(data: bytes, dest: Path) -> None:
    """Unpack bundle bytes into ``dest``, refusing links and paths outside it."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        members = tar.getmembers()
        for member in members:
            target = (dest / member.name).resolve()
            if not member.isfile() or not target.is_relative_to(dest.resolve()):
                raise SpecError(f"bundle member {member.name!r} is not a plain file inside it")
        # Written by hand rather than extractall(filter="data"): images run Pythons older
        # than 3.11.4 (Debian 12's 3.11.2), which have no extraction filters.
        for member in members:
            source = tar.extractfile(member)
            assert source is not None  # a plain file, checked above
            target = dest / member.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read())


def read_bundle(data: bytes) -> Bundle:
    """Check bundle bytes sent for publication: a spec file, and the files it names."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
            names = set(tar.getnames())
            spec_name = next((n for n in SPEC_FILENAMES if n in names), None)
            if spec_name is None:
                raise SpecError(f"the bundle has no spec file (one of {SPEC_FILENAMES})")
            member = tar.extractfile(spec_name)
            assert member is not None
            blob = member.read()
    except tarfile.TarError as exc:
        raise SpecError(f"the bundle is not a tar archive: {exc}") from exc
    try:
        text = blob.decode()
        raw = json.loads(text) if spec_name.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise SpecError(f"cannot read {spec_name} in the bundle: {exc}") from exc
    spec = ServableSpec.from_data(raw, spec_name)
    wanted = set(spec.dlhub.files) | ({spec.servable.model} if spec.servable.model else set())
    missing = sorted(wanted - names)
    if missing:
        raise SpecError(f"the bundle lacks files its spec names: {missing}")
    return Bundle(spec=spec, data=data)
