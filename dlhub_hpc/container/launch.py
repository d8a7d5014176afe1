"""A servable's image for its workers: pick the image a runtime runs, and verify it.

The image's sha256 is checked against its record before any worker runs from it
(:class:`~dlhub_hpc.errors.ImageDigestMismatch` if it changed). Checking a ``dir`` image
walks its tree (about 2 s for a 300 MB root filesystem); file images hash in well under 1 s.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from dlhub_hpc.container.runtimes import ContainerRuntime, get_runtime
from dlhub_hpc.errors import ContainerError
from dlhub_hpc.registry.images import ImageRecord, ImageStore

logger = logging.getLogger(__name__)


def pick_image(runtime: ContainerRuntime, images: Mapping[str, ImageRecord]) -> ImageRecord:
    """The first image format the runtime runs (in its order of preference) that was built."""
    for fmt in runtime.formats:
        if fmt in images:
            return images[fmt]
    if runtime.formats == ("ref",):  # podman-hpc: an OCI image in its own store
        some = next(iter(images.values()))
        tag = f"dlhub-hpc/{some.servable.replace('/', '_')}:{some.version}"
        rootfs = images["dir"].path if "dir" in images else "ROOTFS"
        how = "" if "dir" in images else (
            f"'dlhub-hpc build {some.ref} --backend local' (it records a root filesystem), "
            "then ")
        raise ContainerError(
            f"{runtime.name} runs OCI images from its own store, which 'dlhub-hpc build' "
            f"cannot make; run {how}on the site's login node 'tar -C {rootfs} -c . | "
            f"{runtime.name} import - {tag}' and '{runtime.name} migrate {tag}', and set "
            "container.image: dlhub-hpc/{name}:{version} in a copy of the profile",
            runtime=runtime.name, built=sorted(images), servable=some.ref)
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


def image_for(registry_root: Path, servable: str, version: int,
              runtime: ContainerRuntime | str) -> str:
    """The verified path of ``servable@version``'s image in a format ``runtime`` runs.

    For pilots: call once per block, then put the path in each worker's command.
    """
    rt = get_runtime(runtime) if isinstance(runtime, str) else runtime
    images = recorded_images(registry_root, servable, version)
    if not images:
        raise ContainerError(
            f"no image of {servable}@{version} is recorded; build one with "
            f"'dlhub-hpc build {servable}@{version}'", servable=servable, version=version,
        )
    return pick_image(rt, images).verify()


def check_recorded(registry_root: Path, servable: str, version: int, path: str) -> None:
    """Verify ``path`` against its record if it is an image built for ``servable@version``.

    ``ImageDigestMismatch`` if it changed since; an image the site provides (not built
    here, so not recorded) passes unchecked.
    """
    wanted = Path(path).resolve()
    for rec in recorded_images(registry_root, servable, version).values():
        if Path(rec.path).resolve() == wanted:
            rec.verify()


def runnable_image(runtime: ContainerRuntime | str, image: ImageRecord,
                   verify: bool = True) -> str:
    """The path of ``image`` for a worker under ``runtime`` on this machine: the runtime is
    installed, runs its format, and (with ``verify``) the image still matches its digest.

    Put it in :func:`dlhub_hpc.pilot.command.worker_command`'s ``Container``.
    """
    rt = get_runtime(runtime) if isinstance(runtime, str) else runtime
    rt.require()
    if image.format not in rt.formats:
        raise ContainerError(
            f"the {rt.name} runtime cannot run a {image.format} image; it runs {rt.formats}"
        )
    return image.verify() if verify else image.path


__all__ = ["check_recorded", "image_for", "pick_image", "recorded_images", "runnable_image"]
