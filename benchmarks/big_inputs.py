"""What one caller's big input costs everyone else, and what a client that never reads costs.

    python benchmarks/big_inputs.py [--array-mib 1024] [--unread 100000] [--nice-echo 19]

A hub process serves ``demo/add`` (list of floats, deterministic, one worker) and
``demo/noop`` (any, two workers). A second process calls ``demo/noop`` with a tiny input
in a closed loop the whole time; its latencies inside each window below are the "other
callers" figures:

* baseline: nobody else sends;
* list: one caller runs ``demo/add`` on a 10^6-float list;
* array: one caller echoes a ``--array-mib`` float64 array through ``demo/noop``; over
  64 MiB it travels in chunks with flow control (``dlhub_hpc.transfer``) both ways,
  through the hub's CURVE sockets (the same-node fast path is turned off: this measures
  the cross-node path), and the hub's peak RSS during it is read from its VmHWM;
* raw: the same array as one whole message on a raw socket, which the hub must cut off
  without reading it (it is over max_message_bytes);
* largest: a float64 array just under the limit, through ``demo/noop`` (uncached).

Then a raw socket that never reads sends ``--unread`` requests; the hub's RSS is read
when they are all answered and again after that socket disconnects.

Each window also prints the CPU it used, in cores: this run's processes, and anything else
on the machine (on a small node another job moves every figure); then this run's CPU
seconds by process: the hub, its workers, this process (the big inputs' caller) and the
rest (the small caller). ``--nice-echo N`` runs the array's echo (its caller and the
worker that runs it) at nice N, for diagnosis only:
the small callers then keep the CPU they ask for, and what is left of their stall is the
hub's own share of the bulk work (CURVE both ways, its loop); targets are judged the same.

Targets (exit status 1 if missed): other callers' p99 within a window at most 50 ms and,
during the array's echo, within 2x of their unloaded (baseline) p99; the hub's peak RSS
during the echo at most four transfer windows over its RSS before; no worker lost.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import zmq

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    CTX,
    CpuWatch,
    child_process,
    hub_main,
    quiet_child,
    summary,
    wait_for_hub,
)
from benchmarks.targets import Targets
from dlhub_hpc import Client, HubConfig
from dlhub_hpc.broker.config import DEFAULT_MAX_MESSAGE_BYTES
from dlhub_hpc.protocol import Request, encode
from dlhub_hpc.security.keys import curve_client, hub_public_key, user_keypair

EXAMPLES = Path(__file__).resolve().parents[1] / "dlhub_hpc" / "examples"
STALL_TARGET_MS = 50.0
STALL_RATIO = 2.0  # other callers' p99 during the array's echo, over their unloaded p99
MIB = 2**20
WINDOW = HubConfig.model_fields["transfer_window_bytes"].default
CHUNK = HubConfig.model_fields["transfer_chunk_bytes"].default
# Chunks through CURVE, as across nodes: not the same-node fast path, where there is one.
HUB_SETTINGS = {"local_fast_path": False} if "local_fast_path" in HubConfig.model_fields else {}


def cross_node(client: Client) -> Client:
    if hasattr(client, "local_fast_path"):
        client.local_fast_path = False
    return client


def small_caller(address: str, conn: Connection) -> None:
    """Closed loop of tiny requests until told to stop; sends back (start, seconds) pairs."""
    quiet_child()
    samples: list[tuple[float, float]] = []
    with Client(address, timeout=60) as client:
        conn.send("ready")
        while not conn.poll():
            t0 = time.monotonic()
            client.run("demo/noop", 1, cache=False)
            samples.append((t0, time.monotonic() - t0))
    conn.send(samples)


def raw_socket(ctx: zmq.Context[Any], address: str, **options: int) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    server = hub_public_key(address)
    if server is not None:
        curve_client(sock, server, user_keypair())
    sock.connect(address)
    return sock


class Bench:
    def __init__(self, address: str, hub_pid: int, nice_echo: int = 0) -> None:
        self.address = address
        self.nice_echo = nice_echo
        self.hub = psutil.Process(hub_pid)
        self.client = cross_node(Client(address, timeout=600))
        self.windows: list[tuple[str, float, float]] = []
        self.notes: list[str] = []
        self.peak: tuple[float, float] = (0.0, 0.0)  # hub RSS before the echo, peak during
        self.worker_pids: set[int] = set()  # once they are all started

    def rss_mib(self) -> float:
        return float(self.hub.memory_info().rss / MIB)

    def peak_mib(self, reset: bool = False) -> float:
        """The hub's peak RSS (VmHWM) since the last reset; ``reset`` starts it again."""
        if reset:
            Path(f"/proc/{self.hub.pid}/clear_refs").write_text("5")
        for line in Path(f"/proc/{self.hub.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.client.status()["stats"]
        return stats

    def window(self, label: str, action: Any) -> None:
        t0, cpu = time.monotonic(), CpuWatch(marker="dlhub_hpc.worker")
        note = action()
        self.windows.append((label, t0, time.monotonic()))
        used = cpu.stop()
        self.notes.append(f"{label}: {note} in {time.monotonic() - t0:.2f} s; CPU cores: "
                          f"{used['ours']:.2f} this run, {used['others']:.2f} others; "
                          f"CPU s: {self.roles(cpu.seconds)}")

    def roles(self, seconds: dict[int, float]) -> str:
        """CPU seconds by who spent them: the hub, its workers, this process (the big
        inputs' caller) and the rest (the small caller, mostly)."""
        spent = {"hub": 0.0, "workers": 0.0, "caller": 0.0, "rest": 0.0}
        for pid, s in seconds.items():
            role = ("hub" if pid == self.hub.pid else "workers" if pid in self.worker_pids
                    else "caller" if pid == os.getpid() else "rest")
            spent[role] += s
        return ", ".join(f"{role} {s:.2f}" for role, s in spent.items())

    def big_list(self) -> str:
        value = self.client.run("demo/add", [1.0] * 10**6, cache=False)
        return f"demo/add of 10^6 floats = {value}"

    def echoed_array(self, mib: int) -> str:
        array = np.random.default_rng(0).standard_normal(mib * MIB // 8)
        before = self.peak_mib(reset=True)
        pids = [w["pid"] for w in self.client.status()["workers"]] if self.nice_echo else []
        renice_echo(self.nice_echo, pids)
        out = self.client.run("demo/noop", array, cache=False)
        renice_echo(0, pids)
        self.peak = (before, self.peak_mib())
        same = bool(np.array_equal(out, array))
        return (f"{mib} MiB array echoed in chunks ({'identical' if same else 'DIFFERENT'}); "
                f"hub peak RSS {self.peak[1]:.0f} MiB, {self.peak[1] - before:+.0f} MiB")

    def refused_array(self, mib: int) -> str:
        array = np.ones(mib * MIB // 8)
        ctx: zmq.Context[Any] = zmq.Context()
        sock = raw_socket(ctx, self.address)
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        sock.send_multipart(encode(Request("huge", "demo/noop", None, "", array)), copy=False)
        cut = bool(monitor.poll(60_000))
        sock.disable_monitor()
        monitor.close(linger=0)
        ctx.destroy(linger=0)
        return f"{mib} MiB as one message: {'cut off by the hub' if cut else 'NOT cut off'}"

    def largest_array(self) -> str:
        array = np.ones((DEFAULT_MAX_MESSAGE_BYTES - MIB) // 8)
        out = self.client.run("demo/noop", array, cache=False)
        return f"{array.nbytes // MIB} MiB array echoed ({out.nbytes // MIB} MiB back)"

    def unread(self, count: int) -> tuple[float, float, float, int]:
        """RSS before, with ``count`` unread replies, and after the reader disconnects."""
        ctx: zmq.Context[Any] = zmq.Context()
        sock = raw_socket(ctx, self.address, RCVHWM=1, RCVBUF=4096)
        before, rejected0 = self.rss_mib(), self.stats().get("rejected", 0)
        for i in range(count):
            sock.send_multipart(encode(Request(f"u{i}", "nobody/none", None, "", 0)))
        while self.stats().get("rejected", 0) - rejected0 < count:
            time.sleep(0.2)  # polling the hub's counters, not waiting for time to pass
        during = self.rss_mib()
        ctx.destroy(linger=0)
        after, deadline = during, time.monotonic() + 10
        while time.monotonic() < deadline:  # until the hub has let go of that pipe
            self.client.status()
            now = self.rss_mib()
            if now >= after and now < during:
                break
            after = now
            time.sleep(0.5)
        return before, during, after, int(self.stats().get("replies_dropped_hwm", 0))


def _renice(proc: psutil.Process, nice: int) -> None:
    """Every thread of ``proc`` at ``nice`` (on Linux a nice value is per thread)."""
    for thread in proc.threads():
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, thread.id, nice)


def renice_echo(nice: int, worker_pids: list[int]) -> None:
    """This process (the echo's caller) at ``nice`` now; and of ``worker_pids``, at nice 0
    all of them, else the one that uses the most CPU in the next half second (the one that
    runs the echo)."""
    if not worker_pids:
        return
    _renice(psutil.Process(), nice)
    workers = []
    for pid in worker_pids:
        with contextlib.suppress(psutil.Error):
            workers.append(psutil.Process(pid))

    def busiest() -> None:
        with contextlib.suppress(psutil.Error):
            if nice == 0:
                for proc in workers:
                    _renice(proc, 0)
                return
            before = {p.pid: sum(p.cpu_times()[:2]) for p in workers}
            time.sleep(0.5)
            used = {p: sum(p.cpu_times()[:2]) - before[p.pid] for p in workers}
            _renice(max(used, key=lambda p: used[p]), nice)

    threading.Thread(target=busiest, name="renice-echo", daemon=True).start()


def stall_table(windows: list[tuple[str, float, float]],
                samples: list[tuple[float, float]]) -> list[tuple[str, dict[str, float]]]:
    rows = []
    for label, t0, t1 in windows:
        inside = [s for start, s in samples if start + s >= t0 and start <= t1]
        rows.append((label, summary(inside, 1000)))
    return rows


def run(args: argparse.Namespace) -> int:
    home = Path(tempfile.mkdtemp(prefix="dlhub-big-"))
    with child_process(hub_main, str(home), HUB_SETTINGS, name="hub") as hub_proc:
        address = wait_for_hub(home, hub_proc)
        bench = Bench(address, hub_proc.pid or 0, args.nice_echo)
        for name, count in (("add", 1), ("noop", 2)):  # one noop worker for the small caller
            ref = str(bench.client.publish(EXAMPLES / name)["name"])
            bench.client.start_workers(ref, count)
            bench.client.wait_for_workers(ref, count, timeout=120)
        started = bench.client.status()["workers"]
        workers0 = sorted(w["worker_id"] for w in started)
        bench.worker_pids = {w["pid"] for w in started}
        rss0 = bench.rss_mib()
        ours, theirs = CTX.Pipe()
        with child_process(small_caller, address, theirs, name="small-caller") as caller:
            assert ours.recv() == "ready"
            done = threading.Event()
            bench.window("baseline", lambda: done.wait(3) or "3 s alone")
            bench.window("10^6-float list", bench.big_list)
            bench.window(f"{args.array_mib} MiB array", lambda: bench.echoed_array(args.array_mib))
            bench.window("raw whole message", lambda: bench.refused_array(args.array_mib))
            bench.window("largest array", bench.largest_array)
            ours.send("stop")
            samples = ours.recv()
            caller.join(10)
        rss1 = bench.rss_mib()
        before, during, after, dropped = bench.unread(args.unread)
        stats = bench.stats()
        workers1 = sorted(w["worker_id"] for w in bench.client.status()["workers"])
        bench.client.close()
    return report(bench, stall_table(bench.windows, samples), stats, workers0 == workers1,
                  (rss0, rss1), (before, during, after, dropped), args.unread)


def report(bench: Bench, rows: list[tuple[str, dict[str, float]]], stats: dict[str, Any],
           same_workers: bool, rss: tuple[float, float],
           unread: tuple[float, float, float, int], count: int) -> int:
    for note in bench.notes:
        print(note)
    print(f"{'other callers during':<24} {'n':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for label, row in rows:
        print(f"{label:<24} {row['n']:>6} {row['p50']:>8.2f} {row['p99']:>8.2f}")
    lost = int(stats.get("workers_lost", 0))
    print(f"workers lost: {lost} (same workers before and after: {same_workers})")
    print(f"hub RSS: {rss[0]:.0f} MiB before, {rss[1]:.0f} MiB after the big inputs")
    before, during, after, dropped = unread
    print(f"{count} unread replies: hub RSS {before:.0f} -> {during:.0f} MiB "
          f"(+{during - before:.1f}), {after:.0f} MiB after the reader left; "
          f"{dropped} replies dropped at the high-water mark")
    before, peak = bench.peak
    print(f"hub peak RSS during the array's echo: {peak:.0f} MiB ({peak - before:+.0f} MiB; "
          f"one transfer window is {WINDOW / MIB:g} MiB, in chunks of {CHUNK // 1024} KiB)")
    targets = Targets()
    for label, row in rows:
        targets.check(f"other callers' p99 stall during {label}", row["p99"], STALL_TARGET_MS,
                      unit="ms")
    base, echo = rows[0][1], rows[2][1]
    ratio = echo["p99"] / base["p99"] if base["p99"] else None
    print(f"other callers' p99 during the array's echo / unloaded: "
          f"{echo['p99']:.2f} / {base['p99']:.2f} ms = {ratio or float('nan'):.2f}x")
    targets.check("other callers' p99 during the array's echo over unloaded", ratio,
                  STALL_RATIO, unit="x")
    targets.check("hub peak RSS growth during the array's echo", peak - before,
                  4 * WINDOW / MIB, unit="MiB")
    targets.require("no worker lost", not lost and same_workers,
                    f"{lost} lost, same workers before and after: {same_workers}")
    targets.report()
    return targets.exit_code()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--array-mib", type=int, default=1024)
    parser.add_argument("--unread", type=int, default=100_000)
    parser.add_argument("--nice-echo", type=int, default=0,
                        help="run the array's echo at this nice value (diagnosis only)")
    with contextlib.suppress(KeyboardInterrupt):
        return run(parser.parse_args())
    return 130


if __name__ == "__main__":
    sys.exit(main())
