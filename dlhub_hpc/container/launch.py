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
from dlhub_hpc.security.keys import container_worker_access, worker_credential_file

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
    credentials: bool = True,
) -> list[str]:
    """The command that starts one worker for ``image``'s servable under ``runtime``.

    With the ``none`` runtime no image is needed: the worker runs on the host. With
    ``credentials``, the hub's worker credential (when this user has one recorded for
    ``hub``) is bound into the container (see
    :func:`dlhub_hpc.security.keys.container_worker_access`) so the worker passes the hub's
    CurveZMQ check.
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
    all_env = dict(env or {})
    all_binds = list(binds)
    if credentials and worker_credential_file(hub).exists():
        # ch-run binds are read-write only; the others get the key read-only.
        key_binds, key_env = container_worker_access(hub, read_only=rt.name != "charliecloud")
        all_binds += key_binds
        all_env.update(key_env)
    return rt.command(path, argv, env=all_env, binds=all_binds, gpu=gpu)


__all__ = ["image_for", "pick_image", "recorded_images", "worker_argv", "worker_command"]
