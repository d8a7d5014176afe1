"""Batches sent ahead to real workers (HubConfig.prefetch): answers right and in order, and
a worker killed while it holds one loses nothing, retrying only what it ran."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator

import numpy as np

from dlhub_hpc import Client, Hub
from dlhub_hpc.examples import example_dir

SMALL = {"demo/noop": {"max_batch_size": 4}}  # many small batches: a queue behind each


def arrays(n: int) -> Iterator[np.ndarray]:
    """32 KiB each: four make a batch worth sending ahead (AHEAD_MIN_BYTES)."""
    for i in range(n):
        yield np.full(4096, float(i))


def _stats(client: Client) -> dict[str, int]:
    return dict(client.status()["stats"])


def _serve(client: Client, workers: int) -> str:
    name = str(client.publish(example_dir("noop"))["name"])
    client.start_workers(name, workers)
    client.wait_for_workers(name, workers, timeout=60)
    return name


def test_a_queue_deeper_than_a_batch_goes_ahead_and_is_answered_in_order(
        make_hub: Callable[..., Hub]) -> None:
    hub = make_hub(batching=SMALL)
    with Client(hub.client_address, timeout=60) as client:
        name = _serve(client, 1)
        outs = list(client.map(name, arrays(600), in_flight=64, cache=False))
        assert [float(out[0]) for out in outs] == [float(i) for i in range(600)]
        assert _stats(client)["batches_ahead"] > 0


def test_no_batch_goes_ahead_when_the_hub_says_so(make_hub: Callable[..., Hub]) -> None:
    hub = make_hub(batching=SMALL, prefetch=False)
    with Client(hub.client_address, timeout=60) as client:
        name = _serve(client, 1)
        outs = list(client.map(name, arrays(300), in_flight=64, cache=False))
        assert [float(out[0]) for out in outs] == [float(i) for i in range(300)]
        assert _stats(client).get("batches_ahead", 0) == 0


def test_a_worker_killed_with_a_batch_ahead_loses_nothing(
        make_hub: Callable[..., Hub]) -> None:
    hub = make_hub(batching=SMALL, max_retries=1)
    with Client(hub.client_address, timeout=60) as client:
        name = _serve(client, 2)
        pids = [w["pid"] for w in client.status()["workers"]]
        outs = []
        for i, out in enumerate(client.map(name, arrays(2000), in_flight=64, cache=False)):
            outs.append(float(out[0]))
            if i == 300:  # mid-stream: both busy, each with a batch ahead
                os.kill(pids[0], signal.SIGKILL)
        assert outs == [float(i) for i in range(2000)]
        stats = _stats(client)
        assert stats["workers_lost"] == 1 and stats.get("worker_lost_errors", 0) == 0
        assert stats["batches_ahead"] > 0
        # only the batch it was running is retried: the one ahead never started
        assert stats.get("retries", 0) <= 4
