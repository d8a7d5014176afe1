"""The Grafana dashboard queries only series a hub exports, and shows each kind of them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from dlhub_hpc.metrics.collector import METRIC_NAMES

DASHBOARD = Path(__file__).resolve().parents[2] / "configs" / "grafana" / "dlhub-hpc.json"
METRIC = re.compile(r"\bdlhub_[a-z0-9_]+")


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def exprs(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and variable queries."""
    found = [t["expr"] for p in board["panels"] for t in p["targets"]]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            found.append(var["query"]["query"])
    return found


def test_every_expr_names_only_metrics_the_hub_exports() -> None:
    board = dashboard()
    for expr in exprs(board):
        names = METRIC.findall(expr)
        assert names, f"no dlhub metric in {expr!r}"
        unknown = set(names) - METRIC_NAMES
        assert not unknown, f"{expr!r} names {sorted(unknown)}, which no hub exports"


def test_the_dashboard_shows_every_kind_of_series() -> None:
    used = {name for expr in exprs(dashboard()) for name in METRIC.findall(expr)}
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    wanted = {"dlhub_replies_total", "dlhub_errors_total", "dlhub_refused_total",
              "dlhub_request_latency_seconds", "dlhub_queue_wait_seconds",
              "dlhub_batch_wait_seconds", "dlhub_inference_seconds", "dlhub_batch_size",
              "dlhub_memo_hits_total", "dlhub_memo_misses_total", "dlhub_memo_evictions_total",
              "dlhub_queue_depth", "dlhub_workers", "dlhub_pilot_blocks",
              "dlhub_received_bytes_total", "dlhub_sent_bytes_total", "dlhub_loop_lag_max_seconds"}
    assert wanted <= families, sorted(wanted - families)


def test_panels_have_unique_ids_and_a_templated_datasource() -> None:
    board = dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert [t["refId"] for t in panel["targets"]] == [
            chr(65 + i) for i in range(len(panel["targets"]))]


def test_a_misspelt_metric_would_be_caught() -> None:
    assert set(METRIC.findall("rate(dlhub_replys_total[1m])")) - METRIC_NAMES == {
        "dlhub_replys_total"}
