"""``pilot start --wait`` returns as soon as the pilot gives up, with its last events."""

from __future__ import annotations

import pytest

from dlhub_hpc import Client
from dlhub_hpc.cli.pilot import wait_for_pilot
from dlhub_hpc.errors import PilotError
from dlhub_hpc.examples import example_dir

BROKEN = {
    "name": "broken",
    "provider": {"type": "LocalProvider",
                 "launcher": {"type": "SingleNodeLauncher", "debug": False}},
    # Every block's worker exits at once: the pilot halts after its first failed block.
    "python": "/bin/false",
    "hub": {"address": "127.0.0.1"},
    "scaling": {"min_blocks": 1, "max_blocks": 1, "max_failures": 1, "period": 0.2},
}


def test_wait_fails_at_once_when_the_pilot_halts(client: Client) -> None:
    name = client.publish(example_dir("add"))["name"]
    info = client.start_pilot(name, BROKEN)
    # Was: wait_for_workers waited out the whole timeout after the pilot had halted.
    with pytest.raises(PilotError) as caught:
        wait_for_pilot(client, info["pilot_id"], info["servable"], timeout=3600)
    assert "gave up (halted)" in caught.value.message
    assert "halted; last job logs" in caught.value.message, "the pilot's own events"
