"""Soak: a pilot-served servable under a long stream of requests while its workers are killed.

    python benchmarks/soak.py                       # 1,000,000 requests, a kill every 20-40 s
    python benchmarks/soak.py --requests 20000 --kill-every 5,10 --walltime 30 --plot soak.png

A hub runs in its own process (``Hub(...).serve_forever()`` on a temporary home, CurveZMQ
on). ``demo/add`` is published and served by a pilot started through the client from a
local site profile given as data: LocalProvider blocks of ``--workers`` workers with a
``--walltime`` of a few minutes, so blocks drain and are replaced at walltime during the
run. ``--concurrency`` callers (one ``Client`` each, ``submit`` with ``cache=False`` so every
request reaches a worker) send request ``i`` as ``[i, 0.25]``; only ``i + 0.25`` is a right
answer, so each answer proves which request it belongs to. A killer thread SIGKILLs a
random live worker (its pid from the hub's status) every MIN-MAX seconds.

Progress lines and the final report give sent / answered / wrong / duplicated / lost,
errors by type, workers killed, blocks replaced at walltime, and the hub's RSS over time.
A request is lost when it has no answer ``--deadline`` seconds after the last one was sent.
The exit status is 1 if any request was lost, wrong or duplicated, or the hub died.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

import psutil

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import child_process, hub_main, pyplot, save_json, wait_for_hub
from dlhub_hpc import Client
from dlhub_hpc.errors import DlhubHpcError
from dlhub_hpc.examples import example_dir

logger = logging.getLogger(__name__)

SERVABLE = "demo/add"
OFFSET = 0.25  # request i sends [i, OFFSET]; its one right answer is i + OFFSET
LIVE_STATES = ("idle", "busy")


@dataclass
class SoakSettings:
    """One soak run. ``kill_at``: kill a worker when this many requests were answered
    (instead of the ``kill_every`` timer); ``min_crossings``: send past ``requests`` until
    this many blocks were replaced at walltime and have left."""

    requests: int = 1_000_000
    kill_every: tuple[float, float] = (20.0, 40.0)
    walltime: int = 120
    concurrency: int = 4
    window: int = 256  # requests in flight per caller
    workers: int = 2  # per block
    max_blocks: int = 1
    deadline: float = 600.0
    sample_every: float = 5.0
    heartbeat_interval: float = 0.5
    heartbeat_timeout: float = 3.0
    kill_at: list[int] = field(default_factory=list)
    min_crossings: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.walltime < 4:
            raise ValueError("--walltime must be at least 4 seconds")
        if not 0 < self.kill_every[0] <= self.kill_every[1]:
            raise ValueError("--kill-every must be MIN,MAX with 0 < MIN <= MAX")
        if self.concurrency * self.window >= 10_000:
            raise ValueError("concurrency x window must stay under the hub's queue bound")


def soak_profile(s: SoakSettings) -> dict[str, Any]:
    """A local site profile, as data, whose blocks have a walltime of ``s.walltime`` s."""
    lead = min(s.walltime / 2, 120.0)  # the replacement starts; drain at half of that
    hours, rest = divmod(int(s.walltime), 3600)
    return {
        "name": "soak-local",
        "description": "LocalProvider blocks with a short walltime, for the soak",
        "provider": {"type": "LocalProvider", "walltime": f"{hours:02d}:{rest // 60:02d}:"
                     f"{rest % 60:02d}", "launcher": {"type": "SingleNodeLauncher",
                                                      "debug": False}},
        "workers_per_node": s.workers,
        "hub": {"address": "127.0.0.1"},
        "scaling": {"min_blocks": 1, "max_blocks": s.max_blocks, "queue_per_worker": 64,
                    "idle_release": 600, "period": 0.5, "start_grace": 120},
        "walltime": {"replace_lead": lead, "drain_margin": lead / 2},
    }


class Tally:
    """What happened to each request, filled by the futures' callbacks."""

    def __init__(self, marks: Sequence[int] = ()) -> None:
        self._lock = threading.Lock()
        self.sent = self.answered = self.wrong = self.crossed = self.duplicated = 0
        self.errors: Counter[str] = Counter()
        self.examples: list[str] = []  # the first few wrong answers and errors, as text
        self.outstanding: dict[int, Future[Any]] = {}
        self._seen = bytearray()
        self._frozen: list[int] | None = None  # the lost, once counted
        self.marks = {m: threading.Event() for m in marks}

    @property
    def resolved(self) -> int:
        return self.answered + sum(self.errors.values())

    def track(self, i: int, future: Future[Any]) -> None:
        with self._lock:
            self.sent += 1
            self.outstanding[i] = future
            if i >= len(self._seen):
                self._seen.extend(bytes(max(i + 1 - len(self._seen), 65536)))
        future.add_done_callback(lambda f: self._done(i, f))  # may run now, unlocked

    def _done(self, i: int, future: Future[Any]) -> None:
        exc = future.exception()
        value = None if exc is not None else future.result()
        with self._lock:
            if self._frozen is not None:
                return  # counted as lost already (closing the clients fails what is left)
            self.outstanding.pop(i, None)
            if self._seen[i]:
                self.duplicated += 1
            self._seen[i] = 1
            if exc is not None:
                self.errors[type(exc).__name__] += 1
                self._example(f"request {i}: {type(exc).__name__}: {exc}")
            else:
                self.answered += 1
                if value != i + OFFSET:
                    self.wrong += 1
                    other = value - OFFSET if isinstance(value, float) else None
                    if other is not None and other.is_integer() and self._known(int(other)):
                        self.crossed += 1  # another request's answer
                    self._example(f"request {i}: answer {value!r}, expected {i + OFFSET}")
            answered = self.answered
        for mark, reached in self.marks.items():
            if answered >= mark and not reached.is_set():
                reached.set()

    def _known(self, j: int) -> bool:
        return 0 <= j < len(self._seen)

    def _example(self, text: str) -> None:
        if len(self.examples) < 10:
            self.examples.append(text)

    def lost(self) -> list[int]:
        """Requests with no answer yet; after :meth:`freeze`, those that had none then."""
        with self._lock:
            return self._frozen if self._frozen is not None else sorted(self.outstanding)

    def freeze(self) -> None:
        """Count what is unanswered now as lost, and ignore any later resolution."""
        with self._lock:
            self._frozen = sorted(self.outstanding)


