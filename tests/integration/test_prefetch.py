"""Batches sent ahead to real workers (HubConfig.prefetch): answers right and in order, a
worker killed while it holds one loses nothing, retrying only what it ran, and one held
behind a hung call is taken back for a free worker."""

from __future__ import annotations

import os
import signal
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from dlhub_hpc import Client, Hub
from dlhub_hpc.examples import example_dir

from .conftest import wait_for
from .gated import Gate, gate_line

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


def write_hanging(root: Path, gate: Path) -> Path:
    """``test/hang``: answers its worker's pid, batches of 2, inputs of any kind; an input
    whose first value is negative waits at ``gate`` first (a hung call)."""
    d = root / "hang"
    d.mkdir()
    (d / "servable.yaml").write_text(textwrap.dedent("""\
        datacite:
          title: Hangs on a negative input
          creators: ["Test, T"]
        dlhub:
          owner: test
          name: hang
        servable:
          type: python_function
          max_batch_size: 2
          methods:
            run:
              function: "hang:run"
              input: {type: any}
              output: {type: float}
        """))
    (d / "hang.py").write_text(textwrap.dedent(f"""\
        import os


        def run(x):
            if float(x[0]) < 0:
                {gate_line(gate)}
            return float(os.getpid())
        """))
    return d


def test_a_batch_ahead_of_a_hung_one_is_taken_back_and_served_by_a_free_worker(
        make_hub: Callable[..., Hub], tmp_path: Path, gates: Callable[[str], Gate]) -> None:
    path, release = gates("hang")
    hub = make_hub()
    with Client(hub.client_address, timeout=60) as client:
        name = str(client.publish(write_hanging(tmp_path, path))["name"])
        client.start_workers(name, 1)
        client.wait_for_workers(name, 1, timeout=60)
        [first] = [w["pid"] for w in client.status()["workers"]]
        assert client.run(name, np.zeros(1), cache=False) == first  # brief batches: known
        hung = client.submit(name, np.full(1, -1.0), cache=False)
        wait_for(lambda: client.status()["servables"][f"{name}@1"]["in_flight"] == 1,
                 what="the hung call running")
        waiting = [client.submit(name, x, cache=False) for x in arrays(2)]  # 64 KiB: ahead
        wait_for(lambda: _stats(client).get("batches_ahead", 0) == 1, what="a batch ahead")
        client.start_workers(name, 1)  # a free worker comes; the batch ahead is not its
        # ... until the hung batch has run past AHEAD_MAX_SECONDS: then it is taken back
        served = {f.result(timeout=60) for f in waiting}
        assert len(served) == 1 and first not in served and not hung.done()
        stats = _stats(client)
        assert stats["batches_recalled"] == 1 and stats.get("retries", 0) == 0
        release()
        assert hung.result(timeout=60) == first
        # the hung worker skipped the batch it was told was taken back: no stale result
        wait_for(lambda: client.status()["servables"][f"{name}@1"]["in_flight"] == 0,
                 what="nothing left in flight")
        assert _stats(client).get("stale_results", 0) == 0
