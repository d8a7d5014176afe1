"""What a pool's workers cannot give a servable, with real processes: a version of a package
other than the one installed, or the image 'dlhub-hpc build' made for it. Such a servable
gets no pooled worker (its callers' deadlines say no worker serves it) and ``status`` says
why; the rest of the pool serves on."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.servables.scaled import write_scaled
from dlhub_hpc import Client
from dlhub_hpc.cli.pools import pool_workers
from dlhub_hpc.errors import Timeout
from dlhub_hpc.hub import Hub
from dlhub_hpc.registry.images import ImageRecord, ImageStore
from dlhub_hpc.servable.pools import PoolSpec

from .conftest import wait_for


def publish(client: Client, root: Path, i: int, numpy_pin: str | None = None) -> str:
    """``envtest-i`` (``(i + 1) * sum(x)``), pinning numpy as given."""
    d = write_scaled(root, f"envtest-{i}", float(i + 1), 8, "envtest", owner="test")
    if numpy_pin is not None:
        spec = d / "servable.yaml"
        spec.write_text(spec.read_text().replace(
            f"  name: envtest-{i}\n",
            f"  name: envtest-{i}\n  dependencies: {{numpy: '{numpy_pin}'}}\n"))
    return str(client.publish(d)["name"])


def test_a_pool_refuses_an_unmet_pin_and_an_own_image_and_says_why(
        client: Client, hub: Hub, tmp_path: Path) -> None:
    exact = publish(client, tmp_path, 0, np.__version__)  # what is installed
    latest = publish(client, tmp_path, 1, "")  # DLHub's "latest"
    unmet = publish(client, tmp_path, 2, "<1.0")
    imaged = publish(client, tmp_path, 3)
    image = tmp_path / "envtest-3.sif"
    with ImageStore(hub.config.home) as store:  # as 'dlhub-hpc build' records one
        store.record(ImageRecord(imaged, 1, "bundle", "recipe", "sif", str(image), "0" * 64,
                                 time.time()))
    ref = PoolSpec.parse("tag:envtest").ref()
    client.start_workers(ref, 1)  # no container: no image of anyone's own
    wait_for(lambda: pool_workers(client.status(), ref) == 1, what="1 pooled worker")

    assert client.run(exact, [1.0, 2.0], cache=False) == 3.0  # its Ready says numpy's version
    assert client.run(latest, [1.0], cache=False) == 2.0
    for name in (unmet, imaged):
        with pytest.raises(Timeout, match="no worker serves"):
            client.run(name, [1.0], timeout=1.0)
    why = client.status()["pools"]["own_workers"]
    assert why[f"{unmet}@1"] == (f"it pins numpy <1.0 but the worker has numpy "
                                 f"{np.__version__} installed")
    assert "it has its own image (built with 'dlhub-hpc build')" in why[f"{imaged}@1"]
    assert f"pilot start --servable {imaged}@1" in why[f"{imaged}@1"]
    assert set(why) == {f"{unmet}@1", f"{imaged}@1"}
    assert client.run(exact, [2.0], cache=False) == 2.0  # the pool serves on
    client.stop_workers(servable=ref)
