"""Waiting for workers is per version, and a failed load is reported at once with its cause."""

from __future__ import annotations

from typing import Any

import pytest

from dlhub_hpc.client import raise_load_failure, workers_ready
from dlhub_hpc.errors import ServableLoadError
from dlhub_hpc.protocol import LoadFailed, Ready

from .test_broker_state import ADD, Catalog, Hub


def _status(workers: list[tuple[str, str]], failures: dict[str, Any] | None = None,
            versions: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    return {"published": [{"name": "demo/add", "version": v} for v in versions],
            "workers": [{"servable": s, "state": st} for s, st in workers],
            "load_failures": failures or {}}


def test_a_worker_of_another_version_does_not_count() -> None:
    status = _status([("demo/add@1", "idle")])
    assert workers_ready(status, "demo/add@1") == 1
    assert workers_ready(status, "demo/add@2") == 0, "version 1's worker is not version 2's"
    assert workers_ready(status, "demo/add") == 0, "no version asked: the latest (2)"
    assert workers_ready(_status([("demo/add@2", "busy")]), "demo/add") == 1


def test_the_hub_reports_the_load_error_of_the_version_and_the_wait_raises_it() -> None:
    hub = Hub(Catalog(ADD))
    hub.hello("w1")
    hub.send("w1", LoadFailed("w1", ServableLoadError("No module named 'torch'").to_wire()))
    status = hub.state.snapshot()
    assert "demo/add@1" in status["load_failures"]
    status["published"] = [{"name": "demo/add", "version": 1}]
    with pytest.raises(ServableLoadError, match="No module named 'torch'"):
        raise_load_failure(status, "demo/add@1")
    raise_load_failure(status, "demo/add@2")  # another version's failure is not this one's
    hub.hello("w2")  # a new worker tries again: the wait goes on for it
    hub.send("w2", Ready("w2"))
    assert hub.state.snapshot()["load_failures"] == {}
