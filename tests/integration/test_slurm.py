"""Pilot jobs on a real one-node Slurm through Parsl's SlurmProvider.

Start, serve, scale up on queue depth and release when idle, replace a block before its
walltime with no failed request, notice a scancelled block and retry its requests, cancel.
Slurm comes from scripts/slurm/start.sh (the Makefile runs it; this module starts it itself
when it is installed, we are root, and none answers, and stops what it started).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from dlhub_hpc import Client, Hub
from dlhub_hpc.examples import example_dir
from dlhub_hpc.pilot.profiles import load_profile

from .conftest import SERVABLES, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONF = Path("/tmp/dlhub-hpc-slurm/slurm.conf")


def _slurm_answers() -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                             timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mixed", "alloc"))


@pytest.fixture(scope="module", autouse=True)
def slurm() -> Iterator[str]:
    """A Slurm that answers, with SLURM_CONF set for this process and the batch jobs."""
    daemon = shutil.which("slurmctld") or Path("/usr/sbin/slurmctld").exists()
    if shutil.which("sbatch") is None or not daemon:
        pytest.skip("Slurm is not installed (apt-get install slurm-wlm munge)")
    os.environ.setdefault("SLURM_CONF", str(DEFAULT_CONF))
    started = False
    if not (Path(os.environ["SLURM_CONF"]).exists() and _slurm_answers()):
        if os.geteuid() != 0:
            pytest.skip("no Slurm answers and starting one needs root (scripts/slurm/start.sh)")
        done = subprocess.run(["bash", str(REPO / "scripts/slurm/start.sh")],
                              capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            pytest.skip(f"could not start Slurm: {done.stderr.strip()[-400:]}")
        os.environ["SLURM_CONF"] = done.stdout.strip().split("=", 1)[1]
        started = True
    yield os.environ["SLURM_CONF"]
    _cancel_our_jobs()
    if started:
        subprocess.run(["bash", str(REPO / "scripts/slurm/stop.sh")], timeout=60, check=False)


def _our_jobs(prefix: str = "dlhub.") -> dict[str, str]:
    """Job id -> state of every job a pilot submitted (names start with ``prefix``)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True,
                         timeout=30, check=False).stdout
    jobs = {}
    for line in out.splitlines():
        job_id, name, state = line.split()
        if name.startswith(prefix):
            jobs[job_id] = state
    return jobs


def _wait_for(predicate: Callable[[], Any], timeout: float = 90.0, what: str = "") -> Any:
    # Slurm jobs take seconds to start and end: a longer default, polled less often.
    return wait_for(predicate, timeout, what, interval=0.25)


def _cancel_our_jobs() -> None:
    jobs = _our_jobs()
    if jobs:
        subprocess.run(["scancel", *jobs], timeout=30, check=False)


def _profile(**changes: Any) -> dict[str, Any]:
    data = load_profile("slurm-local").model_dump(mode="json")
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data[section][field] = value
        else:
            data[section] = value
    return data


@pytest.fixture
def slurm_hub(make_hub: Callable[..., Hub]) -> Iterator[Hub]:
    # Heartbeats loose enough for a loaded 2-core machine; the hub's stop cancels its pilots.
    hub = make_hub(heartbeat_interval=0.2, heartbeat_timeout=5.0)
    yield hub
    hub.stop()
    _cancel_our_jobs()


@pytest.fixture
def sclient(slurm_hub: Hub) -> Iterator[Client]:
    with Client(slurm_hub.client_address, timeout=120) as c:
        yield c


def _blocks(client: Client) -> list[dict[str, Any]]:
    return [b for p in client.pilot_status() for b in p["blocks"]]


