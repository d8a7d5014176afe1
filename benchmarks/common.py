"""Pieces shared by the benchmarks: child processes, a hub process, Parsl HTEX, statistics.

Import as ``from benchmarks.common import ...``; a script run as ``python benchmarks/x.py``
first puts the repository root on ``sys.path`` (see ``latency.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing as mp
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

import psutil

logger = logging.getLogger(__name__)

CTX = mp.get_context("spawn")
REPO_ROOT = Path(__file__).resolve().parents[1]

__all__ = [
    "CTX", "REPO_ROOT", "CpuWatch", "child_process", "echo", "htex_app", "htex_config",
    "htex_path", "hub_main", "percentile", "quiet_child", "reap", "stop_process", "summary",
    "venv_on_path", "wait_for_hub",
]


# ---- statistics -----------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, nearest rank on the sorted values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(values: Sequence[float], scale: float = 1.0) -> dict[str, float]:
    """``n``, ``p50``, ``p99`` and ``mean`` of ``values``, each multiplied by ``scale``.

    ``scale=1000`` turns seconds into milliseconds, ``1e6`` into microseconds.
    """
    if not values:
        return {"n": 0, "p50": math.nan, "p99": math.nan, "mean": math.nan}
    scaled = sorted(v * scale for v in values)
    return {"n": len(scaled), "p50": statistics.median(scaled),
            "p99": percentile(scaled, 99), "mean": statistics.fmean(scaled)}


# ---- CPU used by others -----------------------------------------------------------------

class CpuWatch:
    """CPU time spent during a window: by this run's processes, and by everything else.

    This run is this process and its descendants, plus ``pids`` and processes whose command
    line holds ``marker`` (and their descendants): Parsl's ``LocalProvider`` starts blocks
    in the background of a shell that exits, so workers are not our descendants. On a small
    machine anything else running (tests, another benchmark) moves the figures; ``others``
    (in cores, e.g. 0.8 = most of one core) says how much it did.
    """

    def __init__(self, pids: Iterable[int] = (), marker: str | None = None) -> None:
        self._pids = set(pids)
        self._marker = marker
        self._started = time.monotonic()
        self._system = psutil.cpu_times()
        self._ours = self._tree_times()
        self.seconds: dict[int, float] = {}

    def _roots(self) -> list[psutil.Process]:
        roots = [psutil.Process()]
        for pid in self._pids:
            with contextlib.suppress(psutil.Error):
                roots.append(psutil.Process(pid))
        if self._marker:
            for proc in psutil.process_iter(["cmdline"]):
                if self._marker in " ".join(proc.info["cmdline"] or ()):
                    roots.append(proc)
        return roots

    def _tree_times(self) -> dict[tuple[int, float], float]:
        """CPU seconds of each process, by (pid, start time): a reused pid is another."""
        times = {}
        for root in self._roots():
            with contextlib.suppress(psutil.Error):
                for proc in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        t = proc.cpu_times()
                        times[(proc.pid, proc.create_time())] = t.user + t.system
        return times

    def stop(self) -> dict[str, float]:
        """``ours`` and ``others``: cores busy on average since the watch was made.
        ``seconds`` then holds the CPU seconds of each of this run's processes still there
        (by pid): one that ended meanwhile counts in ``others``."""
        wall = max(time.monotonic() - self._started, 1e-9)
        busy = _busy(psutil.cpu_times()) - _busy(self._system)
        self.seconds = {key[0]: t - self._ours.get(key, 0.0)
                        for key, t in self._tree_times().items()}
        ours = sum(self.seconds.values())
        return {"ours": ours / wall, "others": max(0.0, busy - ours) / wall}


def _busy(times: Any) -> float:
    """Seconds of CPU spent running something (guest time is already inside user)."""
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))


# ---- child processes ------------------------------------------------------------------

@contextlib.contextmanager
def child_process(target: Callable[..., None], *args: Any, name: str) -> Iterator[SpawnProcess]:
    """A spawned process, stopped on exit whatever happens."""
    proc = CTX.Process(target=target, args=args, name=name)
    proc.start()
    try:
        yield proc
    finally:
        stop_process(proc)


def stop_process(proc: SpawnProcess, grace: float = 10.0) -> None:
    """SIGTERM, wait ``grace`` seconds, then SIGKILL."""
    if proc.is_alive():
        proc.terminate()
        proc.join(grace)
    if proc.is_alive():
        logger.warning("%s did not stop on SIGTERM; killing it", proc.name)
        proc.kill()
        proc.join(2)


def reap(pids: Sequence[int], grace: float = 5.0) -> None:
    """Make sure none of the worker processes ``pids`` (nor their children) is still
    running. A pid that is no dlhub-hpc worker here is left alone: a sandboxed worker's pid
    in ``status`` is its pid inside the sandbox, which names another process out here."""
    procs: list[psutil.Process] = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc = psutil.Process(pid)
            if "dlhub_hpc.worker" not in proc.cmdline():
                continue
            procs += [proc, *proc.children(recursive=True)]
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        logger.warning("process %d outlived its parent's shutdown; killing it", proc.pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=2)


def quiet_child() -> None:
    """Logging for a child process: warnings and worse only."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")


# ---- a hub process --------------------------------------------------------------------

