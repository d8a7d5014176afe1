"""``dlhub-hpc build`` tells a hub running from its home of the image it recorded: the
broker forgets what it cached of the servable, so its pools judge it by its image from the
next request on, not after a restart."""

from __future__ import annotations

import time

import pytest

from dlhub_hpc import Client, Hub
from dlhub_hpc.cli.build import _tell_hub
from dlhub_hpc.errors import PermissionDenied
from dlhub_hpc.examples import example_dir
from dlhub_hpc.registry.images import ImageRecord, ImageStore
from tests.integration.conftest import wait_for


def cached_images(hub: Hub, name: str) -> tuple[str, ...] | None:
    """What the broker holds of ``name``'s latest version (None: nothing cached)."""
    info = hub.state._servables.get((name, None))
    return None if info is None else info.images


def test_a_build_is_seen_by_the_running_hub_at_its_next_request(
        hub: Hub, people: dict[str, Client]) -> None:
    admin, alice = people["admin"], people["alice"]
    name = str(admin.publish(example_dir("add"))["name"])
    waiting = admin.submit(name, [1.0, 2.0], timeout=30)  # no worker: it waits, and is cached
    wait_for(lambda: cached_images(hub, name) == (), what="the servable cached without images")

    image = hub.config.home / "add.sif"
    image.write_bytes(b"an image")
    record = hub.registry.get(name, 1)
    with ImageStore(hub.registry.root) as store:
        store.record(ImageRecord(name, 1, record.digest, "r" * 64, "sif", str(image),
                                 "0" * 64, time.time()))
    assert cached_images(hub, name) == ()  # recorded behind the hub's back: not seen yet

    with pytest.raises(PermissionDenied):  # only the admin tells the hub so
        alice.control("images_changed", servable=name)
    _tell_hub(hub.config.home, f"{name}@1")  # what 'dlhub-hpc build' does after a build
    wait_for(lambda: cached_images(hub, name) is None, what="the cached lookup forgotten")
    admin.submit(name, [3.0, 4.0], timeout=30)  # looked up again, with its image
    wait_for(lambda: cached_images(hub, name) == (str(image),), what="the image seen")
    waiting.cancel()
