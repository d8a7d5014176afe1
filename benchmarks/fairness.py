"""Fair under contention: one caller's flood against another caller's single requests.

    python benchmarks/fairness.py [--requests 100] [--rounds 3] [--backlog 2000]

One hub process (CurveZMQ on, memoization off) and three identities besides the admin's:
a *victim*, who sends one request at a time (``Client.run``, ``cache=False``) and times
each, and a *flooder*, a process of its own (so its client does not share this one's
interpreter) that keeps ``--backlog`` requests outstanding with ``Client.submit`` and
submits one more as each is answered. Every servable sleeps ``--cost`` (1 ms) per item and
answers ``sum(x)``; the hub's batching override caps its batches at ``--batch`` (4) items,
so a flood builds a real queue and cannot all leave in one batch. Three scenarios, each in
alternating rounds of the victim alone, the flooder alone (a ``--window`` of its req/s),
and the victim while the flood holds the queue full:

- **users**: both call one servable with 2 dedicated workers; its queue holds a deque per
  user, left in deficit round robin (``broker/fairshare.py``, ``FairQueue``).
- **pool**: 2 pooled workers (``tag:fairpool``) serve two servables of one owner; the
  flooder floods X, the victim calls Y; a freed pooled worker takes the servables in turns
  (``pick_flow``).
- **admission**: a servable with a queue bound of ``--queue-limit`` (200, HubConfig
  ``queue_limits``) and 2 dedicated workers; the flooder holds the bound full, and the
  victim counts the ``QueueFull`` it gets (``QueueShares``: a caller below its share of the
  bound is admitted past a queue another filled). A refused flooder waits for one of its
  own to be answered before it sends again, as a polite client backs off.

Each scenario reports the victim's p50/p99 alone and under the flood, the p99 ratio, what
the flooder was served meanwhile, and the req/s of both callers under the flood against
the flooder's alone (fairness must not cost throughput).

Targets (``benchmarks/targets.py``): the victim's p99 under the flood at most ``RATIO``
(5x) its p99 alone, for users and pool; no ``QueueFull`` for the victim in admission; both
callers' req/s under the flood at least ``THROUGHPUT`` (0.85) the flooder's alone (not 1: on
2 cores the hub is CPU-bound, and the victim's client takes its share of them). Why 5x:
alone, a request costs the round trip ``o`` plus one item ``c``. Under the flood, with
deficit round robin the victim's request waits for at most one batch per other user ahead
of it: a worker to come free (at most one batch, ``B * c``), then its own batch, which it
shares with the flood's next ``B - 1`` items (``B * c``): ``o + 2 * B * c``. With ``B`` 4,
``c`` 1 ms and ``o`` about 1.5 ms that is about 9.5 ms against 2.5 ms, 3.8x; the rest is
room for a hub busier with 2,000 queued requests on 2 shared cores. Without fairness the
victim waits behind the whole backlog: 2,000 items over 2 workers, about a second (400x).
Results: ``benchmarks/results/fairness.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    CTX,
    child_process,
    hub_main,
    quiet_child,
    reap,
    save_json,
    start_run,
    stop_process,
    summary,
)
from benchmarks.common import wait_for_hub as wait_hub
from benchmarks.servables.sleeper import write_sleeper
from benchmarks.targets import Targets

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results" / "fairness.json"
RATIO = 5.0  # victim p99 under the flood / alone
THROUGHPUT = 0.85  # both callers' req/s under the flood / the flooder's alone
WORKERS = 2
POOL_TAG = "fairpool"


# ---- the flooder: a process of its own ------------------------------------------------

def flooder_main(address: str, public: str, secret: str, conn: Connection,
                 served: Any) -> None:
    """Serve flood commands from ``conn`` until told to quit: ``("flood", name, backlog)``
    floods ``name`` until the next message, then drains and sends back its counts;
    ``served`` (a shared counter) counts answers as they come, for the parent's windows."""
    quiet_child()
    from dlhub_hpc import Client
    from dlhub_hpc.security.keys import KeyPair

    with Client(address, timeout=300, keys=KeyPair(public, secret)) as client:
        conn.send("ready")
        while True:
            command = conn.recv()
            if command[0] != "flood":
                return
            _, name, backlog = command
            conn.send(flood(client, name, backlog, conn, served))


