"""Build a published servable's container image, cached by its recipe digest.

``ImageBuilder(registry_root, cache_dir).build("alice/oqmd@2")`` renders the Apptainer
definition; with ``apptainer`` or ``singularity`` installed it runs ``apptainer build``;
otherwise (``backend="local"``) it makes the same image from Debian's tools (see
:mod:`dlhub_hpc.container.rootfs`). Images land in ``cache_dir/images/RECIPE/`` and are
recorded, with their sha256, in the registry's ``images`` table. A second build of an
unchanged servable finds its records and files and does no work.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from dlhub_hpc._version import PACKAGE_DIR
from dlhub_hpc.container import rootfs as local
from dlhub_hpc.container.definition import (
    BuildOptions,
    Recipe,
    code_digest,
    labels_json,
    render_definition,
)
from dlhub_hpc.errors import ConfigError, ContainerError, RuntimeNotFound
from dlhub_hpc.registry.images import ImageRecord, ImageStore, file_digest, tree_digest
from dlhub_hpc.registry.store import Registry
from dlhub_hpc.servable.spec import parse_ref

logger = logging.getLogger(__name__)

Backend = Literal["auto", "apptainer", "singularity", "local"]
LOCAL_STEPS = ("base", "rootfs", "python", "bundle", "metadata", "test", "squashfs", "sif")
APPTAINER_STEPS = ("context", "build")
MANIFEST = "manifest.json"
# siftool's --partarch numbers, by machine.
SIF_ARCH = {"x86_64": "2", "i686": "1", "armv7l": "3", "aarch64": "4", "ppc64le": "6",
            "s390x": "11", "riscv64": "12"}


def default_cache_dir() -> Path:
    """``$DLHUB_HPC_IMAGE_CACHE``, else ``~/.cache/dlhub-hpc/images`` (keep it on local disk)."""
    env = os.environ.get("DLHUB_HPC_IMAGE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "dlhub-hpc" / "images"


def apptainer_build_command(executable: str, sif: Path, definition: Path,
                            fakeroot: bool = True) -> list[str]:
    """The build command run where Apptainer/Singularity exists (unprivileged: --fakeroot)."""
    return [executable, "build", *(["--fakeroot"] if fakeroot else []), "--force",
            str(sif), str(definition)]


class BuildResult(BaseModel):
    """What a build made (or found in the cache)."""

    model_config = ConfigDict(frozen=True)

    servable: str
    recipe_digest: str
    cached: bool
    seconds: float
    images: dict[str, ImageRecord]
    definition: str
    steps: dict[str, float] = {}

    def image(self, fmt: str) -> ImageRecord:
        try:
            return self.images[fmt]
        except KeyError:
            raise ContainerError(
                f"the build of {self.servable} made no {fmt} image; it made {sorted(self.images)}"
            ) from None


class ImageBuilder:
    """Builds images of servables published in the registry at ``registry_root``."""

    def __init__(self, registry_root: Path, cache_dir: Path | None = None, *,
                 backend: Backend = "auto", console: Console | None = None,
                 progress: bool = False) -> None:
        if backend not in ("auto", "apptainer", "singularity", "local"):
            raise ConfigError(
                f"unknown build backend {backend!r}; use auto, apptainer, singularity or local"
            )
        self.registry_root = Path(registry_root)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.backend = backend
        self.console = console or Console(stderr=True)
        self.progress = progress
        self.step_seconds: dict[str, float] = {}

    def __repr__(self) -> str:
        return (f"ImageBuilder({str(self.registry_root)!r}, {str(self.cache_dir)!r}, "
                f"backend={self.backend!r})")

    def resolve_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        for exe in ("apptainer", "singularity"):
            if shutil.which(exe):
                return exe
        return "local"

    def recipe(self, ref: str, options: BuildOptions | None = None) -> Recipe:
        name, version = parse_ref(ref)
        if not (self.registry_root / "registry.sqlite").is_file():
            raise ConfigError(
                f"there is no hub registry in {self.registry_root}; pass the hub's home "
                "(--home, or $DLHUB_HPC_HOME) where servables were published",
                home=str(self.registry_root),
            )
        registry = Registry(self.registry_root)
        try:
            record = registry.get(name, version)
        finally:
            registry.close()
        options = options or BuildOptions()
        base = options.local_base()
        base_digest = file_digest(base) if base is not None and base.is_file() else ""
        return Recipe(servable=record.name, version=record.version, bundle_digest=record.digest,
                      spec=record.spec, options=options, code_digest=code_digest(),
                      base_digest=base_digest)

    def build(self, ref: str, options: BuildOptions | None = None, *,
              force: bool = False) -> BuildResult:
        """Build ``OWNER/NAME[@VERSION]`` (latest version when none), or reuse its image."""
        started = time.perf_counter()
        recipe = self.recipe(ref, options)
        out = self.cache_dir / "images" / recipe.digest
        with local.locked(self.cache_dir / "images" / f"{recipe.digest}.lock"), \
                ImageStore(self.registry_root) as store:
            cached = None if force else self._cached(store, recipe, out)
            if cached is not None:
                logger.info("image of %s is cached (%s)", recipe.ref, recipe.digest[:12])
                (out / MANIFEST).touch()  # last use, for prune()
                return BuildResult(
                    servable=recipe.ref, recipe_digest=recipe.digest, cached=True,
                    seconds=time.perf_counter() - started, images=cached,
                    definition=(out / "Singularity").read_text(),
                )
            backend = self.resolve_backend()
            local.remove_tree(out)
            out.mkdir(parents=True)
            self.step_seconds = {}
            if backend == "local":
                files = self._build_local(recipe, out)
            else:
                files = self._build_apptainer(recipe, out, backend)
            digests = {
                fmt: tree_digest(path) if fmt == "dir" else file_digest(path)
                for fmt, path in files.items()
            }
            # Written last: its presence says the build in `out` is complete.
            manifest = {fmt: {"path": str(files[fmt]), "sha256": d} for fmt, d in digests.items()}
            (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
            images = self._record(store, recipe, manifest)
        seconds = time.perf_counter() - started
        logger.info("built %s image of %s in %.1f s", backend, recipe.ref, seconds)
        return BuildResult(servable=recipe.ref, recipe_digest=recipe.digest, cached=False,
                           seconds=seconds, images=images, steps=dict(self.step_seconds),
                           definition=(out / "Singularity").read_text())

    def prune(self, keep: int = 8) -> list[Path]:
        """Remove all but the ``keep`` most recently used images, failed builds, and base
        SIFs beyond the ``keep`` most recently used.

        Records of removed images stay; a later build or run finds the file gone and
        rebuilds. Images being built or used by a build right now are skipped.
        """
        images = self.cache_dir / "images"
        removed: list[Path] = []
        dirs = [d for d in images.glob("*") if d.is_dir()]
        built = sorted((d for d in dirs if (d / MANIFEST).is_file()),
                       key=lambda d: (d / MANIFEST).stat().st_mtime, reverse=True)
        # No manifest: a failed build, or one in progress (its lock is held: skipped below).
        unfinished = [d for d in dirs if not (d / MANIFEST).is_file()]
        bases = sorted((self.cache_dir / "base").glob("sif-*"),
                       key=lambda d: d.stat().st_mtime, reverse=True)
        for old in built[keep:] + unfinished + bases[keep:]:
            lock = old.parent / f"{old.name}.lock"
            if local.try_remove_locked(old, lock):
                removed.append(old)
        logger.info("pruned %d cached images from %s", len(removed), self.cache_dir)
        return removed

    @staticmethod
    def _record(store: ImageStore, recipe: Recipe,
                manifest: dict[str, dict[str, str]]) -> dict[str, ImageRecord]:
        return {
            fmt: store.record(ImageRecord(
                servable=recipe.servable, version=recipe.version,
                bundle_digest=recipe.bundle_digest, recipe_digest=recipe.digest, format=fmt,
                path=entry["path"], sha256=entry["sha256"], built_at=time.time(),
            ))
            for fmt, entry in manifest.items()
        }

    def _cached(self, store: ImageStore, recipe: Recipe,
                out: Path) -> dict[str, ImageRecord] | None:
        records = {r.format: r for r in store.by_recipe(recipe.digest)}
        if records and all(
            Path(r.path).exists() and r.version == recipe.version for r in records.values()
        ):
            return records
        try:  # built for another registry, or for another version of the same bundle
            manifest = json.loads((out / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        if not all(Path(entry["path"]).exists() for entry in manifest.values()):
            return None
        return self._record(store, recipe, manifest)

    @contextmanager
    def _steps(self, steps: tuple[str, ...], ref: str) -> Iterator[Callable[[str], None]]:
        """A rich progress display over the build's steps; yields ``advance(step)``."""
        last: list[tuple[str, float]] = []

        def timed(step: str) -> None:
            now = time.perf_counter()
            if last:
                self.step_seconds[last[0][0]] = now - last[0][1]
            last[:] = [(step, now)]
            logger.info("build %s: %s", ref, step)

        if not self.progress:
            yield timed
            timed("")
            return
        columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                   TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=False) as bar:
            task = bar.add_task(f"{ref}: start", total=len(steps))
            seen: list[str] = []

            def advance(step: str) -> None:
                timed(step)
                if seen:
                    bar.advance(task)
                seen.append(step)
                bar.update(task, description=f"{ref}: {step}")

            yield advance
            timed("")
            bar.update(task, completed=len(steps), description=f"{ref}: done")

    def _bundle_bytes(self, recipe: Recipe) -> bytes:
        registry = Registry(self.registry_root)
        try:
            return registry.bundle_bytes(recipe.bundle_digest)
        finally:
            registry.close()

    def _build_local(self, recipe: Recipe, out: Path) -> dict[str, Path]:
        log = out / "build.log"
        definition = out / "Singularity"
        rootfs = out / "rootfs"
        with self._steps(LOCAL_STEPS, recipe.ref) as step:
            step("base")
            base = self._local_base(recipe)
            step("rootfs")
            # Hard links: the image only adds files, so the shared base is never written.
            local.run_step("rootfs", ["cp", "-al", str(base), str(rootfs)], log)
            step("python")
            local.install_python(rootfs, recipe, log)
            step("bundle")
            bundle_tar = out / "bundle.tar"
            bundle_tar.write_bytes(self._bundle_bytes(recipe))
            local.install_bundle(rootfs, recipe, bundle_tar.read_bytes())
            step("metadata")
            text = render_definition(recipe, bundle_tar, PACKAGE_DIR)
            definition.write_text(text)
            local.write_metadata(rootfs, recipe, text)
            (out / "labels.json").write_bytes(labels_json(recipe))
            step("test")
            local.run_test(rootfs, recipe, log)
            step("squashfs")
            local.make_squashfs(rootfs, out / "image.sqfs", log, recipe.options.squashfs_level)
            step("sif")
            local.make_sif(out / "image.sqfs", definition, out / "labels.json",
                           out / "image.sif", log, SIF_ARCH.get(platform.machine(), "2"))
        return {"sif": out / "image.sif", "sqfs": out / "image.sqfs", "dir": rootfs}

    def _local_base(self, recipe: Recipe) -> Path:
        """Debian from mmdebstrap, or the site's base SIF (``localimage://``) unpacked."""
        opts = recipe.options
        sif = opts.local_base()
        if sif is None:
            return local.ensure_base(self.cache_dir, opts.suite, opts.mirror,
                                     opts.packages(recipe.spec))
        if not sif.is_file():
            raise ConfigError(f"the base image {sif} does not exist", base=opts.base)
        if opts.apt:
            raise ConfigError(
                f"the local build cannot add Debian packages {list(opts.apt)} to the site's "
                f"base {sif}; put them in the base image, or build with Apptainer",
                base=opts.base, apt=list(opts.apt),
            )
        return local.ensure_base_from_sif(self.cache_dir, sif, recipe.base_digest)

    def _build_apptainer(self, recipe: Recipe, out: Path, executable: str) -> dict[str, Path]:
        if shutil.which(executable) is None:
            raise RuntimeNotFound(
                f"{executable} is not installed; 'module load {executable}', "
                f"'spack install {executable}', or build with backend='local'",
                executable=executable,
            )
        log = out / "build.log"
        with self._steps(APPTAINER_STEPS, recipe.ref) as step:
            step("context")
            bundle_tar = out / "bundle.tar"
            bundle_tar.write_bytes(self._bundle_bytes(recipe))
            source = out / "src" / "dlhub_hpc"
            shutil.copytree(PACKAGE_DIR, source,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            definition = out / "Singularity"
            definition.write_text(render_definition(recipe, bundle_tar, source))
            step("build")
            sif = out / "image.sif"
            # Root builds directly; everyone else needs --fakeroot (user namespaces).
            argv = apptainer_build_command(executable, sif, definition,
                                           fakeroot=os.geteuid() != 0)
            local.run_step("build", argv, log)
        return {"sif": sif}


__all__ = ["BuildResult", "ImageBuilder", "apptainer_build_command", "default_cache_dir"]