def test_pilot_serves_through_slurm_and_stop_cancels(sclient: Client) -> None:
    sclient.publish(example_dir("add"))
    t0 = time.monotonic()
    info = sclient.start_pilot("demo/add", _profile(scaling__min_blocks=1))
    assert info["provider"] == "SlurmProvider"
    job = info["blocks"][0]["job_id"]
    assert job in _our_jobs()
    sclient.wait_for_workers("demo/add", 1, timeout=90)
    assert sclient.run("demo/add", [2, 3]) == 5
    print(f"pilot start to first answer on Slurm: {time.monotonic() - t0:.1f}s")
    block = _wait_for(lambda: [b for b in _blocks(sclient) if b["state"] == "RUNNING"],
                      what="the block RUNNING in pilot status")[0]
    assert block["connected"] == 1 and block["job_id"] == job
    status = sclient.status()
    assert any(w["block"] == block["block_id"] for w in status["workers"])
    assert any(b["job_id"] == job for b in status["blocks"])

    stopped = sclient.stop_pilot([info["pilot_id"]])
    assert [p["pilot_id"] for p in stopped] == [info["pilot_id"]]
    _wait_for(lambda: job not in _our_jobs(), what=f"job {job} gone from squeue")
    _wait_for(lambda: not sclient.status()["workers"], what="workers gone")
    assert sclient.pilot_status() == []


def test_hub_stop_cancels_its_pilot_jobs(slurm_hub: Hub, sclient: Client) -> None:
    sclient.publish(example_dir("add"))
    info = sclient.start_pilot("demo/add", _profile())
    job = info["blocks"][0]["job_id"]
    assert job in _our_jobs()
    slurm_hub.stop()
    _wait_for(lambda: job not in _our_jobs(), timeout=60, what=f"job {job} cancelled")


def test_scales_up_on_queue_depth_then_releases_idle_block(sclient: Client) -> None:
    name = sclient.publish(SERVABLES / "sleepy")["name"]
    profile = _profile(scaling={"min_blocks": 1, "max_blocks": 2, "queue_per_worker": 2,
                                "idle_release": 3, "period": 0.5, "start_grace": 120})
    info = sclient.start_pilot(name, profile)
    sclient.wait_for_workers(name, 1, timeout=90)
    futures = [sclient.submit(name, 0.25) for _ in range(48)]
    _wait_for(lambda: len(_blocks(sclient)) == 2, timeout=60, what="a second block")
    assert any(b["reason"] == "scaling" for b in _blocks(sclient))
    results = [f.result(timeout=180) for f in futures]
    assert len({r["pid"] for r in results}) == 2, "both blocks served requests"
    # Quiet now: the extra block is released, the floor of one stays.
    _wait_for(lambda: len(_blocks(sclient)) == 1, timeout=60, what="the idle block released")
    mine = f"dlhub.{info['pilot_id']}."  # this pilot's jobs, whatever else is queued
    _wait_for(lambda: len([s for s in _our_jobs(mine).values() if s != "COMPLETING"]) == 1,
              timeout=90, what="its job cancelled")
    events = " ".join(sclient.pilot_status()[0]["events"])
    assert "one more block" in events and "released" in events
    sclient.stop_pilot([info["pilot_id"]])


def _load(client: Client, name: str, stop: threading.Event, sink: list[Future[Any]]) -> None:
    """Requests one after another, at most four in flight, until ``stop``."""
    while not stop.is_set():
        sink.append(client.submit(name, 0.05))
        if len(sink) > 4:
            sink[-5].exception(timeout=120)