def flood(client: Any, name: str, backlog: int, conn: Connection,
          served: Any) -> dict[str, int]:
    """Keep ``backlog`` requests outstanding until ``conn`` has a message; then wait for
    all. A refused one (QueueFull) is sent again only after one of ours is answered."""
    from dlhub_hpc.errors import QueueFull

    pending: deque[tuple[Future[Any], float]] = deque()
    counts = {"served": 0, "refused": 0, "wrong": 0, "errors": 0}
    debt = 0  # refusals not yet sent again
    i = 0

    def settle(future: Future[Any], expected: float) -> bool:
        """Count one answer; True when it was served."""
        try:
            value = future.result(timeout=300)
        except QueueFull:
            counts["refused"] += 1
            return False
        except Exception:  # counted and reported, never hidden
            counts["errors"] += 1
            return False
        counts["served" if value == expected else "wrong"] += 1
        with served.get_lock():
            served.value += 1
        return True

    while not conn.poll():
        while len(pending) + debt < backlog:
            x = [1.0, float(i % 100)]
            pending.append((client.submit(name, x, cache=False), sum(x)))
            i += 1
        if settle(*pending.popleft()):
            debt = max(0, debt - 1)
        else:
            debt += 1
    conn.recv()
    while pending:
        settle(*pending.popleft())
    return counts


class Flooder:
    """The flooder process, driven over a pipe."""

    def __init__(self, conn: Connection, served: Any) -> None:
        self.conn = conn
        self.served = served

    def start(self, name: str, backlog: int) -> None:
        self.conn.send(("flood", name, backlog))

    def count(self) -> int:
        with self.served.get_lock():
            return int(self.served.value)

    def stop(self) -> dict[str, int]:
        self.conn.send(("stop",))
        return dict(self.conn.recv())


@contextlib.contextmanager
def flooder_process(address: str, public: str, secret: str) -> Iterator[Flooder]:
    ours, theirs = CTX.Pipe()
    served = CTX.Value("q", 0)
    with child_process(flooder_main, address, public, secret, theirs, served,
                       name="flooder") as proc:
        if not ours.poll(60) or ours.recv() != "ready":
            raise RuntimeError(f"the flooder did not start (exit status {proc.exitcode})")
        try:
            yield Flooder(ours, served)
        finally:
            with contextlib.suppress(OSError):
                ours.send(("quit",))
            proc.join(10)


# ---- the hub and its servables ---------------------------------------------------------

def hub_overrides(args: argparse.Namespace) -> dict[str, Any]:
    batch = {"max_batch_size": args.batch}
    return {"memo_max_bytes": 0,
            "batching": {"bench/fair-a": batch, "bench/fair-c": batch,
                         "bench/fair-x": batch, "bench/fair-y": batch},
            "queue_limits": {"bench/fair-c": args.queue_limit}}


def publish_all(client: Any, root: Path, cost: float) -> dict[str, str]:
    """The servables by scenario role: a, c (dedicated workers), x and y (the pool's)."""
    made = {"a": write_sleeper(root, "fair-a", cost), "c": write_sleeper(root, "fair-c", cost),
            "x": write_sleeper(root, "fair-x", cost, tag=POOL_TAG),
            "y": write_sleeper(root, "fair-y", cost, tag=POOL_TAG)}
    return {role: str(client.publish(d)["name"]) for role, d in made.items()}