class Feed:
    """Hands out request indices: ``requests`` of them, then more while ``more()`` holds."""

    def __init__(self, requests: int, more: Callable[[], bool]) -> None:
        self._next = 0
        self._requests = requests
        self._more = more
        self._lock = threading.Lock()
        self.stop = threading.Event()

    def take(self) -> int | None:
        if self.stop.is_set():
            return None
        with self._lock:
            if self._next >= self._requests and not self._more():
                return None
            i, self._next = self._next, self._next + 1
            return i


def caller(client: Client, feed: Feed, tally: Tally, window: int) -> None:
    """Send requests from ``feed``, with at most ``window`` of them unanswered."""
    slots = threading.Semaphore(window)
    while (i := feed.take()) is not None:
        while not slots.acquire(timeout=0.5):
            if feed.stop.is_set():
                return
        try:
            future = client.submit(SERVABLE, [float(i), OFFSET], timeout=None, cache=False)
        except DlhubHpcError as exc:  # the client refused to send it: counted, not lost
            future = Future()
            future.set_exception(exc)
        future.add_done_callback(lambda _f: slots.release())
        tally.track(i, future)


def worker_pid_ok(pid: int, port: str) -> bool:
    """Is ``pid`` a worker of this soak's hub (never kill anything else)?"""
    try:
        cmd = psutil.Process(pid).cmdline()
    except psutil.Error:
        return False
    return "dlhub_hpc.worker" in cmd and any(port in arg for arg in cmd)


