"""Pilot jobs on the local one-node Slurm: start-up, walltime replacement, requests across it.

    eval "$(scripts/slurm/start.sh)"; python benchmarks/pilot.py [--json out.json]

Prints three figures, from one hub in this process and real Slurm jobs through Parsl's
SlurmProvider (profile ``slurm-local`` with a one-minute walltime):

1. time from ``pilot start`` to the first answer (sbatch, scheduling, worker start-up,
   servable load, one request);
2. time for the walltime replacement block to take over: from its submission, ahead of the
   first block's walltime, to its first worker serving;
3. requests served across the walltime boundary (a steady stream from before the
   replacement until after the first block has left) and how many failed (expected: 0).

Targets (exit status 1 if missed, ``TARGET MISSED: ...``): no request fails, and the
replacement serves within ``replace_lead - drain_margin`` seconds of its submission, before
the first block starts draining, so the servable never drops to zero workers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console
from rich.table import Table

from benchmarks.targets import Targets
from dlhub_hpc import Client, Hub, HubConfig
from dlhub_hpc.errors import DlhubHpcError
from dlhub_hpc.pilot.profiles import load_profile

logger = logging.getLogger(__name__)

SLEEPY = Path(__file__).resolve().parents[1] / "tests" / "integration" / "servables" / "sleepy"
console = Console()


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)
    return value


def _blocks(client: Client) -> list[dict[str, Any]]:
    return [b for p in client.pilot_status() for b in p["blocks"]]


def _profile(walltime: str, lead: float, margin: float) -> dict[str, Any]:
    data = load_profile("slurm-local").model_dump(mode="json")
    data["provider"]["walltime"] = walltime
    data["walltime"] = {"replace_lead": lead, "drain_margin": margin}
    data["scaling"] = {"min_blocks": 1, "max_blocks": 1, "period": 0.5}
    return data


def run(walltime: str, lead: float, margin: float, interval: float) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="dlhub-bench-pilot-"))
    config = HubConfig(home=home, client_address="tcp://127.0.0.1:0",
                       worker_address="tcp://127.0.0.1:0", heartbeat_interval=0.2,
                       heartbeat_timeout=5.0)
    with Hub(config) as hub, Client(hub.client_address, timeout=180) as client:
        name = client.publish(SLEEPY)["name"]
        t0 = time.monotonic()
        info = client.start_pilot(name, _profile(walltime, lead, margin))
        client.run(name, 0.0, timeout=300)
        first_answer = time.monotonic() - t0
        console.print(f"first answer {first_answer:.2f}s after pilot start")
        first = info["blocks"][0]

        futures: list[Future[Any]] = []
        stop = threading.Event()

        def feed() -> None:
            while not stop.is_set():
                futures.append(client.submit(name, 0.01))
                time.sleep(interval)

        feeder = threading.Thread(target=feed, name="bench-feed", daemon=True)
        feeder.start()
        with console.status("waiting for the walltime replacement"):
            repl = _wait(lambda: [b for b in _blocks(client) if "replaces" in b["reason"]],
                         300, "the replacement block")[0]
            _wait(lambda: any(w["block"] == repl["block_id"] and w["items"] > 0
                              for w in client.status()["workers"]), 300,
                  "the replacement serving")
            takeover = time.time() - repl["submitted_at"]
            console.print(f"replacement serving {takeover:.2f}s after its submission")
            _wait(lambda: first["block_id"] not in {b["block_id"] for b in _blocks(client)},
                  300, "the first block to leave")
            time.sleep(3)
        stop.set()
        feeder.join()
        failed = 0
        for f in futures:
            try:
                f.result(timeout=120)
            except DlhubHpcError:
                failed += 1
        stats = client.status()["stats"]
        client.stop_pilot([info["pilot_id"]])
    return {
        "pilot_start_to_first_answer_s": round(first_answer, 3),
        "replacement_takeover_s": round(takeover, 3),
        "requests_across_walltime": len(futures),
        "failed": failed,
        "workers_drained": stats.get("workers_drained", 0),
        "retries": stats.get("retries", 0),
        "walltime": walltime, "replace_lead_s": lead, "drain_margin_s": margin,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--walltime", default="00:01:00", help="block walltime (Slurm)")
    parser.add_argument("--replace-lead", type=float, default=35.0)
    parser.add_argument("--drain-margin", type=float, default=15.0)
    parser.add_argument("--interval", type=float, default=0.02,
                        help="seconds between requests of the steady stream")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not os.environ.get("SLURM_CONF"):
        console.print('SLURM_CONF is not set: run eval "$(scripts/slurm/start.sh)" first')
        return 2
    result = run(args.walltime, args.replace_lead, args.drain_margin, args.interval)
    table = Table(title="Pilot jobs on the local Slurm")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("pilot start -> first answer", f"{result['pilot_start_to_first_answer_s']:.2f} s")
    table.add_row("replacement block takes over", f"{result['replacement_takeover_s']:.2f} s")
    table.add_row("requests across the walltime boundary",
                  str(result["requests_across_walltime"]))
    table.add_row("failed requests (expected 0)", str(result["failed"]))
    table.add_row("workers drained / retries", f"{result['workers_drained']} / "
                  f"{result['retries']}")
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    targets = Targets()
    targets.check("failed requests across the walltime boundary", result["failed"], 0)
    # the replacement must serve before the first block starts draining (replace_lead -
    # drain_margin seconds after its submission), or the servable has no worker meanwhile
    targets.check("replacement block takes over", result["replacement_takeover_s"],
                  args.replace_lead - args.drain_margin, unit="s")
    targets.report(console.print)
    return targets.exit_code()


if __name__ == "__main__":
    sys.exit(main())