@contextlib.contextmanager
def bench_hub(home: Path, args: argparse.Namespace) -> Iterator[tuple[Any, Any, Flooder,
                                                                       dict[str, str]]]:
    """A hub process with the servables published and their workers started; yields the
    admin's client, the victim's, the flooder and the servables' names."""
    from dlhub_hpc import Client
    from dlhub_hpc.cli.pools import wait_for_pool
    from dlhub_hpc.security.keys import KeyPair
    from dlhub_hpc.servable.pools import PoolSpec

    pids: list[int] = []
    with child_process(hub_main, str(home), hub_overrides(args), name="hub") as proc:
        try:
            address = wait_hub(home, proc)
            with Client(address, timeout=120) as admin:
                names = publish_all(admin, home.parent / "servables", args.cost)
                pool = PoolSpec.parse(f"tag:{POOL_TAG}").ref()
                admin.start_workers(pool, WORKERS)
                for role in ("a", "c"):
                    admin.start_workers(names[role], WORKERS)
                wait_for_pool(admin, pool, WORKERS, timeout=120)
                for role in ("a", "c"):
                    admin.wait_for_workers(names[role], WORKERS, timeout=120)
                pids = worker_pids(home)
                victim_keys, flooder_keys = KeyPair.generate(), KeyPair.generate()
                admin.add_identity("victim", victim_keys.public)
                admin.add_identity("flooder", flooder_keys.public)
                assert flooder_keys.secret is not None
                with Client(address, timeout=120, keys=victim_keys) as victim, \
                        flooder_process(address, flooder_keys.public,
                                        flooder_keys.secret) as flooder:
                    yield admin, victim, flooder, names
        finally:
            stop_process(proc)
            reap(pids)


def worker_pids(home: Path) -> list[int]:
    """This hub's worker processes, found by the worker address on their command line (a
    sandboxed worker's ``status`` pid is its own namespace's, not this machine's)."""
    address = str(json.loads((home / "hub.json").read_text())["worker_address"])
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "dlhub_hpc.worker" in cmd and address in cmd:
            found.append(proc.pid)
    return found


# ---- the measurements ------------------------------------------------------------------

def victim_calls(victim: Any, name: str, n: int) -> tuple[list[float], int]:
    """``n`` requests one at a time: their latencies, and how many were refused."""
    from dlhub_hpc.errors import QueueFull

    latencies: list[float] = []
    refused = 0
    for i in range(n):
        x = [2.0, float(i)]
        started = time.perf_counter()
        try:
            value = victim.run(name, x, cache=False)
        except QueueFull:
            refused += 1
            continue
        latencies.append(time.perf_counter() - started)
        if value != sum(x):
            raise RuntimeError(f"{name} answered {value!r} to {x}, not {sum(x)!r}")
    return latencies, refused


def wait_filled(admin: Any, name: str, depth: int, timeout: float = 60.0) -> None:
    """Until ``name``'s queue holds ``depth`` requests: the flood is on."""
    deadline = time.monotonic() + timeout
    while admin.status()["servables"].get(f"{name}@1", {}).get("queued", 0) < depth:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the flood did not queue {depth} requests for {name}")
        time.sleep(0.02)


