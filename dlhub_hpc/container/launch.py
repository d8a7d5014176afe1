"""Start workers from a servable's image: pick the image a runtime runs, verify, build argv.

The image's sha256 is checked against its record before any worker runs from it
(:class:`~dlhub_hpc.errors.ImageDigestMismatch` if it changed). Checking a ``dir`` image
walks its tree (about 2 s for a 300 MB root filesystem); file images hash in well under 1 s.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from dlhub_hpc.container.definition import BUNDLES_DIR
from dlhub_hpc.container.runtimes import ContainerRuntime, get_runtime
from dlhub_hpc.errors import ContainerError
from dlhub_hpc.registry.images import ImageRecord, ImageStore

logger = logging.getLogger(__name__)


def pick_image(runtime: ContainerRuntime, images: Mapping[str, ImageRecord]) -> ImageRecord:
    """The first image format the runtime runs (in its order of preference) that was built."""
    for fmt in runtime.formats:
        if fmt in images:
            return images[fmt]
    raise ContainerError(
        f"the {runtime.name} runtime runs {list(runtime.formats)} images, but only "
        f"{sorted(images)} were built; use another runtime or build on a machine with "
        f"{runtime.name}",
        runtime=runtime.name, built=sorted(images),
    )


def recorded_images(registry_root: Path, servable: str, version: int) -> dict[str, ImageRecord]:
    """The newest recorded image of each format for ``servable@version``."""
    with ImageStore(registry_root) as store:
        found: dict[str, ImageRecord] = {}
        for rec in store.find(servable, version):
            found.setdefault(rec.format, rec)
    return found


def worker_argv(hub: str, servable: str, *, in_image: bool = True,
                extra: Sequence[str] = ()) -> list[str]:
    """``python3 -m dlhub_hpc.worker`` for inside an image (or this interpreter, on the host)."""
    python = "python3" if in_image else sys.executable
    argv = [python, "-m", "dlhub_hpc.worker", "--hub", hub, "--servable", servable]
    if in_image:
        # The bundle is baked into the image, where the worker's bundle cache looks first.
        argv += ["--cache-dir", BUNDLES_DIR]
    return [*argv, *extra]


def worker_command(
    runtime: ContainerRuntime | str,
    image: ImageRecord | None,
    hub: str,
    *,
    servable: str | None = None,
    env: Mapping[str, str] | None = None,
    binds: Sequence[str] = (),
    gpu: str | None = None,
    extra: Sequence[str] = (),
    verify: bool = True,
) -> list[str]:
    """The command that starts one worker for ``image``'s servable under ``runtime``.

    With the ``none`` runtime no image is needed: the worker runs on the host.
    """
    rt = get_runtime(runtime) if isinstance(runtime, str) else runtime
    if rt.name == "none":
        if servable is None and image is None:
            raise ContainerError("worker_command needs a servable or an image")
        ref = servable or (image.ref if image else "")
        return rt.command("", worker_argv(hub, ref, in_image=False, extra=extra), env=env or {})
    if image is None:
        raise ContainerError(f"the {rt.name} runtime needs an image; build one first")
    rt.require()
    if image.format not in rt.formats:
        raise ContainerError(
            f"the {rt.name} runtime cannot run a {image.format} image; it runs {rt.formats}"
        )
    path = image.verify() if verify else image.path
    argv = worker_argv(hub, servable or image.ref, extra=extra)
    return rt.command(path, argv, env=env or {}, binds=binds, gpu=gpu)


__all__ = ["pick_image", "recorded_images", "worker_argv", "worker_command"]