def hub_main(home: str, overrides: dict[str, Any] | None = None) -> None:
    """The hub as its own process, as ``dlhub-hpc hub start`` will run it.

    ``overrides`` are more ``HubConfig`` fields, as plain (JSON-able) values, e.g.
    ``{"batching": {"bench/oqmd_rf": {"max_batch_size": 1}}, "memo_max_bytes": 0}``; they
    may replace the default addresses (loopback TCP on free ports) too.
    """
    quiet_child()
    from dlhub_hpc import Hub, HubConfig

    fields: dict[str, Any] = {"client_address": "tcp://127.0.0.1:0",
                              "worker_address": "tcp://127.0.0.1:0"}
    fields.update(overrides or {})
    config = HubConfig(home=Path(home), **fields)
    Hub(config).serve_forever()


def wait_for_hub(home: Path, proc: SpawnProcess, timeout: float = 60.0) -> str:
    """The client address the hub wrote in ``home/hub.json`` once it listens."""
    deadline = time.monotonic() + timeout
    state = home / "hub.json"
    while time.monotonic() < deadline:
        if not proc.is_alive():
            raise RuntimeError(f"the hub process exited with status {proc.exitcode}")
        with contextlib.suppress(OSError, ValueError, KeyError):
            return str(json.loads(state.read_text())["client_address"])
        time.sleep(0.05)
    raise RuntimeError(f"the hub did not write {state} within {timeout}s")


# ---- Parsl HighThroughputExecutor -----------------------------------------------------

@contextlib.contextmanager
def hub_and_worker(home: Path, servable: Path, settings: dict[str, Any] | None = None,
                   worker_flags: Sequence[str] = ()) -> Iterator[tuple[Any, str]]:
    """A hub in this process (CurveZMQ on, tcp on loopback) with ``servable`` published
    and one warm worker of it, a process of its own started with the command a pilot
    builds (``worker_flags`` added): yields a ``Client`` and the servable's name."""
    import subprocess

    from dlhub_hpc import Client, Hub, HubConfig
    from dlhub_hpc.pilot.command import worker_command

    hub = Hub(HubConfig(home=home, client_address="tcp://127.0.0.1:0",
                        worker_address="tcp://127.0.0.1:0", **(settings or {}))).start()
    worker = None
    try:
        with Client(hub.client_address, timeout=120) as client:
            name = client.publish(servable)["name"]
            argv = worker_command(hub.worker_address, name,
                                  extra=["--log-level", "WARNING", *worker_flags]).argv
            worker = subprocess.Popen(argv, start_new_session=True)
            client.wait_for_workers(name, 1, timeout=300)
            yield client, name
    finally:
        hub.stop()
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=60)


def echo(x: Any) -> Any:
    return x


def htex_config(run_dir: Path, poll_period: int, workers: int = 1) -> Any:
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    executor = HighThroughputExecutor(
        label="htex",
        address="127.0.0.1",
        max_workers_per_node=workers,
        poll_period=poll_period,  # ms; Parsl's default is 10: a lower one is tuned
        # Parsl's default: no encryption. Compare it with the hub and the floor *without*
        # CurveZMQ (latency.py's "plain" rows); the hub's default has CurveZMQ on.
        encrypted=False,
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
    )
    return Config(executors=[executor], run_dir=str(run_dir), strategy_period=0.5,
                  usage_tracking=0, initialize_logging=False)


@contextlib.contextmanager
def htex_app(run_dir: Path, poll_period: int, func: Callable[..., Any] = echo,
             workers: int = 1) -> Iterator[Callable[..., Any]]:
    """A Parsl DFK with one HTEX; yields ``func`` as a python_app (calls return futures)."""
    import parsl

    with venv_on_path():  # HTEX starts interchange.py and process_worker_pool.py by name
        dfk = parsl.load(htex_config(run_dir, poll_period, workers))
        try:
            yield parsl.python_app(func, executors=["htex"])
        finally:
            dfk.cleanup()
            parsl.clear()


@contextlib.contextmanager
def htex_path(run_dir: Path, poll_period: int,
              workers: int = 1) -> Iterator[Callable[[Any], Any]]:
    """A Parsl DFK with one HTEX; yields ``echo(payload).result()``; cleans up on exit."""
    with htex_app(run_dir, poll_period, echo, workers) as app:
        yield lambda value: app(value).result()


@contextlib.contextmanager
def venv_on_path() -> Iterator[None]:
    """Put this interpreter's ``bin`` first on ``PATH`` (the venv may not be activated), and
    the repository root on ``PYTHONPATH``, so that processes started meanwhile (Parsl's
    worker pool) can import ``benchmarks.common`` functions sent to them by reference.
    """
    saved = {name: os.environ.get(name) for name in ("PATH", "PYTHONPATH")}
    for name, first in (("PATH", Path(sys.executable).parent), ("PYTHONPATH", REPO_ROOT)):
        os.environ[name] = os.pathsep.join(filter(None, [str(first), saved[name]]))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# ---- output -------------------------------------------------------------------------------

def save_json(path: Path, data: dict[str, Any]) -> None:
    """Write a benchmark's figures as indented JSON, making the folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def pyplot() -> Any | None:
    """``matplotlib.pyplot`` on the Agg backend, or None (with a warning) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed, so no figures: pip install matplotlib")
        return None
    return plt


def start_run(verbose: bool, script_logger: logging.Logger) -> None:
    """Logging for a benchmark script, and SIGTERM ending it like Ctrl-C does, so that
    every child process is stopped on the way out."""
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose:
        script_logger.setLevel(logging.INFO)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
