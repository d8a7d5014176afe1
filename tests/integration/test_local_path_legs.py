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
MAKER = Path(__file__).resolve().parent / "servables" / "maker"


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


def test_a_linked_clients_large_output_of_a_small_input_comes_by_the_path(
        hub: Hub, client: Client, serve: Callable[..., str]) -> None:
    maker = serve(MAKER)
    wait_for(lambda: hub.server.fast.workers_linked() >= 1, timeout=30,
             what="the worker's link to the hub's exchange")
    assert client.open_local_path()
    before = counter(client, "local_path_out")
    n = 2**20  # 8 MiB of float64 from a few bytes of input
    ran = client.run(maker, {"n": n, "fill": 2.0})
    submitted = client.submit(maker, {"n": n, "fill": 3.0}).result(timeout=60)
    for y, fill in ((ran, 2.0), (submitted, 3.0)):
        assert y.shape == (n,) and y[0] == fill and y[-1] == -1.0
        assert not y.flags.writeable  # a map of the worker's sealed memfd: no copy came
    wait_for(lambda: counter(client, "local_path_out") >= before + 2, timeout=10,
             what="both replies counted as sent by the path")
    # Another client of the same identity, without a link, gets its output as before.
    with Client(hub.client_address, timeout=60) as other:
        other.local_fast_path = False
        plain = other.run(maker, {"n": n, "fill": 4.0})
    assert plain.flags.writeable and plain[0] == 4.0
