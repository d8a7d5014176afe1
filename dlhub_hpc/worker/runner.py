"""How a worker runs its servable: in its own process, or shared over MPI ranks (``mpi.py``).

A runner is a small plug-in: ``load(assign)`` once, ``run(method, payloads)`` per batch,
``close()`` at exit. ``run`` returns one ``[ok, value or error record]`` per payload, in
order, which is what a ``BatchResult`` carries.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from dlhub_hpc.errors import DlhubHpcError, ServableLoadError
from dlhub_hpc.protocol import Assign
from dlhub_hpc.servable.bundle import unpack_bundle
from dlhub_hpc.servable.shims import Shim, load_servable
from dlhub_hpc.servable.shims.calling import ItemParameters, group_by_parameters
from dlhub_hpc.servable.spec import ServableSpec

logger = logging.getLogger(__name__)

WireResult = list[Any]  # [True, value] or [False, error record]


def cached_bundle(cache_dir: Path, digest: str, data: bytes) -> Path:
    """Unpack a bundle once per digest; concurrent workers race safely via rename.

    A read-only cache (an image's, without this bundle baked in) falls back to the
    temporary directory rather than failing the load.
    """
    fallback = Path(tempfile.gettempdir()) / "dlhub-hpc"
    try:
        _check_private(cache_dir)
        target = cache_dir / digest
        if target.is_dir():
            return target
        return _unpack_once(cache_dir, digest, data)
    except OSError as exc:
        if cache_dir == fallback:
            raise
        logger.info("cannot unpack into %s (%s); using %s", cache_dir, exc, fallback)
        return _unpack_once(fallback, digest, data)


def _check_private(cache_dir: Path) -> None:
    """Refuse a cache another user could have written into: the code in it would run here."""
    try:
        st = cache_dir.stat()
    except FileNotFoundError:
        return
    if st.st_uid not in (0, os.getuid()) or st.st_mode & 0o022:
        raise PermissionError(
            f"the bundle cache {cache_dir} belongs to, or can be written by, another user "
            "(a bundle planted there would run as you); use a --cache-dir only you can write"
        )


def _unpack_once(cache_dir: Path, digest: str, data: bytes) -> Path:
    _check_private(cache_dir)
    target = cache_dir / digest
    if target.is_dir():
        return target
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(cache_dir)  # made by someone else between the two checks
    scratch = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{digest[:12]}-"))
    try:
        unpack_bundle(data, scratch)
        scratch.rename(target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def load_assigned(assign: Assign, cache_dir: Path) -> tuple[ServableSpec, Shim]:
    """Unpack and load the servable an ``Assign`` carries; ``ServableLoadError`` if it cannot."""
    spec = ServableSpec.from_data(assign.spec, f"{assign.servable}@{assign.version}")
    try:
        root = cached_bundle(cache_dir, assign.digest, assign.bundle)
    except OSError as exc:
        raise ServableLoadError(f"cannot unpack the bundle: {exc}") from exc
    try:
        return spec, load_servable(spec, root)
    except DlhubHpcError:
        raise
    except Exception as exc:  # a framework's own error (CUDA, a dtype...): still a failed load
        raise ServableLoadError(
            f"{spec.full_name} failed to load: {type(exc).__name__}: {exc}",
            servable=spec.full_name,
        ) from exc


def check_ranks(spec: ServableSpec, ranks: int) -> None:
    """Refuse a servable that declares more MPI ranks than this worker runs on: an ensemble
    on fewer members answers differently, and the hub would memoize that answer."""
    if spec.servable.ranks > ranks:
        raise ServableLoadError(
            f"{spec.full_name} declares ranks: {spec.servable.ranks} but this worker runs on "
            f"{ranks} rank(s); start it under an MPI launcher with "
            f"'dlhub-hpc pilot start {spec.full_name} --profile PROFILE' (a profile with an "
            "mpi_launcher), not 'workers start'",
            servable=spec.full_name, ranks=ranks, declared=spec.servable.ranks)


def run_shim(shim: Shim, method: str, payloads: list[Any],
             parameters: ItemParameters = None) -> list[WireResult]:
    """Run one batch through ``shim``: one wire result per payload, a failure stays per item.
    Items with the same ``parameters`` run as one call; the plain batch, as one."""
    if not parameters or not any(parameters):
        outcomes = shim.run(method, payloads)
    else:
        outcomes = [None] * len(payloads)
        for params, where in group_by_parameters(parameters).values():
            for i, o in zip(where, shim.run(method, [payloads[i] for i in where], params),
                            strict=True):
                outcomes[i] = o
    return [
        [False, o.to_wire()] if isinstance(o, DlhubHpcError) else [True, o]
        for o in outcomes
    ]


class Runner(ABC):
    """Runs the worker's servable; ``ranks`` processes share each batch."""

    ranks: int = 1

    @abstractmethod
    def load(self, assign: Assign) -> ServableSpec:
        """Load the servable (on every rank); raise ``ServableLoadError`` if any rank cannot."""

    @abstractmethod
    def run(self, method: str, payloads: list[Any],
            parameters: ItemParameters = None) -> list[WireResult]:
        """One batch: one ``[ok, value or error record]`` per payload, in order;
        ``parameters`` (one per payload, or None) override the method's defaults."""

    def close(self) -> None:  # noqa: B027 (most runners hold nothing)
        """Release what the runner holds (other ranks, for MPI)."""


class LocalRunner(Runner):
    """The servable in this process."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self.shim: Shim | None = None

    def __repr__(self) -> str:
        return f"LocalRunner(cache_dir={str(self.cache_dir)!r})"

    def load(self, assign: Assign) -> ServableSpec:
        # Checked before the model is imported: a refused servable costs nothing to load.
        check_ranks(ServableSpec.from_data(assign.spec, f"{assign.servable}@{assign.version}"),
                    self.ranks)
        spec, self.shim = load_assigned(assign, self.cache_dir)
        return spec

    def run(self, method: str, payloads: list[Any],
            parameters: ItemParameters = None) -> list[WireResult]:
        assert self.shim is not None, "the hub sent a batch before the servable was loaded"
        return run_shim(self.shim, method, payloads, parameters)