@pytest.mark.slow
def test_block_replaced_before_walltime_with_no_failed_request(sclient: Client) -> None:
    name = sclient.publish(SERVABLES / "sleepy")["name"]
    # Slurm walltimes are whole minutes: replace 35 s before the end, drain 15 s before.
    profile = _profile(provider__walltime="00:01:00",
                       walltime={"replace_lead": 35, "drain_margin": 15},
                       scaling={"min_blocks": 1, "max_blocks": 1, "period": 0.5})
    info = sclient.start_pilot(name, profile)
    first = info["blocks"][0]
    sclient.wait_for_workers(name, 1, timeout=90)
    first_pid = next(w["pid"] for w in sclient.status()["workers"]
                     if w["block"] == first["block_id"])
    futures: list[Future[Any]] = []
    stop = threading.Event()
    feeder = threading.Thread(target=_load, args=(sclient, name, stop, futures), daemon=True)
    feeder.start()
    try:
        repl = _wait_for(lambda: [b for b in _blocks(sclient) if "replaces" in b["reason"]],
                         timeout=70, what="a replacement block")[0]
        repl_pid = _wait_for(lambda: [w["pid"] for w in sclient.status()["workers"]
                                      if w["block"] == repl["block_id"]],
                             timeout=60, what="the replacement's worker connected")[0]
        takeover = time.time() - repl["submitted_at"]
        _wait_for(lambda: first["job_id"] not in _our_jobs(), timeout=90,
                  what="the first block's job ended at its walltime")
        after = len(futures)  # a little load on the replacement alone:
        _wait_for(lambda: len(futures) > after + 20 and futures[after + 20].done(),
                  timeout=60, what="20 requests answered after the first block ended")
    finally:
        stop.set()
        feeder.join(timeout=10)
    results = []
    for f in futures:
        results.append(f.result(timeout=120))  # raises on any failed request
    blocks = {b["block_id"] for b in _blocks(sclient)}
    # The replacement serves on (or, on a slow machine, has itself been replaced in turn).
    assert first["block_id"] not in blocks and blocks
    stats = sclient.status()["stats"]
    assert stats.get("replies_error", 0) == 0
    # The old block drained before its walltime: it left cleanly, nothing was retried.
    assert stats.get("workers_drained", 0) >= 1, stats
    assert stats.get("workers_lost", 0) == 0 and stats.get("retries", 0) == 0, stats
    print(f"{len(results)} requests across the walltime boundary, 0 failed; "
          f"replacement serving {takeover:.1f}s after its submission")
    pids = [r["pid"] for r in results]
    assert first_pid in pids and repl_pid in pids, "the load ran across the boundary"
    assert first_pid not in pids[after:], "its job ended: the first block served no more"
    sclient.stop_pilot([info["pilot_id"]])


def test_scancelled_block_is_noticed_and_replaced(sclient: Client) -> None:
    name = sclient.publish(SERVABLES / "sleepy")["name"]
    profile = _profile(scaling={"min_blocks": 1, "max_blocks": 1, "period": 0.5})
    info = sclient.start_pilot(name, profile)
    job = info["blocks"][0]["job_id"]
    sclient.wait_for_workers(name, 1, timeout=90)
    futures = [sclient.submit(name, 0.5) for _ in range(6)]
    _wait_for(lambda: any(w["state"] == "busy" for w in sclient.status()["workers"]),
              timeout=60, what="the block's worker runs a request")
    subprocess.run(["scancel", job], timeout=30, check=True)
    new = _wait_for(lambda: [b for b in _blocks(sclient) if b["job_id"] != job],
                    timeout=60, what="a block replacing the cancelled one")[0]
    assert new["reason"] == "scaling"
    events = " ".join(sclient.pilot_status()[0]["events"])
    assert "ended" in events or "lost all its workers" in events
    results = [f.result(timeout=120) for f in futures]  # retried on the new block if needed
    assert len(results) == 6
    assert job not in {b["job_id"] for b in _blocks(sclient)}
    sclient.stop_pilot([info["pilot_id"]])


@pytest.mark.mpi
def test_mpi_servable_runs_under_the_profiles_srun_launcher(sclient: Client) -> None:
    pytest.importorskip("mpi4py", reason="mpi4py is not installed")
    name = sclient.publish(example_dir("ensemble_mpi"))["name"]
    info = sclient.start_pilot(name, _profile(scaling__min_blocks=1))
    assert info["ranks"] == 2
    assert info["blocks"][0]["workers"] == 1, "one MPI worker of 2 ranks per block"
    sclient.wait_for_workers(name, 1, timeout=120)
    (worker,) = [w for w in sclient.status()["workers"] if w["servable"].startswith(name)]
    assert worker["ranks"] == 2
    assert sclient.run(name, None, method="member") == 0.5  # mean of member indices 0 and 1
    sclient.stop_pilot([info["pilot_id"]])