class Observer:
    """Samples the hub: process alive, RSS, workers, stats, pilot blocks; kills workers."""

    def __init__(self, client: Client, hub: SpawnProcess, worker_port: str,
                 settings: SoakSettings, tally: Tally) -> None:
        self.client = client
        self.hub = hub
        self.port = worker_port
        self.settings = settings
        self.tally = tally
        self.started = time.monotonic()
        self.stop = threading.Event()
        self.hub_died = False
        self.rss: list[tuple[float, float]] = []  # (seconds since start, MiB)
        self.kills: list[dict[str, Any]] = []
        self.kill_skips = 0
        self.replacements: set[str] = set()  # blocks started to replace one at walltime
        self.replaced: set[str] = set()  # blocks a replacement was started for
        self.left: set[str] = set()  # replaced blocks that have since ended
        self.stats: dict[str, Any] = {}
        self.status_failures = 0
        self.rng = random.Random(settings.seed)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def crossings(self) -> int:
        """Blocks replaced at walltime that have left, at most as many as workers drained
        (a replaced block whose workers were all killed left without crossing)."""
        return min(len(self.left), int(self.stats.get("workers_drained", 0)))

    def sample(self) -> None:
        if not self.hub.is_alive():
            self.hub_died = True
            self.stop.set()
            return
        with contextlib.suppress(psutil.Error):
            rss = psutil.Process(self.hub.pid).memory_info().rss / 2**20
            self.rss.append((round(self.elapsed(), 1), round(rss, 1)))
        try:
            self.stats = self.client.status()["stats"]
            blocks = [b for p in self.client.pilot_status() for b in p["blocks"]]
        except DlhubHpcError as exc:
            self.status_failures += 1
            logger.warning("status failed: %s", exc)
            return
        now = {b["block_id"] for b in blocks}
        self.left |= self.replaced - now
        for b in blocks:
            if b["reason"].startswith("replaces"):
                self.replacements.add(b["block_id"])
            if b["replaced"]:
                self.replaced.add(b["block_id"])

    def watch(self, progress_every: float) -> None:
        """Sample every ``sample_every`` s, print a progress line every ``progress_every``."""
        last = 0.0
        while not self.stop.wait(self.settings.sample_every):
            self.sample()
            if self.elapsed() - last >= progress_every:
                last = self.elapsed()
                print(self.progress_line(), flush=True)

    def progress_line(self) -> str:
        t = self.tally
        rss = self.rss[-1][1] if self.rss else float("nan")
        errors = ",".join(f"{k}={v}" for k, v in sorted(t.errors.items())) or "0"
        return (f"[{self.elapsed():7.0f}s] sent={t.sent} answered={t.answered} wrong={t.wrong}"
                f" dup={t.duplicated} open={len(t.outstanding)} errors={errors}"
                f" killed={len(self.kills)} walltime_replaced={len(self.replacements)}"
                f" hub_rss={rss:.0f}MiB")

    def kill_one(self) -> dict[str, Any] | None:
        """SIGKILL a random live worker of the soak's servable, a busy one if any."""
        try:
            workers = [w for w in self.client.status()["workers"]
                       if w["state"] in LIVE_STATES and w["servable"].startswith(SERVABLE + "@")]
        except DlhubHpcError as exc:
            logger.warning("no status to pick a worker from: %s", exc)
            workers = []
        busy = [w for w in workers if w["state"] == "busy"]
        for w in self.rng.sample(busy, len(busy)) + self.rng.sample(workers, len(workers)):
            if worker_pid_ok(int(w["pid"]), self.port):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(w["pid"]), signal.SIGKILL)
                    kill = {"t": round(self.elapsed(), 1), "pid": w["pid"], "block": w["block"],
                            "state": w["state"], "answered": self.tally.answered}
                    self.kills.append(kill)
                    logger.info("killed worker %s (block %s, %s)", w["pid"], w["block"],
                                w["state"])
                    return kill
        self.kill_skips += 1
        return None

    def killer(self) -> None:
        """Kill at the answered-count marks, else every ``kill_every`` seconds."""
        marks = sorted(self.tally.marks)
        if marks:
            for mark in marks:
                while not self.tally.marks[mark].wait(0.2):
                    if self.stop.is_set():
                        return
                self.kill_one()
            return
        lo, hi = self.settings.kill_every
        while not self.stop.wait(self.rng.uniform(lo, hi)):
            self.kill_one()


