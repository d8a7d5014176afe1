"""A pool pilot at ``min_blocks: 0`` comes back from zero: a real LocalProvider pilot
releases its idle block, then a request for a servable of its pool queues (with its
deadline), shows the start's stage, makes the pilot submit a block, and is answered by the
block's pooled worker. The hub starts pilots on demand too, and must not start a dedicated
one for a servable its pool serves. Nothing here waits on time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dlhub_hpc import Client
from dlhub_hpc.broker.ondemand import STAGES
from dlhub_hpc.cli.pools import pool_workers
from dlhub_hpc.hub import Hub
from dlhub_hpc.pilot.profiles import load_profile
from dlhub_hpc.servable.pools import PoolSpec

from .conftest import SERVABLES, wait_for


def blocks(client: Client, pilot_id: str) -> int:
    (pilot,) = [p for p in client.pilot_status() if p["pilot_id"] == pilot_id]
    return len(pilot["blocks"])


def test_a_pool_pilot_at_zero_starts_a_block_for_a_queued_request(
        make_hub: Any, tmp_path: Path) -> None:
    hub: Hub = make_hub(start_on_demand={"*": "local"})
    with Client(hub.client_address, timeout=30) as client:
        name = str(client.publish(SERVABLES / "sleepy")["name"])
        ref = PoolSpec.parse(name).ref()
        profile = load_profile("local").model_dump(mode="json")
        profile["scaling"] = {"min_blocks": 0, "max_blocks": 1, "idle_release": 1,
                              "period": 0.3}
        pilot_id = client.start_pilot(ref, profile)["pilot_id"]
        wait_for(lambda: pool_workers(client.status(), ref) == 1, what="its first worker")
        wait_for(lambda: blocks(client, pilot_id) == 0, what="the idle block released")
        wait_for(lambda: pool_workers(client.status(), ref) == 0, what="its worker gone")

        future = client.submit(name, 0.0, timeout=120)
        status = client.request_status(future.request_id)
        # queued while the pilot starts its block, with the stage it reached (answered
        # only if the whole start fit between the two calls)
        assert status["state"] == "answered" or (
            status["state"] == "queued" and status["stage"] in STAGES), status
        assert future.result(timeout=120)["slept"] == 0.0
        (pilot,) = client.pilot_status()  # none was started on demand
        assert pilot["pilot_id"] == pilot_id
        assert any("queued for 0 busy workers: one more block" in e for e in pilot["events"])
        assert client.request_status(future.request_id)["state"] == "answered"
        client.stop_pilot([pilot_id])
