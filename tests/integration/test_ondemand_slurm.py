"""Start on first request through the local Slurm: a servable with no worker and the
slurm-local profile as its default answers its first request once the job runs; a poller
sees the stages in order, the scheduler's queue among them or after it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from dlhub_hpc import Client, Hub
from dlhub_hpc.examples import example_dir

from .test_ondemand import in_order, run_watched
from .test_slurm import _cancel_our_jobs, slurm  # noqa: F401  (the module's Slurm)

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]


@pytest.fixture
def slurm_ondemand_hub(make_hub: Callable[..., Hub]) -> Iterator[Hub]:
    hub = make_hub(heartbeat_interval=0.2, heartbeat_timeout=5.0,
                   start_on_demand={"demo/add": "slurm-local"})
    yield hub
    hub.stop()
    _cancel_our_jobs()


def test_the_first_request_starts_a_slurm_job_and_is_answered(
        slurm_ondemand_hub: Hub) -> None:
    with Client(slurm_ondemand_hub.client_address, timeout=60) as client:
        client.publish(example_dir("add"))
        result, seen = run_watched(client, "demo/add", [2.0, 3.0], timeout=240)
        assert result == 5.0
        assert seen and in_order(seen), seen
        (pilot,) = client.pilot_status()
        assert pilot["profile"] == "slurm-local" and pilot["blocks"][0]["job_id"]