def _start_pilot(client: Client, s: SoakSettings) -> dict[str, Any]:
    client.publish(example_dir("add"))
    info = client.start_pilot(SERVABLE, soak_profile(s))
    client.wait_for_workers(SERVABLE, s.workers, timeout=180)
    return info


def _drive(clients: list[Client], tally: Tally, obs: Observer, s: SoakSettings) -> float:
    """Send everything, then wait for the answers; returns the seconds spent sending."""
    feed = Feed(s.requests, lambda: obs.crossings() < s.min_crossings and not obs.stop.is_set())
    callers = [threading.Thread(target=caller, args=(c, feed, tally, s.window),
                                name=f"soak-caller-{n}", daemon=True)
               for n, c in enumerate(clients)]
    t0 = time.monotonic()
    for t in callers:
        t.start()
    last, moved = -1, time.monotonic()
    while any(t.is_alive() for t in callers):
        time.sleep(0.5)
        if tally.resolved != last:
            last, moved = tally.resolved, time.monotonic()
        if obs.stop.is_set() or time.monotonic() - moved > s.deadline:
            logger.error("no answer for %.0fs (or the hub died): sending stops", s.deadline)
            feed.stop.set()
    for t in callers:
        t.join()
    sending = time.monotonic() - t0
    deadline = time.monotonic() + s.deadline
    while tally.outstanding and time.monotonic() < deadline and obs.hub.is_alive():
        time.sleep(0.2)
    return sending


def run_soak(s: SoakSettings, home: Path, progress_every: float = 30.0) -> dict[str, Any]:
    """Run one soak with a hub in ``home``; returns the report (see :func:`report`)."""
    overrides = {"heartbeat_interval": s.heartbeat_interval,
                 "heartbeat_timeout": s.heartbeat_timeout}
    tally = Tally(s.kill_at)
    with child_process(hub_main, str(home), overrides, name="soak-hub") as hub:
        address = wait_for_hub(home, hub)
        worker_port = str(_hub_worker_address(home)).rsplit(":", 1)[1]
        with Client(address, timeout=None) as admin:
            info = _start_pilot(admin, s)
            obs = Observer(admin, hub, worker_port, s, tally)
            threads = [threading.Thread(target=obs.watch, args=(progress_every,), daemon=True),
                       threading.Thread(target=obs.killer, daemon=True)]
            for t in threads:
                t.start()
            clients = [Client(address, timeout=None) for _ in range(s.concurrency)]
            try:
                sending = _drive(clients, tally, obs, s)
            finally:
                tally.freeze()
                obs.stop.set()
                for t in threads:
                    t.join(timeout=30)
                for c in clients:
                    c.close()
            obs.sample()
            obs.hub_died = obs.hub_died or not hub.is_alive()
            if not obs.hub_died:
                with contextlib.suppress(DlhubHpcError):
                    admin.stop_pilot([info["pilot_id"]])
    return report(s, tally, obs, sending)


def _hub_worker_address(home: Path) -> str:
    import json

    return str(json.loads((home / "hub.json").read_text())["worker_address"])


def report(s: SoakSettings, tally: Tally, obs: Observer, sending: float) -> dict[str, Any]:
    """The soak's figures, as plain data."""
    stats = obs.stats
    hub_replies = sum(int(stats.get(k, 0)) for k in ("replies_ok", "replies_error", "rejected"))
    lost = tally.lost()
    rss = [m for _, m in obs.rss]
    return {
        "settings": {**asdict(s), "kill_every": list(s.kill_every)},
        "sent": tally.sent, "answered": tally.answered, "wrong": tally.wrong,
        "crossed": tally.crossed, "duplicated": tally.duplicated,
        # A reply the hub sent beyond one per request it received (the client drops those).
        "hub_extra_replies": max(0, hub_replies - int(stats.get("requests", 0))),
        "lost": len(lost), "lost_examples": lost[:10],
        "errors": dict(tally.errors), "examples": tally.examples,
        "workers_killed": len(obs.kills), "kill_skips": obs.kill_skips, "kills": obs.kills,
        "blocks_replaced_at_walltime": len(obs.replacements),
        "walltime_crossings": obs.crossings(),
        "hub_deaths": int(obs.hub_died), "status_failures": obs.status_failures,
        "hub_stats": {k: stats.get(k, 0) for k in (
            "requests", "replies_ok", "replies_error", "batches", "workers_registered",
            "workers_lost", "workers_drained", "workers_exited", "retries",
            "worker_lost_errors", "stale_results", "timeouts", "overloaded")},
        "hub_rss_mib": {"start": rss[0] if rss else None, "peak": max(rss, default=None),
                        "end": rss[-1] if rss else None},
        "rss_samples": obs.rss,
        "sending_s": round(sending, 1), "duration_s": round(obs.elapsed(), 1),
        "requests_per_s": round(tally.sent / max(sending, 1e-9), 1),
    }