def test_gpu_binding_from_the_profile_reaches_each_worker(sclient: Client) -> None:
    # No GPU here: what is checked is the variable each worker of a block receives, chosen
    # by its Slurm local rank (srun sets SLURM_LOCALID) from the profile's device list.
    sclient.publish(example_dir("add"))
    profile = _profile(
        workers_per_node=None,
        gpus={"devices": [0, 1], "env": "CUDA_VISIBLE_DEVICES", "workers_per_gpu": 1},
    )
    profile["provider"]["launcher"] = {"type": "SrunLauncher"}
    info = sclient.start_pilot("demo/add", profile)
    assert info["gpus"]["devices"] == ["0", "1"]
    assert info["blocks"][0]["workers"] == 2
    sclient.wait_for_workers("demo/add", 2, timeout=120)
    bindings = sorted(w["gpus"] for w in sclient.status()["workers"])
    assert bindings == ["CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"]
    assert sclient.run("demo/add", [1, 1]) == 2
    sclient.stop_pilot([info["pilot_id"]])


def test_hung_block_is_noticed_by_missed_heartbeats_and_replaced(sclient: Client) -> None:
    # A frozen node: the job still RUNNING for Slurm, its worker silent (SIGSTOP stands in).
    # Its batch is retried on the other block; the silent block is cancelled and replaced.
    name = sclient.publish(SERVABLES / "sleepy")["name"]
    profile = _profile(scaling={"min_blocks": 2, "max_blocks": 2, "period": 0.5})
    info = sclient.start_pilot(name, profile)
    sclient.wait_for_workers(name, 2, timeout=120)
    futures = [sclient.submit(name, 0.5) for _ in range(4)]
    worker = _wait_for(lambda: [w for w in sclient.status()["workers"] if w["state"] == "busy"],
                       timeout=30, what="a busy worker")[0]
    os.kill(worker["pid"], signal.SIGSTOP)
    try:
        hung = next(b for b in _blocks(sclient) if b["block_id"] == worker["block"])
        _wait_for(lambda: hung["block_id"] not in {b["block_id"] for b in _blocks(sclient)},
                  timeout=90, what="the silent block dropped")
        events = " ".join(sclient.pilot_status()[0]["events"])
        assert f"{hung['block_id']} lost all its workers (missed heartbeats)" in events, events
        results = [f.result(timeout=120) for f in futures]
        assert len(results) == 4 and all(r["pid"] != worker["pid"] for r in results)
        assert sclient.status()["stats"].get("retries", 0) >= 1
        _wait_for(lambda: len(_blocks(sclient)) == 2, timeout=60, what="a replacement block")
        _wait_for(lambda: hung["job_id"] not in _our_jobs(), timeout=60,
                  what="the silent job cancelled")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker["pid"], signal.SIGKILL)
    sclient.stop_pilot([info["pilot_id"]])


@pytest.mark.container
def test_gpu_binding_reaches_workers_inside_a_container(sclient: Client) -> None:
    # bwrap over the host's own root (read-only) stands in for a site's image: the runtime
    # clears the environment, so each task's local rank must be passed in by the command.
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    sclient.publish(example_dir("add"))
    profile = _profile(
        workers_per_node=None, python=sys.executable,
        # The runtime puts a fresh /tmp in the container: a checkout or venv under /tmp
        # (as in CI) is bound back in.
        container={"runtime": "bubblewrap", "image": "/",
                   "binds": [f"{p}:{p}:ro" for p in sorted({str(REPO), sys.prefix})]},
        gpus={"devices": [0, 1], "env": "ROCR_VISIBLE_DEVICES", "vendor": "intel"},
    )
    profile["provider"]["launcher"] = {"type": "SrunLauncher"}
    info = sclient.start_pilot("demo/add", profile)
    sclient.wait_for_workers("demo/add", 2, timeout=120)
    bindings = sorted(w["gpus"] for w in sclient.status()["workers"])
    assert bindings == ["ROCR_VISIBLE_DEVICES=0", "ROCR_VISIBLE_DEVICES=1"]
    assert sclient.run("demo/add", [2, 2]) == 4
    sclient.stop_pilot([info["pilot_id"]])
