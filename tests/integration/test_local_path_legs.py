"""The same-node fast path on the legs a caller's own arrays do not open: an input the hub
read by reference goes on to a worker on the hub's node as a memfd, not through CurveZMQ."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zmq

from dlhub_hpc import Client, FileRef, Hub
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq was built without CURVE")
EXAMPLES = Path(__file__).resolve().parents[2] / "dlhub_hpc" / "examples"


def counter(client: Client, key: str) -> int:
    return int(client.status()["stats"].get(key, 0))


def test_an_input_read_by_reference_goes_to_a_local_worker_by_the_path(
        hub: Hub, client: Client, serve: Callable[..., str], tmp_path: Path) -> None:
    noop = serve(EXAMPLES / "noop")
    wait_for(lambda: hub.server.fast.workers_linked() >= 1, timeout=30,
             what="the worker's link to the hub's exchange")
    x = np.random.default_rng(3).standard_normal(2**18)  # 2 MiB: over local_min_bytes
    np.save(tmp_path / "x.npy", x)
    client.local_fast_path = False  # the caller's own leg is CurveZMQ: only the hub's differs
    before = counter(client, "local_path_out")
    y = client.run(noop, FileRef(str(tmp_path / "x.npy")), cache=False)
    assert isinstance(y, np.ndarray) and y.tobytes() == x.tobytes()
    # The batch to the worker went by the path (the reply to this caller did not).
    wait_for(lambda: counter(client, "local_path_out") >= before + 1, timeout=10,
             what="the batch counted as sent by the path")
