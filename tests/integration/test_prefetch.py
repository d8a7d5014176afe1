"""Batches sent ahead to real workers (HubConfig.prefetch): answers right and in order, and
a worker killed while it holds one loses nothing, retrying only what it ran."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from dlhub_hpc import Client, Hub
from dlhub_hpc.examples import example_dir

SMALL = {"demo/add": {"max_batch_size": 4}}  # many small batches: a queue behind each


def _stats(client: Client) -> dict[str, int]:
    return dict(client.status()["stats"])


def test_a_queue_deeper_than_a_batch_goes_ahead_and_is_answered_in_order(
        make_hub: Callable[..., Hub]) -> None:
    hub = make_hub(batching=SMALL)
    with Client(hub.client_address, timeout=60) as client:
        name = str(client.publish(example_dir("add"))["name"])
        client.start_workers(name, 1)
        client.wait_for_workers(name, 1, timeout=60)
        outs = list(client.map(name, ([float(i), 0.5] for i in range(600)), in_flight=64))
        assert outs == [i + 0.5 for i in range(600)]
        assert _stats(client)["batches_ahead"] > 0


def test_no_batch_goes_ahead_when_the_hub_says_so(make_hub: Callable[..., Hub]) -> None:
    hub = make_hub(batching=SMALL, prefetch=False)
    with Client(hub.client_address, timeout=60) as client:
        name = str(client.publish(example_dir("add"))["name"])
        client.start_workers(name, 1)
        client.wait_for_workers(name, 1, timeout=60)
        outs = list(client.map(name, ([float(i), 0.5] for i in range(300)), in_flight=64))
        assert outs == [i + 0.5 for i in range(300)]
        assert _stats(client).get("batches_ahead", 0) == 0


def test_a_worker_killed_with_a_batch_ahead_loses_nothing(
        make_hub: Callable[..., Hub]) -> None:
    hub = make_hub(batching=SMALL, max_retries=1)
    with Client(hub.client_address, timeout=60) as client:
        name = str(client.publish(example_dir("add"))["name"])
        client.start_workers(name, 2)
        client.wait_for_workers(name, 2, timeout=60)
        pids = [w["pid"] for w in client.status()["workers"]]
        outs = []
        for i, out in enumerate(client.map(name, ([float(i), 0.5] for i in range(2000)),
                                           in_flight=64)):
            outs.append(out)
            if i == 300:  # mid-stream: both busy, each with a batch ahead
                os.kill(pids[0], signal.SIGKILL)
        assert outs == [i + 0.5 for i in range(2000)]
        stats = _stats(client)
        assert stats["workers_lost"] == 1 and stats.get("worker_lost_errors", 0) == 0
        # only the batch it was running is retried: the one ahead never started
        assert stats.get("retries", 0) <= 4
