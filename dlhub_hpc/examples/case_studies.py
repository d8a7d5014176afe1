"""What the case-study examples share: a hub to talk to, publishing, warm workers.

Each case study runs against a hub you name (``--hub tcp://login1:47650``, as on a
cluster, where the hub's pilot starts the workers on compute nodes) or, by default, against
a hub it starts on this machine with local workers, which it stops at the end.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from dlhub_hpc.broker.config import HubConfig
from dlhub_hpc.client import Client
from dlhub_hpc.hub import Hub

logger = logging.getLogger(__name__)


def parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hub", default=None,
                   help="address of a running hub (default: start one here, with local workers)")
    p.add_argument("--workers", type=int, default=1, help="warm workers per step servable")
    p.add_argument("--home", type=Path, default=None,
                   help="where to write the servables and the hub's files (default: a temp dir)")
    return p


@contextmanager
def workdir(home: Path | None) -> Iterator[Path]:
    if home is not None:
        home.mkdir(parents=True, exist_ok=True)
        yield home
        return
    with tempfile.TemporaryDirectory(prefix="dlhub-example-") as tmp:
        yield Path(tmp)


@contextmanager
def hub_client(address: str | None, home: Path, console: Console) -> Iterator[Client]:
    """A client of the hub at ``address``, or of a hub started here (stopped afterwards)."""
    if address is not None:
        with Client(address, timeout=120) as client:
            console.print(f"using the hub at {address}")
            yield client
        return
    config = HubConfig(home=home / "hub", client_address="tcp://127.0.0.1:0",
                       worker_address="tcp://127.0.0.1:0")
    with Hub(config) as hub, Client(hub.client_address, timeout=120) as client:
        console.print(f"hub listening at {hub.client_address} (workers: {hub.worker_address})")
        try:
            yield client
        finally:
            client.stop_workers()
            console.print("hub and workers stopped")


def publish(client: Client, directories: Sequence[Path], console: Console) -> list[str]:
    """Publish each directory in order (a pipeline's steps before the pipeline)."""
    refs = []
    for directory in directories:
        record = client.publish(directory)
        refs.append(f"{record['name']}@{record['version']}")
        console.print(f"published [bold]{refs[-1]}[/]")
    return refs


def start_workers(client: Client, servables: Sequence[str], per_servable: int,
                  console: Console, timeout: float = 180.0) -> None:
    """Start warm workers for each servable and wait until all of them serve."""
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("starting warm workers",
                                 total=len(servables) * per_servable)
        for name in servables:
            client.start_workers(name, per_servable)
        for name in servables:
            client.wait_for_workers(name, per_servable, timeout=timeout)
            progress.advance(task, per_servable)
    console.print(f"{len(servables) * per_servable} workers ready")


def batching_summary(client: Client) -> dict[str, Any]:
    """The hub's counters that show batching and memoization at work."""
    stats = client.status()["stats"]
    keys = ("requests", "batches", "batched_items", "pipeline_runs", "pipeline_steps",
            "memo_hits")
    return {k: stats.get(k, 0) for k in keys}