def failed(result: dict[str, Any]) -> bool:
    """A lost, wrong or duplicated request, or a hub death."""
    return bool(result["lost"] or result["wrong"] or result["duplicated"]
                or result["hub_extra_replies"] or result["hub_deaths"])


def print_report(result: dict[str, Any]) -> None:
    keys = ("sent", "answered", "wrong", "crossed", "duplicated", "hub_extra_replies", "lost",
            "workers_killed", "kill_skips", "blocks_replaced_at_walltime",
            "walltime_crossings", "hub_deaths", "sending_s", "requests_per_s")
    print("\n== soak report ==")
    for k in keys:
        print(f"{k:>28}: {result[k]}")
    print(f"{'errors by type':>28}: {result['errors'] or 'none'}")
    print(f"{'hub counters':>28}: {result['hub_stats']}")
    for text in result["examples"]:
        print(f"{'':>28}  {text}")
    print(f"\nhub RSS over time (MiB): {result['hub_rss_mib']}")
    samples = result["rss_samples"]
    step = max(1, len(samples) // 12)
    print(f"{'t (s)':>10} {'RSS (MiB)':>10}")
    for t, mib in samples[::step] + ([samples[-1]] if samples[::step][-1:] != samples[-1:]
                                     else []):
        print(f"{t:>10.0f} {mib:>10.1f}")
    print("RESULT:", "FAIL" if failed(result) else "PASS")


def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    if plt is None or not result["rss_samples"]:
        return
    t, mib = zip(*result["rss_samples"], strict=True)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(t, mib, label="hub RSS")
    for k in result["kills"]:
        ax.axvline(k["t"], color="red", alpha=0.3, linewidth=0.8)
    ax.set_xlabel("seconds")
    ax.set_ylabel("MiB")
    ax.set_title(f"soak: {result['sent']} requests, {result['workers_killed']} workers killed "
                 "(red)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pair(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(",")
    return float(lo), float(hi or lo)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/soak.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=1_000_000)
    p.add_argument("--kill-every", type=_pair, default=(20.0, 40.0), metavar="MIN,MAX",
                   help="seconds between worker kills, drawn uniformly (default 20,40)")
    p.add_argument("--walltime", type=int, default=120,
                   help="seconds of walltime per pilot block (default 120)")
    p.add_argument("--concurrency", type=int, default=4, help="callers (default 4)")
    p.add_argument("--window", type=int, default=256, help="requests in flight per caller")
    p.add_argument("--workers", type=int, default=2, help="workers per block (default 2)")
    p.add_argument("--deadline", type=float, default=600.0,
                   help="seconds to wait for the last answers before counting them lost")
    p.add_argument("--progress-every", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    p.add_argument("--plot", type=Path, default=None, help="PNG of the hub's RSS over time")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verbose:
        logger.setLevel(logging.INFO)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    settings = SoakSettings(requests=args.requests, kill_every=args.kill_every,
                            walltime=args.walltime, concurrency=args.concurrency,
                            window=args.window, workers=args.workers, deadline=args.deadline,
                            seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="dlhub-soak-") as tmp:
        result = run_soak(settings, Path(tmp), args.progress_every)
    print_report(result)
    if args.json is not None:
        save_json(args.json, result)
    if args.plot is not None:
        plot(result, args.plot)
    return 1 if failed(result) else 0


if __name__ == "__main__":
    sys.exit(main())