def scenario(admin: Any, victim: Any, flooder: Flooder, flooded: str, called: str,
             args: argparse.Namespace, bound: int) -> dict[str, Any]:
    """Alternating rounds of the victim alone, the flooder alone, and the victim under the
    flood; the raw figures of every round."""
    out: dict[str, Any] = {"alone": [], "flood": [], "victim_refused": 0,
                           "flood_alone_rps": [], "flood_meanwhile": 0, "both_rps": [],
                           "flooder": {"served": 0, "refused": 0, "wrong": 0, "errors": 0}}
    for _ in range(args.rounds):
        latencies, refused = victim_calls(victim, called, args.requests)
        out["alone"] += latencies
        out["victim_refused"] += refused
        flooder.start(flooded, args.backlog)
        wait_filled(admin, flooded, min(args.backlog, bound) // 2)
        before, started = flooder.count(), time.perf_counter()
        time.sleep(args.window)  # the flooder alone: its req/s over the window
        out["flood_alone_rps"].append((flooder.count() - before)
                                      / (time.perf_counter() - started))
        before, started = flooder.count(), time.perf_counter()
        latencies, refused = victim_calls(victim, called, args.requests)
        served = flooder.count() - before
        out["both_rps"].append((served + len(latencies)) / (time.perf_counter() - started))
        out["flood"] += latencies
        out["victim_refused"] += refused
        out["flood_meanwhile"] += served
        for k, v in flooder.stop().items():
            out["flooder"][k] += v
    return out


def report(name: str, raw: dict[str, Any]) -> dict[str, Any]:
    alone, flood = summary(raw["alone"], 1000.0), summary(raw["flood"], 1000.0)
    tput_alone = sum(raw["flood_alone_rps"]) / len(raw["flood_alone_rps"])
    tput_both = sum(raw["both_rps"]) / len(raw["both_rps"])
    row = {"alone_ms": alone, "flood_ms": flood, "p99_ratio": flood["p99"] / alone["p99"],
           "p50_ratio": flood["p50"] / alone["p50"], "victim_refused": raw["victim_refused"],
           "flood_served_meanwhile": raw["flood_meanwhile"], "flood_alone_rps": tput_alone,
           "both_rps": tput_both, "throughput_ratio": tput_both / tput_alone,
           "flooder": raw["flooder"]}
    print(f"{name:10} {alone['p50']:8.2f} {alone['p99']:8.2f} {flood['p50']:8.2f} "
          f"{flood['p99']:8.2f} {row['p99_ratio']:6.2f}x {raw['victim_refused']:7d} "
          f"{raw['flood_meanwhile']:8d} {tput_alone:8.0f} {tput_both:8.0f}")
    return row


HEADER = (f"{'scenario':10} {'alone':>8} {'alone':>8} {'flood':>8} {'flood':>8} {'p99':>7} "
          f"{'victim':>7} {'flooder':>8} {'req/s':>8} {'req/s':>8}\n"
          f"{'':10} {'p50 ms':>8} {'p99 ms':>8} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>7} "
          f"{'refused':>7} {'served':>8} {'flooder':>8} {'both':>8}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100,
                        help="the victim's requests per round, alone and under the flood")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backlog", type=int, default=2000,
                        help="requests the flooder keeps outstanding")
    parser.add_argument("--window", type=float, default=1.0,
                        help="seconds of the flooder alone per round, for its req/s")
    parser.add_argument("--cost", type=float, default=0.001, help="seconds per item")
    parser.add_argument("--batch", type=int, default=4, help="max_batch_size (hub override)")
    parser.add_argument("--queue-limit", type=int, default=200,
                        help="the admission scenario's queue bound (queue_limits)")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start_run(args.verbose, logger)
    with tempfile.TemporaryDirectory(prefix="dlhub-fair-") as tmp, \
            bench_hub(Path(tmp) / "home", args) as (admin, victim, flooder, names):
        raw = {"users": scenario(admin, victim, flooder, names["a"], names["a"], args,
                                 args.backlog),
               "pool": scenario(admin, victim, flooder, names["x"], names["y"], args,
                                args.backlog),
               "admission": scenario(admin, victim, flooder, names["c"], names["c"], args,
                                     args.queue_limit)}
    print(HEADER)
    rows = {name: report(name, r) for name, r in raw.items()}
    targets = Targets()
    for name in ("users", "pool"):
        targets.check(f"{name}: victim p99 under the flood / alone", rows[name]["p99_ratio"],
                      RATIO, unit="x")
    refused = rows["admission"]["victim_refused"]
    targets.require("admission: no QueueFull for the victim while the flood fills the bound",
                    refused == 0, f"{refused} refused")
    for name in ("users", "pool"):
        targets.check(f"{name}: req/s under the flood, both callers / the flooder alone",
                      rows[name]["throughput_ratio"], THROUGHPUT, better="higher", unit="x")
    wrong = sum(r["flooder"]["wrong"] + r["flooder"]["errors"] for r in rows.values())
    targets.require("every flood request answered right", wrong == 0, f"{wrong} wrong or failed")
    targets.report()
    save_json(args.json, {"scenarios": rows, "targets": targets.as_json(),
                          "settings": {k: v for k, v in vars(args).items() if k != "json"}})
    return targets.exit_code()


if __name__ == "__main__":
    sys.exit(main())
