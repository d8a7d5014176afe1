"""Walltime drain and SIGTERM with real worker processes: no request fails across the boundary."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from dlhub_hpc import Client, Hub
from dlhub_hpc.pilot.command import worker_command

from .conftest import SERVABLES, wait_for

pytestmark = pytest.mark.slow

Spawn = Callable[..., subprocess.Popen[bytes]]


def worker_argv(hub: Hub, servable: str, *extra: str, mpi: bool = False) -> list[str]:
    """The worker command production builds, for a worker started by hand."""
    return worker_command(hub.worker_address, servable, heartbeat_interval=0.1, mpi=mpi,
                          extra=["--log-level", "WARNING", *extra]).argv


@pytest.fixture
def hub(make_hub: Callable[..., Hub]) -> Hub:
    # A loaded 2-core machine can starve a heartbeat thread for a while: allow 3 s.
    return make_hub(heartbeat_interval=0.1, heartbeat_timeout=3.0)


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start worker processes (``argv``, optional ``env``); kill any left at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, env={**os.environ, **(env or {})},
                                start_new_session=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:  # SIGTERM first: a clean goodbye spares the hub a wait at its stop
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)



def by_pid(client: Client) -> dict[int, dict[str, Any]]:
    return {w["pid"]: w for w in client.status()["workers"]}


def outcomes(futures: list[Future[Any]]) -> tuple[list[Any], list[BaseException]]:
    done = [f.exception(timeout=120) or f.result() for f in futures]
    return done, [d for d in done if isinstance(d, BaseException)]


def test_a_worker_drains_mid_load_and_no_request_fails(
    hub: Hub, client: Client, spawn: Spawn
) -> None:
    name = client.publish(SERVABLES / "sleepy")["name"]
    stays = spawn(worker_argv(hub, name))
    # the drain clock starts with the process: room for a loaded machine's start-up
    drains = spawn(worker_argv(hub, name, "--drain-after", "4"))
    wait_for(lambda: {stays.pid, drains.pid} <= set(by_pid(client)), what="both workers")

    # Rounds of 4 requests, two rounds in flight, until the drain and 20 rounds past it.
    futures: list[Future[Any]] = []
    rounds_after = -1
    while rounds_after < 20:
        futures += [client.submit(name, 0.05, timeout=60) for _ in range(4)]
        if len(futures) > 8:
            futures[-9].exception(timeout=60)  # the round before last is answered
        if rounds_after >= 0 or client.status()["stats"].get("workers_drained", 0):
            rounds_after += 1
        assert len(futures) < 40_000, "the worker never drained"
    results, failures = outcomes(futures)
    assert failures == [], failures[:3]
    pids = {r["pid"] for r in results}
    assert pids == {stays.pid, drains.pid}, "both served until the drain"

    assert drains.wait(timeout=30) == 0, "the drained worker exits by itself"
    wait_for(lambda: set(by_pid(client)) == {stays.pid}, what="the hub saw it leave")
    stats = client.status()["stats"]
    assert stats["workers_drained"] == 1 and stats.get("workers_lost", 0) == 0
    assert stats.get("retries", 0) == 0, "nothing had to be retried"


def test_queued_work_waits_for_the_replacement_worker(
    hub: Hub, client: Client, spawn: Spawn
) -> None:
    name = client.publish(SERVABLES / "sleepy")["name"]
    # the drain clock starts with the process, so it must outlast a loaded start-up
    old = spawn(worker_argv(hub, name, "--drain-after", "4"))
    wait_for(lambda: old.pid in by_pid(client), what="the first worker")
    held = client.submit(name, 7.0, timeout=90)  # still running when the drain comes
    wait_for(lambda: by_pid(client).get(old.pid, {}).get("state") == "busy", what="it runs")
    queued = [client.submit(name, 0.01 * i, timeout=90) for i in range(3)]
    assert old.wait(timeout=30) == 0, "it drained and left by itself"
    wait_for(lambda: old.pid not in by_pid(client), what="the hub saw it leave")
    assert client.status()["servables"][f"{name}@1"]["queued"] == 3
    assert not any(f.done() for f in queued), "queued work waits; it is neither sent nor failed"
    new = spawn(worker_argv(hub, name))  # the replacement block
    results, failures = outcomes(queued)
    assert failures == [] and held.exception(timeout=60) is None
    assert {r["pid"] for r in results} == {new.pid}
    assert client.status()["stats"].get("retries", 0) == 0


def test_sigterm_mid_batch_finishes_the_batch_then_exits(
    hub: Hub, client: Client, spawn: Spawn
) -> None:
    name = client.publish(SERVABLES / "sleepy")["name"]
    worker = spawn(worker_argv(hub, name))
    wait_for(lambda: worker.pid in by_pid(client), what="the worker")
    long = client.submit(name, 2.0, timeout=60)
    wait_for(lambda: by_pid(client)[worker.pid]["state"] == "busy", what="the batch runs")
    os.kill(worker.pid, signal.SIGTERM)
    queued = client.submit(name, 0.0, timeout=60)  # must not go to the terminating worker
    assert worker.wait(timeout=30) == 0
    assert long.result(timeout=10)["pid"] == worker.pid, "the batch it held was finished"
    wait_for(lambda: worker.pid not in by_pid(client), what="the hub saw it leave")
    assert not queued.done(), "the queued request waits for a worker"
    other = spawn(worker_argv(hub, name))
    assert queued.result(timeout=60)["pid"] == other.pid
    stats = client.status()["stats"]
    assert stats.get("retries", 0) == 0 and stats.get("replies_error", 0) == 0


def test_sigkill_mid_batch_retries_the_request_elsewhere(
    hub: Hub, client: Client, spawn: Spawn, tmp_path: Path
) -> None:
    # What a node failure or a scheduler's SIGKILL after its grace does: the hub notices the
    # missed heartbeats and gives the batch to another worker.
    name = client.publish(SERVABLES / "sleepy")["name"]
    victim = spawn(worker_argv(hub, name))
    wait_for(lambda: victim.pid in by_pid(client), what="the first worker")
    doomed = client.submit(name, 3.0, timeout=90)
    wait_for(lambda: by_pid(client)[victim.pid]["state"] == "busy", what="the batch runs")
    rescuer = spawn(worker_argv(hub, name))
    wait_for(lambda: rescuer.pid in by_pid(client), what="the second worker")
    os.killpg(victim.pid, signal.SIGKILL)
    assert doomed.result(timeout=60)["pid"] == rescuer.pid
    assert client.status()["stats"]["retries"] == 1
