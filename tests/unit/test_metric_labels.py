"""Metric labels a servable or caller can choose stay a small, known set."""

from __future__ import annotations

from dlhub_hpc import errors
from dlhub_hpc.metrics import BrokerMetrics
from dlhub_hpc.protocol import BatchResult
from tests.unit.test_broker_state import ADD, only_batch
from tests.unit.test_metrics import metered, samples, value

OTHER = "Other"
KNOWN_ERRORS = {name for name, cls in vars(errors).items()
                if isinstance(cls, type) and issubclass(cls, errors.DlhubHpcError)}


def test_error_types_a_worker_reports_are_mapped_to_the_known_ones_or_other() -> None:
    hub, registry, _ = metered(ADD)
    hub.start("w1")
    reported = [f"E{i}" + "x" * 1000 for i in range(50)] + [12, None, "ExecutionError"]
    for i, kind in enumerate(reported):
        _, batch = only_batch(hub.request(f"r{i}", [1, 2]))
        hub.send("w1", BatchResult(batch.batch_id, [[False, {"type": kind, "message": "m"}]]))
    found = samples(registry)
    labels = {"servable": "demo/add", "version": "1", "method": "run"}
    assert value(found, "dlhub_errors_total", type=OTHER, **labels) == 52
    assert value(found, "dlhub_errors_total", type="ExecutionError", **labels) == 1
    types = {dict(key[1]).get("type") for key in found if key[0] == "dlhub_errors_total"}
    assert types <= KNOWN_ERRORS | {OTHER}


def test_refusals_are_labelled_from_the_same_bounded_set() -> None:
    metrics = BrokerMetrics()
    for i in range(20):
        metrics.refused(f"Fresh{i}")
    metrics.refused("QueueFull")
    assert metrics.rejected == {OTHER: 20, "QueueFull": 1}
    assert {"ExecutionError", "ReferenceTooLarge", "Overloaded"} <= KNOWN_ERRORS
